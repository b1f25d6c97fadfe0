//! Which peers the lane may not send to itself, from the host's routes: those behind a path
//! narrower than the lane's largest datagram (a route of the main table with an MTU metric,
//! `ip route add … mtu 1000`, or a path MTU the kernel learned from an ICMP "fragmentation
//! needed": a cached route exception), and those whose route leaves through another interface
//! than the underlay one (`bpf_redirect_neigh` sends on the interface it is given, at its MTU).
//! The lane's egress leaves their packets to the workers, whose sockets follow the kernel's
//! routing and path MTU (`udp_tx_too_big`). Also: which device the kernel routes an address to
//! ([`route_for`], for the endpoint learner). Pure: parsed from `RTM_NEWROUTE` bodies of two
//! rtnetlink dumps (routes, and exceptions with `RTM_F_CLONED`, Linux 5.3).

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use flannel_shared::Ipv4Net;

use crate::sys::netlink::attributes;

/// `struct rtmsg`: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
const RTMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_METRICS: u16 = 8;
const RTA_TABLE: u16 = 15;
const RTAX_MTU: u16 = 2;
const RT_TABLE_MAIN: u32 = 254;
const RTN_UNICAST: u8 = 1;
/// `RTM_F_CLONED`: a cached exception (learned path MTU, redirect).
pub const RTM_F_CLONED: u32 = 0x200;

/// One IPv4 route or route exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRecord {
    pub dst: Ipv4Net,
    pub table: u32,
    pub unicast: bool,
    pub mtu: Option<u32>,
    pub cloned: bool,
    /// The output interface (`RTA_OIF`), absent for multipath routes.
    pub oif: Option<u32>,
}

/// An `RTM_NEWROUTE` body of family `AF_INET`.
pub fn parse_route(body: &[u8]) -> Option<RouteRecord> {
    if body.len() < RTMSG_LEN || body[0] != libc::AF_INET as u8 {
        return None;
    }
    let prefix = body[1];
    let mut table = u32::from(body[4]);
    let flags = u32::from_ne_bytes(body[8..12].try_into().ok()?);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut mtu = None;
    let mut oif = None;
    for (kind, v) in attributes(body, RTMSG_LEN) {
        match (kind, v) {
            (RTA_OIF, v) => oif = v.try_into().ok().map(u32::from_ne_bytes),
            (RTA_DST, &[a, b, c, d]) => dst = Ipv4Addr::new(a, b, c, d),
            (RTA_TABLE, v) => table = v.try_into().map(u32::from_ne_bytes).unwrap_or(table),
            (RTA_METRICS, m) => {
                for (k, x) in attributes(m, 0) {
                    if k == RTAX_MTU {
                        mtu = x
                            .try_into()
                            .ok()
                            .map(u32::from_ne_bytes)
                            .filter(|&v| v != 0);
                    }
                }
            }
            _ => {}
        }
    }
    Some(RouteRecord {
        dst: Ipv4Net::new(dst, prefix)?,
        table,
        unicast: body[7] == RTN_UNICAST,
        mtu,
        cloned: flags & RTM_F_CLONED != 0,
        oif,
    })
}

/// The main table's longest matching unicast route for `ip`.
pub fn route_for(records: &[RouteRecord], ip: Ipv4Addr) -> Option<&RouteRecord> {
    records
        .iter()
        .filter(|r| !r.cloned && r.table == RT_TABLE_MAIN && r.unicast && r.dst.contains(ip))
        .max_by_key(|r| r.dst.prefix())
}

/// The peers (wire order) the lane leaves to the workers: the main table's longest matching
/// unicast route for the peer leaves through another interface than `underlay` (or has none),
/// or its MTU, or a cached exception's for the peer, is below `needed` (the lane's largest
/// outer datagram).
pub fn narrow_peers(
    records: &[RouteRecord],
    peers: impl IntoIterator<Item = [u8; 4]>,
    underlay: u32,
    needed: u32,
) -> BTreeSet<[u8; 4]> {
    let exceptions: Vec<&RouteRecord> = records.iter().filter(|r| r.cloned).collect();
    peers
        .into_iter()
        .filter(|&p| {
            let ip = Ipv4Addr::from(p);
            let route = route_for(records, ip);
            if route.and_then(|r| r.oif) != Some(underlay) {
                return true;
            }
            let route_mtu = route.and_then(|r| r.mtu);
            let learned = exceptions
                .iter()
                .filter(|r| r.dst.prefix() == 32 && r.dst.addr() == ip)
                .filter_map(|r| r.mtu)
                .min();
            route_mtu.into_iter().chain(learned).any(|m| m < needed)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, v: &[u8]) -> Vec<u8> {
        let mut a = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn route(dst: [u8; 4], prefix: u8, flags: u32, mtu: Option<u32>) -> Vec<u8> {
        route_via(dst, prefix, flags, mtu, 2)
    }

    fn route_via(dst: [u8; 4], prefix: u8, flags: u32, mtu: Option<u32>, oif: u32) -> Vec<u8> {
        let mut b = vec![libc::AF_INET as u8, prefix, 0, 0, 254, 3, 0, RTN_UNICAST];
        b.extend_from_slice(&flags.to_ne_bytes());
        if prefix > 0 {
            b.extend(attr(RTA_DST, &dst));
        }
        b.extend(attr(RTA_OIF, &oif.to_ne_bytes()));
        b.extend(attr(RTA_TABLE, &RT_TABLE_MAIN.to_ne_bytes()));
        if let Some(m) = mtu {
            b.extend(attr(
                RTA_METRICS | 0x8000,
                &attr(RTAX_MTU, &m.to_ne_bytes()),
            ));
        }
        b
    }

    #[test]
    fn routes_and_exceptions_parse_from_golden_bodies() {
        let r = parse_route(&route([198, 18, 0, 2], 32, 0, Some(1000))).unwrap();
        assert_eq!(r.dst, "198.18.0.2/32".parse().unwrap());
        assert_eq!(
            (r.table, r.unicast, r.mtu, r.cloned),
            (254, true, Some(1000), false)
        );
        let e = parse_route(&route([198, 18, 0, 3], 32, RTM_F_CLONED, Some(1400))).unwrap();
        assert!(e.cloned);
        let d = parse_route(&route([0; 4], 0, 0, None)).unwrap();
        assert_eq!(d.dst, "0.0.0.0/0".parse().unwrap());
        let body = route([198, 18, 0, 2], 32, 0, Some(1000));
        for cut in 0..body.len() {
            let _ = parse_route(&body[..cut]);
        }
    }

    #[test]
    fn a_narrow_route_or_a_learned_path_mtu_marks_the_peer() {
        let recs: Vec<RouteRecord> = [
            route([0; 4], 0, 0, None),
            route([198, 18, 0, 0], 24, 0, None),
            route([198, 18, 0, 2], 32, 0, Some(1000)),
            route([198, 18, 0, 3], 32, RTM_F_CLONED, Some(1400)),
            route([198, 19, 0, 0], 16, 0, Some(1400)),
            route([198, 19, 7, 0], 24, 0, None),
            route_via([198, 20, 0, 0], 16, 0, None, 9),
        ]
        .iter()
        .filter_map(|b| parse_route(b))
        .collect();
        let peers = [
            [198, 18, 0, 1],
            [198, 18, 0, 2],
            [198, 18, 0, 3],
            [198, 19, 0, 9],
            [198, 19, 7, 9],
            [198, 20, 1, 1],
        ];
        let got = narrow_peers(&recs, peers, 2, 1500);
        let want: BTreeSet<[u8; 4]> = [
            [198, 18, 0, 2],
            [198, 18, 0, 3],
            [198, 19, 0, 9],
            [198, 20, 1, 1],
        ]
        .into();
        assert_eq!(got, want, "a more specific route without an MTU wins");
        let other_way: BTreeSet<[u8; 4]> = [[198, 20, 1, 1]].into();
        assert_eq!(
            narrow_peers(&recs, peers, 2, 1000),
            other_way,
            "via interface 9"
        );
        assert_eq!(
            route_for(&recs, Ipv4Addr::new(198, 19, 7, 1))
                .unwrap()
                .dst
                .prefix(),
            24
        );
    }
}
