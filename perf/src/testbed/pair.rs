//! Two hosts joined by one veth pair, each with a container behind a bridge: no switch, no
//! etcd, no flanneld. For data-plane tests that write the route tables themselves
//! (`dataplane/tests/netns_e2e.rs`).
//!
//! ```text
//!  [ca] gw_a+1 ── br0 gw_a [a] ua 198.18.0.1 ══veth══ ub 198.18.0.2 [b] br0 gw_b ── gw_b+1 [cb]
//! ```
//!
//! Namespaces `fl<id>a`, `fl<id>b`, `fl<id>ca`, `fl<id>cb` (`<id>` unique per run, see
//! [`unique_id`]); the bridges are `br0`, the container links veth `vh` (host) ↔ `vc`
//! (container), default MTU. No namespace has a route off the machine. Everything goes when the
//! [`HostPair`] is dropped.

use std::net::Ipv4Addr;

use anyhow::Result;

use super::netns::{add_container_with, unique_id, ContainerLink, Netns};

/// Host A's underlay address (on `ua`).
pub const HOST_A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Host B's underlay address (on `ub`).
pub const HOST_B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// The container links: bridge `br0`, veth `vh` ↔ `vc`, default MTU.
const LINK: ContainerLink<'static> = ContainerLink {
    bridge: "br0",
    host_end: "vh",
    container_end: "vc",
    mtu: None,
};

/// The four namespaces. Field order is drop order: containers, then hosts (the veths go with
/// them).
pub struct HostPair {
    /// Container on host A, at `gw_a + 1`.
    pub ca: Netns,
    /// Container on host B, at `gw_b + 1`.
    pub cb: Netns,
    pub a: Netns,
    pub b: Netns,
    /// The per-run id in the namespace names.
    pub id: String,
}

impl HostPair {
    /// Builds the topology: each host's bridge gets `gateways[i]` (address/prefix length), its
    /// container the next address. `a_extra` are further /24 addresses on A's `ua` (e.g. a
    /// sender B does not know), added after [`HOST_A_IP`].
    pub fn create(gateways: [(Ipv4Addr, u8); 2], a_extra: &[Ipv4Addr]) -> Result<Self> {
        let id = unique_id();
        let a = Netns::create(&format!("fl{id}a"))?;
        let b = Netns::create(&format!("fl{id}b"))?;
        // Underlay: one veth pair between the two hosts.
        a.add_veth("ua", &b, "ub", None)?;
        for addr in std::iter::once(&HOST_A_IP).chain(a_extra) {
            a.ip(&["addr", "add", &format!("{addr}/24"), "dev", "ua"])?;
        }
        b.ip(&["addr", "add", &format!("{HOST_B_IP}/24"), "dev", "ub"])?;
        a.ip(&["link", "set", "ua", "up"])?;
        b.ip(&["link", "set", "ub", "up"])?;
        // A container behind a docker0-like bridge on each host.
        let [(gw_a, len_a), (gw_b, len_b)] = gateways;
        let (ca, _) = add_container_with(&a, &format!("fl{id}ca"), &LINK, gw_a, len_a)?;
        let (cb, _) = add_container_with(&b, &format!("fl{id}cb"), &LINK, gw_b, len_b)?;
        Ok(Self { ca, cb, a, b, id })
    }
}
