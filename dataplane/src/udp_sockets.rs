//! The workers' UDP sockets: a check that the port is not taken, one (receive, send) pair per
//! worker (the receive sockets form one SO_REUSEPORT group; each sender has its own ephemeral
//! port), and the UDP offload probe.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::setup_error::{IoContext as _, SetupError};
use crate::sys;
use crate::worker::Offload;

/// How long a start waits for the UDP port held by an exiting previous instance.
pub const PORT_WAIT: Duration = Duration::from_secs(3);

/// One worker's sockets: `recv` in the reuseport group on the flannel port, `send` on its own
/// ephemeral port.
#[derive(Debug)]
pub struct SocketPair {
    pub recv: OwnedFd,
    pub send: OwnedFd,
}

/// Refuses to start when (bind, port) is taken: SO_REUSEPORT would let a second data plane on
/// this port silently share the traffic. A previous instance that is still exiting gets
/// [`PORT_WAIT`]. Checked before anything is set up (the TUN device above all).
pub fn ensure_port_free(bind: Ipv4Addr, port: u16) -> Result<(), SetupError> {
    let deadline = Instant::now() + PORT_WAIT;
    let mut logged = false;
    while !sys::socket::udp_port_is_free(bind, port)
        .with_context(|| format!("probing UDP {bind}:{port}"))?
    {
        if Instant::now() >= deadline {
            let holder = flannel_shared::port_holder::describe_foreign_holders(
                std::path::Path::new("/proc"),
                port,
                None,
            )
            .unwrap_or_else(|| "holder not found in /proc".into());
            return Err(SetupError::Refused(format!(
                "UDP {bind}:{port} is in use by another process ({holder}): refusing to start, since \
                 SO_REUSEPORT would let both take a share of the traffic (and a squatter reads \
                 the overlay's datagrams)"
            )));
        }
        if !logged {
            tracing::info!(bind = %bind, port, "UDP port in use; waiting up to {PORT_WAIT:?} for it");
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Opens `n` socket pairs on (bind, port): IP_PKTINFO on the receivers, DF on the senders,
/// and SO_MARK `mark` on both (0: none). Blocking unless `nonblocking`.
pub fn open_pairs(
    bind: Ipv4Addr,
    port: u16,
    n: usize,
    nonblocking: bool,
    mark: u32,
) -> Result<Vec<SocketPair>, SetupError> {
    let mut receivers = Vec::with_capacity(n);
    for _ in 0..n {
        receivers.push(
            sys::socket::recv_socket(bind, port, nonblocking)
                .with_context(|| format!("binding UDP {bind}:{port}"))?,
        );
    }
    pair_up(receivers, bind, nonblocking, mark)
}

/// Whether sockets handed over fit the flags: one per worker (`--workers`, when given), each
/// a UDP/IPv4 socket bound to exactly (bind, port).
pub fn fit(sockets: &[OwnedFd], workers: Option<usize>, bind: Ipv4Addr, port: u16) -> bool {
    let want = std::net::SocketAddrV4::new(bind, port);
    workers.map_or(true, |w| w == sockets.len())
        && sockets
            .iter()
            .all(|fd| sys::socket::udp_v4_local_addr(fd) == Some(want))
}

/// The pairs around receive sockets handed over (systemd's `flannel-dataplane.socket`, or the
/// previous data plane: [`handover`](crate::handover)), one worker each, in the order given
/// (the reuseport group's). Each must be a UDP/IPv4 socket bound to exactly (bind, port):
/// otherwise the error names the socket, what it is bound to and the flags to change.
pub fn adopt_pairs(
    inherited: Vec<OwnedFd>,
    bind: Ipv4Addr,
    port: u16,
    nonblocking: bool,
    mark: u32,
) -> Result<Vec<SocketPair>, SetupError> {
    for (i, fd) in inherited.iter().enumerate() {
        let want = std::net::SocketAddrV4::new(bind, port);
        match sys::socket::udp_v4_local_addr(fd) {
            Some(a) if a == want => {}
            got => {
                let got = got.map_or("not a UDP/IPv4 socket".to_string(), |a| {
                    format!("bound to {a}")
                });
                return Err(SetupError::Refused(format!(
                    "receive socket {i} handed over (LISTEN_FDS, name udp) is {got}, but the data \
                     plane listens on {want} (--bind, --port or the network's port): make \
                     flannel-dataplane.socket's ListenDatagram= and the data plane agree"
                )));
            }
        }
        sys::socket::set_nonblocking(fd, nonblocking)
            .context("O_NONBLOCK on a handed-over socket")?;
        // systemd binds a socket unit's sockets with SO_REUSEADDR, which would let any local
        // user bind the port too (to a more specific address, winning every datagram).
        sys::socket::clear_reuse_addr(fd).context("clearing SO_REUSEADDR")?;
        sys::socket::enlarge_buffers(fd);
        if mark == 0 {
            // A mark set by an earlier run with one goes.
            let _ = sys::socket::set_mark(fd, 0);
        }
    }
    refuse_squatters(port)?;
    pair_up(inherited, bind, nonblocking, mark)
}

/// Refuses to start when anyone but root (systemd, holding a socket unit's sockets) and this
/// process holds a socket on `port`: one may have bound it before SO_REUSEADDR was cleared.
fn refuse_squatters(port: u16) -> Result<(), SetupError> {
    let me = flannel_shared::port_holder::Owner {
        pid: std::process::id(),
        uid: sys::caps::effective_uid(),
    };
    let proc = std::path::Path::new("/proc");
    match flannel_shared::port_holder::describe_squatters(proc, port, Some(me)) {
        None => Ok(()),
        Some(holders) => Err(SetupError::Refused(format!(
            "UDP port {port} is also held by {holders}: refusing to start (it could take the \
             overlay's datagrams); stop it, then restart flannel-dataplane"
        ))),
    }
}

/// IP_PKTINFO and the mark on each receiver, and a DF sender for each.
fn pair_up(
    receivers: Vec<OwnedFd>,
    bind: Ipv4Addr,
    nonblocking: bool,
    mark: u32,
) -> Result<Vec<SocketPair>, SetupError> {
    let mut pairs = Vec::with_capacity(receivers.len());
    for recv in receivers {
        sys::socket::set_pktinfo(&recv).context("IP_PKTINFO")?;
        let send = sys::socket::send_socket(bind, nonblocking).context("UDP send socket")?;
        sys::socket::set_dont_fragment(&send).context("IP_MTU_DISCOVER (DF)")?;
        if mark != 0 {
            for s in [&recv, &send] {
                sys::socket::set_mark(s, mark)
                    .with_context(|| format!("SO_MARK {mark:#x} (needs CAP_NET_ADMIN)"))?;
            }
        }
        pairs.push(SocketPair { recv, send });
    }
    Ok(pairs)
}

/// Probes UDP_SEGMENT and enables UDP_GRO on every receive socket (all or none); logs the
/// result once. `forced_off` (`--no-offload`): everything off, nothing probed.
pub fn probe_offloads(pairs: &[SocketPair], vnet_hdr: bool, forced_off: bool) -> Offload {
    if forced_off {
        tracing::info!("offloads: off (--no-offload): no TUN vnet header, UDP GSO or UDP GRO");
        // Sockets handed over by a run with offloads still merge datagrams: stop that.
        for p in pairs {
            let _ = sys::socket::set_udp_gro(&p.recv, false);
        }
        return Offload::none();
    }
    let gso = match pairs
        .first()
        .map(|p| sys::socket::probe_udp_segment(&p.send))
    {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            tracing::warn!("UDP GSO: off (UDP_SEGMENT unknown to this kernel: {e})");
            false
        }
        None => false,
    };
    let mut gro = true;
    for p in pairs {
        if let Err(e) = sys::socket::set_udp_gro(&p.recv, true) {
            tracing::warn!("UDP GRO: off (setsockopt UDP_GRO: {e})");
            gro = false;
            break;
        }
    }
    if !gro {
        // All or none: a socket merging datagrams must be read with a control buffer.
        for p in pairs {
            let _ = sys::socket::set_udp_gro(&p.recv, false);
        }
    }
    tracing::info!(
        tun_vnet_hdr = vnet_hdr,
        udp_gso = gso,
        udp_gro = gro,
        "offloads probed"
    );
    Offload::new(vnet_hdr, gro, gso)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unprivileged parts: a pair per worker on a free loopback port, the receivers in one
    /// reuseport group, and an offload probe that agrees on GRO for all of them.
    #[test]
    fn pairs_share_the_port_and_the_probe_covers_them_all() {
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let lo = Ipv4Addr::LOCALHOST;
        ensure_port_free(lo, port).unwrap();
        let pairs = open_pairs(lo, port, 2, true, 0).unwrap();
        assert_eq!(pairs.len(), 2);
        let off = probe_offloads(&pairs, false, false);
        assert!(!off.vnet_hdr);
        let none = probe_offloads(&pairs, true, true);
        assert!(!none.vnet_hdr && !none.gro);
    }
}
