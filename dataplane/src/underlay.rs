//! Where peers' datagrams may come from: the interfaces of the underlay (a local
//! container with CAP_NET_RAW, or any local process, spoofing a peer's underlay address must
//! not pass as that peer).
//!
//! The receive sockets ask for IP_PKTINFO, so each receive (one GRO batch of up to 64
//! datagrams) names its arrival interface; the worker compares it with a set of at most
//! [`MAX_IFACES`] interface indexes: one cmsg walk and a few integer compares per receive, no
//! syscall. The set is the interfaces holding our lease's public IP plus
//! `--underlay-iface` names (multi-homed hosts, where a peer's datagram may arrive on another
//! interface); the table loop recomputes it and hands it over through an [`ArrivalCell`].
//! Datagrams arriving elsewhere (a container bridge, the TUN device) are dropped and
//! counted `drop_not_underlay`. A datagram sent by a process of this host to one of its own
//! addresses is reported on the interface holding that address, so this check does not sort out
//! local senders: the OUTPUT guard does (only the data plane's marked sockets send to the port).

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Most interfaces an [`Arrival::Only`] set holds.
pub const MAX_IFACES: usize = 8;

/// Which arrival interfaces a receive may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Any interface (`--underlay-iface any`, or our public IP is on no local interface).
    Any,
    /// Only these interface indexes (an empty set admits nothing).
    Only {
        ifindexes: [u32; MAX_IFACES],
        len: usize,
    },
}

impl Arrival {
    /// The set of `ifindexes` (deduplicated; beyond [`MAX_IFACES`] ignored).
    pub fn only(list: &[u32]) -> Self {
        let mut ifindexes = [0u32; MAX_IFACES];
        let mut len = 0;
        for &i in list {
            if len < MAX_IFACES && !ifindexes[..len].contains(&i) {
                ifindexes[len] = i;
                len += 1;
            }
        }
        Arrival::Only { ifindexes, len }
    }

    /// Whether a receive that arrived on `ifindex` (`None`: the kernel said nothing) passes.
    #[inline]
    pub fn admits(&self, ifindex: Option<u32>) -> bool {
        match self {
            Arrival::Any => true,
            Arrival::Only { ifindexes, len } => {
                ifindex.is_some_and(|i| ifindexes[..*len].contains(&i))
            }
        }
    }
}

/// The current [`Arrival`], written by the table loop and read by every worker: a version
/// number loaded once per batch, the value copied under a lock only when it changed.
#[derive(Debug)]
pub struct ArrivalCell {
    version: AtomicU64,
    value: Mutex<Arrival>,
}

impl ArrivalCell {
    pub fn new(a: Arrival) -> Self {
        Self {
            version: AtomicU64::new(1),
            value: Mutex::new(a),
        }
    }

    /// Replaces the value; true when it changed.
    pub fn set(&self, a: Arrival) -> bool {
        let mut v = self.value.lock().unwrap_or_else(|e| e.into_inner());
        if *v == a {
            return false;
        }
        *v = a;
        self.version.fetch_add(1, Ordering::Release);
        true
    }

    #[inline]
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn get(&self) -> Arrival {
        *self.value.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `--underlay-iface` as given: `any` turns the check off.
pub fn check_disabled(names: &[String]) -> bool {
    names.iter().any(|n| n == "any")
}

/// The arrival set for our lease's `public_ip` (`None`: no lease yet) and the
/// `--underlay-iface` `names`, with a one-line description for the log. Interfaces that do not
/// exist (yet) are left out and named in the description.
pub fn resolve(names: &[String], public_ip: Option<std::net::Ipv4Addr>) -> (Arrival, String) {
    if check_disabled(names) {
        return (Arrival::Any, "any interface (--underlay-iface any)".into());
    }
    let mut wanted: Vec<String> = names.to_vec();
    let mut note = String::new();
    if let Some(ip) = public_ip {
        match crate::sys::iface::interfaces_with_ipv4(ip) {
            Ok(found) if found.is_empty() && names.is_empty() => {
                return (
                    Arrival::Any,
                    format!(
                        "any interface: our public IP {ip} is on no local interface (NAT?); \
                         pass --underlay-iface to restrict where peers' datagrams may arrive"
                    ),
                );
            }
            Ok(found) => wanted.extend(found),
            Err(e) => note = format!(" (listing addresses failed: {e})"),
        }
    }
    let mut idx = Vec::new();
    let mut shown = Vec::new();
    for name in &wanted {
        match crate::sys::tun::if_index(name) {
            Ok(i) => {
                idx.push(i);
                shown.push(format!("{name} ({i})"));
            }
            Err(_) => shown.push(format!("{name} (absent)")),
        }
    }
    (Arrival::only(&idx), format!("[{}]{note}", shown.join(", ")))
}

/// How often the table loop re-reads the interfaces (one `getifaddrs` and an
/// `if_nametoindex` per name): an interface re-created with a new index is followed within it.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps an [`ArrivalCell`] current from the table loop: recomputed when our public IP
/// changes and every [`RECHECK`]; each change is logged once.
pub struct ArrivalKeeper {
    pub cell: std::sync::Arc<ArrivalCell>,
    names: Vec<String>,
    public_ip: Option<std::net::Ipv4Addr>,
    checked: Option<std::time::Instant>,
}

impl ArrivalKeeper {
    pub fn new(names: Vec<String>) -> Self {
        Self {
            cell: std::sync::Arc::new(ArrivalCell::new(Arrival::only(&[]))),
            names,
            public_ip: None,
            checked: None,
        }
    }

    /// Recomputes the set when `public_ip` (our lease's) changed or [`RECHECK`] passed.
    pub fn update(&mut self, public_ip: Option<std::net::Ipv4Addr>) {
        let now = std::time::Instant::now();
        let due = self
            .checked
            .map_or(true, |t| now.duration_since(t) >= RECHECK);
        if public_ip == self.public_ip && !due {
            return;
        }
        self.public_ip = public_ip;
        self.checked = Some(now);
        let (arrival, desc) = resolve(&self.names, public_ip);
        if self.cell.set(arrival) {
            tracing::info!(public_ip = ?public_ip, "peers' datagrams accepted from: {desc}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_interfaces_pass() {
        let a = Arrival::only(&[3, 5, 3]);
        assert_eq!(a, Arrival::only(&[3, 5]));
        assert!(a.admits(Some(3)) && a.admits(Some(5)));
        assert!(!a.admits(Some(4)), "a bridge");
        assert!(!a.admits(Some(1)), "loopback");
        assert!(!a.admits(None), "no IP_PKTINFO: refused");
        assert!(!Arrival::only(&[]).admits(Some(3)));
        assert!(Arrival::Any.admits(None));
        let many: Vec<u32> = (1..20).collect();
        assert!(
            !Arrival::only(&many).admits(Some(19)),
            "capped at MAX_IFACES"
        );
    }

    #[test]
    fn the_cell_bumps_its_version_on_change_only() {
        let c = ArrivalCell::new(Arrival::only(&[]));
        let v0 = c.version();
        assert!(!c.set(Arrival::only(&[])));
        assert_eq!(c.version(), v0);
        assert!(c.set(Arrival::only(&[2])));
        assert!(c.version() > v0);
        assert_eq!(c.get(), Arrival::only(&[2]));
    }
}
