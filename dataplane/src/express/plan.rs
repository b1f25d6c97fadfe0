//! From the route table to the lane's maps: what the programs must see for one published table
//! ([`plan`]), and what to write to get there from the previous one ([`diff`]). Pure: the
//! data plane's table loop calls both after every refresh, so the lane follows the same
//! generation as the workers.
//!
//! The lane is on only while it can be right: our lease is in the table, our PublicIP is on a
//! local interface that is not the TUN device, the underlay MTU leaves room for flannel's 28
//! bytes over the TUN MTU, and the table is small enough to mirror ([`MAX_ENTRIES`]).
//! Otherwise [`plan`] says why ([`LaneOff`]) and everything takes the workers' path.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use flannel_shared::route_table::{Route, TableMeta};

use crate::express::layout::{LaneCfg, SENDER_HOLDS_OUR_SUBNET, SENDER_NARROW_PATH};

/// Most table entries the lane mirrors: 2^20 (4 MiB of `peers`), e.g. a /8 of /28s.
pub const MAX_ENTRIES: u64 = 1 << 20;

/// What the host contributes besides the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFacts {
    /// The interface holding our PublicIP (`None`: on no local interface).
    pub underlay_ifindex: Option<u32>,
    pub underlay_mtu: u32,
    pub tun_ifindex: u32,
    pub tun_mtu: u32,
    /// `net.ipv4.ip_default_ttl`.
    pub outer_ttl: u8,
    pub spoof_check: bool,
    pub fixed_source_port: bool,
    /// The flannel port in use.
    pub port: u16,
    /// Peers (PublicIP, wire order) behind a path narrower than the lane's datagrams
    /// ([`crate::express::path_mtu`]).
    pub narrow: BTreeSet<[u8; 4]>,
    /// Strict reverse-path filtering on the underlay interface (it would drop decapsulated
    /// packets handed to the stack there).
    pub strict_rp_filter: bool,
    /// The underlay interface is a veth (GSO skbs cross it whole).
    pub underlay_is_veth: bool,
}

/// Why the lane is off for a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneOff {
    /// We hold no lease (or our lease's route is missing from the table).
    NoLease,
    /// Our PublicIP is on no local interface.
    PublicIpNotLocal(Ipv4Addr),
    /// The PublicIP's interface is the TUN device itself.
    UnderlayIsTun,
    /// The underlay MTU leaves no room for the 28 bytes over the TUN MTU.
    MtuTooSmall { underlay: u32, tun: u32 },
    /// More entries than [`MAX_ENTRIES`].
    TableTooLarge { entries: u64 },
}

impl fmt::Display for LaneOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaneOff::NoLease => write!(f, "no lease of ours in the route table"),
            LaneOff::PublicIpNotLocal(ip) => {
                write!(f, "our PublicIP {ip} is on no local interface")
            }
            LaneOff::UnderlayIsTun => write!(f, "our PublicIP is on the TUN device"),
            LaneOff::MtuTooSmall { underlay, tun } => write!(
                f,
                "underlay MTU {underlay} < TUN MTU {tun} + 28: no room for flannel's headers"
            ),
            LaneOff::TableTooLarge { entries } => write!(
                f,
                "{entries} route-table entries, more than the lane mirrors ({MAX_ENTRIES})"
            ),
        }
    }
}

/// Everything the lane's maps hold for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanePlan {
    pub cfg: LaneCfg,
    /// The `peers` array: each entry's PublicIP in wire order, `[0; 4]` = no lease.
    pub peers: Vec<[u8; 4]>,
    /// The `senders` hash: PublicIP (wire order) → flags.
    pub senders: BTreeMap<[u8; 4], u32>,
}

/// The maps' contents for the table `meta` + `routes`, or why the lane must be off.
pub fn plan(
    meta: &TableMeta,
    routes: impl IntoIterator<Item = Route>,
    local: &LocalFacts,
) -> Result<LanePlan, LaneOff> {
    let our_subnet = meta.our_subnet.ok_or(LaneOff::NoLease)?;
    let routes: Vec<Route> = routes.into_iter().collect();
    let our_ip = routes
        .iter()
        .find(|r| r.subnet == our_subnet)
        .map(|r| r.public_ip)
        .ok_or(LaneOff::NoLease)?;
    let underlay_ifindex = local
        .underlay_ifindex
        .ok_or(LaneOff::PublicIpNotLocal(our_ip))?;
    if underlay_ifindex == local.tun_ifindex {
        return Err(LaneOff::UnderlayIsTun);
    }
    if local.underlay_mtu < local.tun_mtu.saturating_add(28) {
        return Err(LaneOff::MtuTooSmall {
            underlay: local.underlay_mtu,
            tun: local.tun_mtu,
        });
    }
    let prefix = meta.network.prefix();
    let bits = u32::from(meta.subnet_len.saturating_sub(prefix));
    let entries = 1u64 << bits.min(63);
    if entries > MAX_ENTRIES {
        return Err(LaneOff::TableTooLarge { entries });
    }
    let shift = 32 - u32::from(meta.subnet_len.min(32));
    let network = meta.network.addr_u32();
    let mut peers = vec![[0u8; 4]; entries as usize];
    let mut senders = BTreeMap::new();
    for r in &routes {
        let index = u64::from(r.subnet.addr_u32().wrapping_sub(network)) >> shift;
        if let Some(slot) = peers.get_mut(index as usize) {
            *slot = r.public_ip.octets();
        }
        let flags = senders.entry(r.public_ip.octets()).or_insert(0u32);
        if r.subnet == our_subnet {
            *flags |= SENDER_HOLDS_OUR_SUBNET;
        }
        if local.narrow.contains(&r.public_ip.octets()) {
            *flags |= SENDER_NARROW_PATH;
        }
    }
    Ok(LanePlan {
        cfg: LaneCfg {
            enabled: true,
            spoof_check: local.spoof_check,
            fixed_source_port: local.fixed_source_port,
            network: meta.network.addr(),
            prefix,
            subnet_len: meta.subnet_len,
            our_subnet: our_subnet.addr(),
            our_prefix: our_subnet.prefix(),
            our_ip,
            port: local.port,
            underlay_ifindex,
            max_inner_len: local.underlay_mtu - 28,
            outer_ttl: local.outer_ttl,
            stack_delivery: !local.strict_rp_filter,
            gso_whole: local.underlay_is_veth,
        },
        peers,
        senders,
    })
}

/// The writes that turn the maps of `old` into those of `new`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlanDiff {
    /// The configuration or the table's shape changed: disable the lane (`cfg.enabled = 0`),
    /// write everything below, then the new `cfg`.
    pub full: bool,
    /// `peers` entries to write (all of them when `full`).
    pub peer_writes: Vec<(u32, [u8; 4])>,
    pub sender_upserts: Vec<([u8; 4], u32)>,
    pub sender_deletes: Vec<[u8; 4]>,
}

impl PlanDiff {
    pub fn is_empty(&self) -> bool {
        !self.full
            && self.peer_writes.is_empty()
            && self.sender_upserts.is_empty()
            && self.sender_deletes.is_empty()
    }
}

/// What to write to go from `old` (`None`: maps just created, all zero) to `new`. Entry
/// writes are independent u32 stores the programs read one at a time, so a lease that moves
/// is never half-seen; a changed configuration is applied with the lane off.
pub fn diff(old: Option<&LanePlan>, new: &LanePlan) -> PlanDiff {
    let full = match old {
        None => true,
        Some(o) => o.cfg != new.cfg || o.peers.len() != new.peers.len(),
    };
    let peer_writes = new
        .peers
        .iter()
        .enumerate()
        .filter(|&(i, v)| match old {
            Some(o) if !full => o.peers.get(i) != Some(v),
            Some(_) => true,
            None => *v != [0; 4],
        })
        .map(|(i, v)| (i as u32, *v))
        .collect();
    let empty = BTreeMap::new();
    let old_senders = old.map_or(&empty, |o| &o.senders);
    let sender_upserts = new
        .senders
        .iter()
        .filter(|(k, v)| old_senders.get(*k) != Some(*v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let sender_deletes = old_senders
        .keys()
        .filter(|k| !new.senders.contains_key(*k))
        .copied()
        .collect();
    PlanDiff {
        full,
        peer_writes,
        sender_upserts,
        sender_deletes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_shared::Ipv4Net;

    const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const C: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn meta(ours: Option<&str>) -> TableMeta {
        TableMeta {
            network: net("10.1.0.0/16"),
            subnet_len: 24,
            our_subnet: ours.map(net),
            mtu: 1472,
            port: 8285,
        }
    }

    fn route(subnet: &str, ip: Ipv4Addr) -> Route {
        Route {
            subnet: net(subnet),
            public_ip: ip,
        }
    }

    fn local() -> LocalFacts {
        LocalFacts {
            underlay_ifindex: Some(2),
            underlay_mtu: 1500,
            tun_ifindex: 5,
            tun_mtu: 1472,
            outer_ttl: 64,
            spoof_check: true,
            fixed_source_port: false,
            port: 8285,
            narrow: BTreeSet::new(),
            strict_rp_filter: false,
            underlay_is_veth: false,
        }
    }

    fn routes() -> Vec<Route> {
        vec![
            route("10.1.15.0/24", A),
            route("10.1.16.0/24", B),
            route("10.1.17.0/24", B),
        ]
    }

    #[test]
    fn a_table_becomes_the_maps() {
        let p = plan(&meta(Some("10.1.15.0/24")), routes(), &local()).unwrap();
        assert_eq!(p.peers.len(), 256);
        assert_eq!(p.peers[15], A.octets());
        assert_eq!(p.peers[16], B.octets());
        assert_eq!(p.peers[17], B.octets());
        assert_eq!(p.peers.iter().filter(|v| **v != [0; 4]).count(), 3);
        assert_eq!(
            p.senders.iter().collect::<Vec<_>>(),
            vec![(&A.octets(), &SENDER_HOLDS_OUR_SUBNET), (&B.octets(), &0)]
        );
        assert_eq!(p.cfg.our_ip, A);
        assert_eq!(p.cfg.our_subnet, Ipv4Addr::new(10, 1, 15, 0));
        assert_eq!(
            (p.cfg.prefix, p.cfg.subnet_len, p.cfg.our_prefix),
            (16, 24, 24)
        );
        assert_eq!(p.cfg.max_inner_len, 1472);
        assert_eq!(p.cfg.underlay_ifindex, 2);
        assert!(p.cfg.enabled && p.cfg.spoof_check && !p.cfg.fixed_source_port);
    }

    #[test]
    fn the_lane_stays_off_when_it_cannot_be_right() {
        assert_eq!(plan(&meta(None), routes(), &local()), Err(LaneOff::NoLease));
        assert_eq!(
            plan(&meta(Some("10.1.20.0/24")), routes(), &local()),
            Err(LaneOff::NoLease)
        );
        let mut l = local();
        l.underlay_ifindex = None;
        assert_eq!(
            plan(&meta(Some("10.1.15.0/24")), routes(), &l),
            Err(LaneOff::PublicIpNotLocal(A))
        );
        let mut l = local();
        l.underlay_ifindex = Some(5);
        assert_eq!(
            plan(&meta(Some("10.1.15.0/24")), routes(), &l),
            Err(LaneOff::UnderlayIsTun)
        );
        let mut l = local();
        l.underlay_mtu = 1499;
        let off = plan(&meta(Some("10.1.15.0/24")), routes(), &l).unwrap_err();
        assert_eq!(
            off,
            LaneOff::MtuTooSmall {
                underlay: 1499,
                tun: 1472
            }
        );
        assert!(off.to_string().contains("1499"), "{off}");
        let big = TableMeta {
            network: net("10.0.0.0/8"),
            subnet_len: 30,
            our_subnet: Some(net("10.1.15.0/30")),
            mtu: 1472,
            port: 8285,
        };
        assert_eq!(
            plan(&big, vec![route("10.1.15.0/30", A)], &local()),
            Err(LaneOff::TableTooLarge { entries: 1 << 22 })
        );
    }

    #[test]
    fn diffs_write_only_what_changed() {
        let m = meta(Some("10.1.15.0/24"));
        let p1 = plan(&m, routes(), &local()).unwrap();
        // From fresh (zeroed) maps: the non-zero entries and every sender, with the lane off
        // while they are written.
        let d = diff(None, &p1);
        assert!(d.full);
        assert_eq!(
            d.peer_writes,
            vec![(15, A.octets()), (16, B.octets()), (17, B.octets())]
        );
        assert_eq!(d.sender_upserts.len(), 2);
        assert!(d.sender_deletes.is_empty());
        assert!(diff(Some(&p1), &p1).is_empty());

        // 10.1.17.0/24 moves from B to C, 10.1.16.0/24 expires: two entry writes, C added,
        // B (no lease left) removed.
        let p2 = plan(
            &m,
            vec![route("10.1.15.0/24", A), route("10.1.17.0/24", C)],
            &local(),
        )
        .unwrap();
        let d = diff(Some(&p1), &p2);
        assert!(!d.full);
        assert_eq!(d.peer_writes, vec![(16, [0; 4]), (17, C.octets())]);
        assert_eq!(d.sender_upserts, vec![(C.octets(), 0)]);
        assert_eq!(d.sender_deletes, vec![B.octets()]);

        // A new configuration (here the source-port mode) rewrites everything, lane off.
        let mut l = local();
        l.fixed_source_port = true;
        let p3 = plan(&m, routes(), &l).unwrap();
        let d = diff(Some(&p1), &p3);
        assert!(d.full);
        assert_eq!(d.peer_writes.len(), 256);
    }
}
