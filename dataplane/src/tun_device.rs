//! The TUN device the data plane owns: created with one queue per worker (the first probes the
//! offloads), given the MTU, state, address and route from the route table, kept in step with
//! later table generations, and watched for deletion.
//!
//! The device is not persistent: it goes away with the last queue, i.e. with this process,
//! unless the queues are handed over ([`handover`](crate::handover): systemd's fd store, or
//! the next data plane across an exec), in which case it stays with its address, routes and
//! queued packets.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use flannel_shared::route_table::{RouteSnapshot, TableMeta};
use flannel_shared::Ipv4Net;

use crate::setup_error::{IoContext as _, SetupError};
use crate::sys;
use crate::sys::tun::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6};
use crate::worker;

/// MTU when the table carries none (1500 - 28).
pub const DEFAULT_MTU: u32 = 1472;
/// How long a starting data plane waits for a leftover TUN device of its name to disappear.
pub const STALE_TUN_WAIT: Duration = Duration::from_secs(3);

/// The configured TUN device: its name and index, and the table values last applied to it.
#[derive(Debug)]
pub struct TunDevice {
    name: String,
    ifindex: u32,
    mtu: u32,
    our_subnet: Option<Ipv4Net>,
    network: Ipv4Net,
}

/// The device's queues, one per worker, and whether they carry a virtio-net header.
#[derive(Debug)]
pub struct TunQueues {
    pub queues: Vec<OwnedFd>,
    pub vnet_hdr: bool,
}

impl TunDevice {
    /// Creates (or attaches to) the device `name` with `nqueues` queues (the first with the
    /// offloads unless `no_offload`), then sets its MTU, state, address and route from `meta`.
    /// `inherited`: queues handed over by the previous data plane (see
    /// [`handover`](crate::handover)), already checked by [`usable_queues`]: the device is
    /// kept, with what it holds, and only missing queues are opened.
    pub fn create(
        name: &str,
        nqueues: usize,
        no_offload: bool,
        meta: &TableMeta,
        inherited: Option<TunQueues>,
    ) -> Result<(Self, TunQueues), SetupError> {
        let queues = match inherited {
            Some(q) => adopt_queues(name, q, nqueues)?,
            None => {
                // A device of that name left by a data plane that just exited may still be
                // going away (its queues close when the kernel finishes tearing down that
                // process's io_uring rings, or after a crash). Attaching to it would inherit
                // its state; give it a moment.
                wait_for_stale_device(name);
                open_queues(name, nqueues, no_offload)?
            }
        };
        let ifindex = sys::tun::if_index(name).context("TUN interface index")?;
        let dev = Self {
            name: name.to_string(),
            ifindex,
            mtu: effective_mtu(meta.mtu),
            our_subnet: meta.our_subnet,
            network: meta.network,
        };
        dev.configure()?;
        tracing::info!(
            tun = %dev.name, queues = nqueues, mtu = dev.mtu,
            address = ?dev.our_subnet.map(|s| s.addr()), route = %dev.network,
            "TUN device configured"
        );
        Ok((dev, queues))
    }

    /// The device's name (`--tun-name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The network routed into the device.
    pub fn network(&self) -> Ipv4Net {
        self.network
    }

    /// MTU, IPv6 off, link up, accept_local, address and route: the first configuration.
    fn configure(&self) -> Result<(), SetupError> {
        let name = &self.name;
        sys::netlink::set_mtu(name, self.mtu).context("setting TUN MTU")?;
        // Before the link is up, so not even the first router solicitation goes out.
        match sys::netlink::disable_ipv6(self.ifindex, name) {
            Ok(sys::netlink::Ipv6Off::NoAddrGen) => tracing::info!(
                "/proc/sys is read-only: IPv6 on {name} stays on, without addresses (addrgenmode none)"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "cannot turn IPv6 off on {name} (the kernel's own IPv6 packets will be counted as drop_tun_malformed): {e}"
            ),
        }
        sys::netlink::set_up(name).context("bringing the TUN device up")?;
        if let Err(e) = sys::netlink::set_accept_local(self.ifindex) {
            tracing::warn!(
                "cannot set accept_local on {name} (ICMP errors we send may be dropped as martians): {e}"
            );
        }
        set_address(self.ifindex, self.our_subnet, None)?;
        remove_stale_addresses(name, self.ifindex, self.network, self.our_subnet);
        sys::netlink::add_route(self.ifindex, self.network)
            .with_context(|| format!("adding route {} dev {name}", self.network))
    }

    /// Applies a new table generation: the address (our subnet), the MTU and the network's
    /// route. Errors are logged; forwarding goes on.
    pub fn apply_table(&mut self, snap: &RouteSnapshot) {
        let m = snap.meta();
        tracing::info!(
            generation = snap.generation(),
            routes = snap.len(),
            "route table changed"
        );
        if m.our_subnet != self.our_subnet {
            tracing::info!(old = ?self.our_subnet, new = ?m.our_subnet, "our subnet changed: moving the TUN address");
            if let Err(e) = set_address(self.ifindex, m.our_subnet, self.our_subnet) {
                tracing::error!("{e}");
            }
            self.our_subnet = m.our_subnet;
        }
        let new_mtu = effective_mtu(m.mtu);
        if new_mtu != self.mtu {
            tracing::info!(old = self.mtu, new = new_mtu, "MTU changed");
            if let Err(e) = sys::netlink::set_mtu(&self.name, new_mtu) {
                tracing::error!("setting TUN MTU {new_mtu}: {e}");
            }
            self.mtu = new_mtu;
        }
        if m.network != self.network {
            tracing::warn!(old = %self.network, new = %m.network, "network changed: adding its route");
            if let Err(e) = sys::netlink::add_route(self.ifindex, m.network) {
                tracing::error!("adding route {}: {e}", m.network);
            }
            self.network = m.network;
        }
    }

    /// Whether the device is gone: deleted, or replaced by another device of its name.
    pub fn is_gone(&self) -> bool {
        sys::tun::if_index(&self.name).map_or(true, |i| i != self.ifindex)
    }
}

/// The MTU to give the device for the table's `table_mtu` (0: [`DEFAULT_MTU`]), capped at
/// what the workers' buffers hold.
pub fn effective_mtu(table_mtu: u32) -> u32 {
    let mtu = if table_mtu == 0 {
        DEFAULT_MTU
    } else {
        table_mtu
    };
    if mtu > worker::MAX_MTU {
        tracing::warn!(
            "table MTU {mtu} exceeds this build's buffer; using {}",
            worker::MAX_MTU
        );
    }
    mtu.min(worker::MAX_MTU)
}

/// The handed-over queues worth keeping: all of device `name`, alive, with one set of flags,
/// and a vnet header only if offloads are wanted (`no_offload` false). `None` (logged) when
/// none are, or they must not be kept (the caller then lets the old device go).
pub fn usable_queues(name: &str, queues: Vec<OwnedFd>, no_offload: bool) -> Option<TunQueues> {
    if queues.is_empty() {
        return None;
    }
    let mut vnet = None;
    for q in &queues {
        let why = match sys::tun::queue_info(q) {
            Err(e) => format!("its device is gone ({e})"),
            Ok((dev, _)) if dev != name => format!("it belongs to device {dev:?}, not {name:?}"),
            Ok((_, flags)) => match queue_mode_mismatch(flags) {
                Some(why) => why,
                None => {
                    let v = flags & libc::IFF_VNET_HDR != 0;
                    if vnet.is_some_and(|x| x != v) {
                        "the queues disagree about IFF_VNET_HDR".to_string()
                    } else if v && no_offload {
                        "it carries a vnet header and --no-offload is set".to_string()
                    } else {
                        vnet = Some(v);
                        continue;
                    }
                }
            },
        };
        tracing::warn!(
            tun = name,
            "not keeping the handed-over TUN queues ({why}): the device is recreated"
        );
        return None;
    }
    Some(TunQueues {
        queues,
        vnet_hdr: vnet.unwrap_or(false),
    })
}

/// Keeps the handed-over queues of `name`: offloads set again (device-wide), extra queues
/// closed, missing ones opened with the same flags.
/// Why a handed-over queue with `flags` (TUNGETIFF) cannot be ours: we read and write raw IPv4
/// packets (IFF_TUN, no packet-information header: IFF_NO_PI) on a multi-queue device. `None`
/// when it can.
fn queue_mode_mismatch(flags: i32) -> Option<String> {
    let tun = libc::IFF_TUN;
    let tap = libc::IFF_TAP;
    let no_pi = libc::IFF_NO_PI;
    let multi = libc::IFF_MULTI_QUEUE;
    if flags & (tun | tap) != tun {
        Some(format!("it is not an IFF_TUN queue (flags {flags:#x})"))
    } else if flags & no_pi == 0 {
        Some(format!(
            "it prepends packet information (no IFF_NO_PI, flags {flags:#x})"
        ))
    } else if flags & multi == 0 {
        Some(format!("its device is not multi-queue (flags {flags:#x})"))
    } else {
        None
    }
}

fn adopt_queues(name: &str, mut q: TunQueues, nqueues: usize) -> Result<TunQueues, SetupError> {
    if q.vnet_hdr {
        let what = enable_offloads(&q.queues[0])?;
        tracing::info!("TUN offloads: IFF_VNET_HDR with {what} (kept device)");
    }
    if q.queues.len() > nqueues {
        tracing::warn!(
            tun = name,
            had = q.queues.len(),
            keep = nqueues,
            "more TUN queues handed over than workers: closing the rest"
        );
        q.queues.truncate(nqueues);
    }
    // Non-blocking, as `open_queue` makes them (the previous process may not have).
    for fd in &q.queues {
        sys::io::set_nonblocking(fd).context("making a kept TUN queue non-blocking")?;
    }
    let kept = q.queues.len();
    for i in kept..nqueues {
        q.queues.push(
            sys::tun::open_queue(name, q.vnet_hdr)
                .with_context(|| format!("opening TUN queue {i} of the kept device {name}"))?,
        );
    }
    tracing::info!(
        tun = name,
        kept,
        opened = nqueues - kept,
        "TUN device kept across the restart"
    );
    Ok(q)
}

/// One queue per worker; the first probes the offloads (unless `no_offload`), and the rest
/// follow its choice of vnet header.
fn open_queues(name: &str, nqueues: usize, no_offload: bool) -> Result<TunQueues, SetupError> {
    let mut queues = Vec::with_capacity(nqueues);
    let vnet_hdr = if no_offload {
        false
    } else {
        match open_offload_queue(name) {
            Ok((q, what)) => {
                tracing::info!("TUN offloads: IFF_VNET_HDR with {what}");
                queues.push(q);
                true
            }
            Err(e) => {
                tracing::warn!("TUN offloads: off ({e}); one packet per read");
                false
            }
        }
    };
    for i in queues.len()..nqueues {
        queues.push(sys::tun::open_queue(name, vnet_hdr).with_context(|| {
            format!(
                "opening TUN queue {i} of {name} (IFF_MULTI_QUEUE; an existing single-queue device of that name must be removed first)"
            )
        })?);
    }
    Ok(TunQueues { queues, vnet_hdr })
}

/// Removes from a device kept across a restart the /32s inside `network` that are not ours
/// (`our_subnet`'s network address): one a lease had before it changed while no data plane
/// ran. Other addresses (an operator's) are left and logged. Failures are logged, not fatal.
fn remove_stale_addresses(name: &str, ifindex: u32, network: Ipv4Net, our_subnet: Option<Ipv4Net>) {
    let ours = our_subnet.map(|s| s.addr());
    match sys::netlink::ipv4_addresses(ifindex) {
        Ok(addrs) => {
            for (addr, prefix) in addrs {
                if Some(addr) == ours && prefix == 32 {
                    continue;
                }
                if prefix != 32 || !network.contains(addr) {
                    tracing::info!("{name} also holds {addr}/{prefix} (not ours, left alone)");
                    continue;
                }
                tracing::info!("removing {addr}/32 from {name}: a subnet's address, not ours");
                if let Err(e) = sys::netlink::del_address(ifindex, addr, prefix) {
                    tracing::warn!("removing {addr}/32 from {name}: {e}");
                }
            }
        }
        Err(e) => tracing::warn!("listing the addresses of {name}: {e}"),
    }
}

/// Sets the TUN address to our subnet's network address /32 (removing `old` if it differs).
fn set_address(ifindex: u32, new: Option<Ipv4Net>, old: Option<Ipv4Net>) -> Result<(), SetupError> {
    if let Some(o) = old.filter(|o| Some(*o) != new) {
        if let Err(e) = sys::netlink::del_address(ifindex, o.addr(), 32) {
            tracing::warn!("removing old TUN address {}/32: {e}", o.addr());
        }
    }
    if let Some(n) = new {
        sys::netlink::add_address(ifindex, n.addr(), 32)
            .with_context(|| format!("setting TUN address {}/32", n.addr()))?;
    }
    Ok(())
}

/// Waits up to [`STALE_TUN_WAIT`] for an existing device `name` to disappear; if it stays (a
/// persistent device someone created, or one in use), the queues attach to it, as flannel does.
fn wait_for_stale_device(name: &str) {
    if !sys::tun::device_exists(name) {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < STALE_TUN_WAIT {
        std::thread::sleep(Duration::from_millis(20));
        if !sys::tun::device_exists(name) {
            tracing::info!(
                tun = name,
                waited_ms = start.elapsed().as_millis() as u64,
                "the previous TUN device went away"
            );
            return;
        }
    }
    tracing::warn!(
        tun = name,
        "a device of this name already exists and stayed for {STALE_TUN_WAIT:?}: attaching to it (it must be a multi-queue TUN device; another running flannel-dataplane would share it)"
    );
}

/// Opens the first TUN queue with IFF_VNET_HDR and enables the offloads this kernel has.
/// On error the queue is closed again (the non-persistent device disappears with it).
fn open_offload_queue(name: &str) -> Result<(OwnedFd, &'static str), SetupError> {
    let q = sys::tun::open_queue(name, true).context("IFF_VNET_HDR refused")?;
    let what = enable_offloads(&q)?;
    Ok((q, what))
}

/// `TUNSETOFFLOAD` with every offload this kernel has, through queue `q` (device-wide).
fn enable_offloads(q: &OwnedFd) -> Result<&'static str, SetupError> {
    let base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    match sys::tun::set_offload(q, base | TUN_F_USO4 | TUN_F_USO6) {
        Ok(()) => Ok("CSUM|TSO4|TSO6|USO4|USO6"),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            sys::tun::set_offload(q, base).context("TUNSETOFFLOAD CSUM|TSO4|TSO6")?;
            Ok("CSUM|TSO4|TSO6 (no USO: kernel < 6.2)")
        }
        Err(e) => Err(e).context("TUNSETOFFLOAD"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mtu_defaults_and_is_capped_by_the_buffers() {
        assert_eq!(effective_mtu(0), DEFAULT_MTU);
        assert_eq!(effective_mtu(1400), 1400);
        assert_eq!(effective_mtu(u32::MAX), worker::MAX_MTU);
    }

    #[test]
    fn a_handed_over_queue_must_be_a_multi_queue_tun_without_packet_information() {
        let (tun, tap, no_pi, multi, vnet) = (
            libc::IFF_TUN,
            libc::IFF_TAP,
            libc::IFF_NO_PI,
            libc::IFF_MULTI_QUEUE,
            libc::IFF_VNET_HDR,
        );
        assert_eq!(queue_mode_mismatch(tun | no_pi | multi), None);
        assert_eq!(queue_mode_mismatch(tun | no_pi | multi | vnet), None);
        for bad in [
            tap | no_pi | multi,
            tun | multi,
            tun | no_pi,
            tun | tap | no_pi | multi,
        ] {
            assert!(queue_mode_mismatch(bad).is_some(), "{bad:#x}");
        }
    }
}
