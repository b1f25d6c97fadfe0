//! Which local containers the ingress program may deliver to directly: container IP →
//! (host-side veth, container MAC, gateway MAC), learned from three rtnetlink dumps and never
//! configured by hand. Pure: the records are parsed from message bodies and joined here; the
//! dumps are [`crate::sys::netlink::dump`].
//!
//! - neighbours (`RTM_GETNEIGH`, `AF_INET`): container IP → MAC on some device, for IPs in our
//!   subnet in a usable state (reachable, stale, delay, probe, permanent);
//! - the bridges' forwarding databases (`RTM_GETNEIGH`, `AF_BRIDGE`): (bridge, MAC) → port,
//!   learned entries only (a port's own addresses are permanent);
//! - links (`RTM_GETLINK`): a port qualifies only if it is a veth whose peer is in another
//!   network namespace (`IFLA_LINK_NETNSID`): `bpf_redirect_peer` needs exactly that.
//!
//! A neighbour on a bridge (docker0, cni0) resolves through the FDB to its port; a neighbour
//! on a veth itself (routed CNIs) is that veth. Anything else is left out, and its datagrams
//! take the stack. A stale entry can only hand a packet to the veth of a container that no
//! longer has that IP, whose stack drops it (containers do not forward).

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use flannel_shared::Ipv4Net;

use crate::express::layout::Endpoint;
use crate::express::path_mtu::{route_for, RouteRecord};
use crate::sys::netlink::attributes;

/// `struct ndmsg` is 12 bytes: family, pads, ifindex (i32), state (u16), flags, type.
const NDMSG_LEN: usize = 12;
/// `struct ifinfomsg` is 16 bytes: family, pad, type, index (i32), flags, change.
const IFINFOMSG_LEN: usize = 16;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NDA_MASTER: u16 = 9;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const AF_INET: u8 = 2;
const AF_BRIDGE: u8 = 7;
const NUD_INCOMPLETE: u16 = 0x01;
const NUD_FAILED: u16 = 0x20;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;

/// One IPv4 neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub state: u16,
}

/// One bridge forwarding-database entry: `mac` is behind `port` of bridge `master`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub port: u32,
    pub master: u32,
    pub mac: [u8; 6],
    pub state: u16,
}

/// What the learner needs of one link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    pub ifindex: u32,
    pub mac: Option<[u8; 6]>,
    /// `IFLA_INFO_KIND`: "veth", "bridge", …
    pub kind: Option<String>,
    /// The link's peer lives in another network namespace.
    pub peer_elsewhere: bool,
    pub mtu: Option<u32>,
    pub name: Option<String>,
}

fn ndmsg(body: &[u8], family: u8) -> Option<(u32, u16)> {
    if body.len() < NDMSG_LEN || body[0] != family {
        return None;
    }
    let ifindex = u32::from_ne_bytes(body[4..8].try_into().ok()?);
    let state = u16::from_ne_bytes(body[8..10].try_into().ok()?);
    Some((ifindex, state))
}

fn mac(v: &[u8]) -> Option<[u8; 6]> {
    v.try_into().ok()
}

/// An `RTM_NEWNEIGH` body of family `AF_INET` with a destination and a link-layer address.
pub fn parse_neighbour(body: &[u8]) -> Option<Neighbour> {
    let (ifindex, state) = ndmsg(body, AF_INET)?;
    let (mut ip, mut lladdr) = (None, None);
    for (kind, v) in attributes(body, NDMSG_LEN) {
        match (kind, v) {
            (NDA_DST, &[a, b, c, d]) => ip = Some(Ipv4Addr::new(a, b, c, d)),
            (NDA_LLADDR, v) => lladdr = mac(v),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex,
        ip: ip?,
        mac: lladdr?,
        state,
    })
}

/// An `RTM_NEWNEIGH` body of family `AF_BRIDGE` with a MAC and its bridge (`NDA_MASTER`).
pub fn parse_fdb(body: &[u8]) -> Option<FdbEntry> {
    let (port, state) = ndmsg(body, AF_BRIDGE)?;
    let (mut master, mut lladdr) = (None, None);
    for (kind, v) in attributes(body, NDMSG_LEN) {
        match (kind, v) {
            (NDA_MASTER, v) => master = v.try_into().ok().map(u32::from_ne_bytes),
            (NDA_LLADDR, v) => lladdr = mac(v),
            _ => {}
        }
    }
    Some(FdbEntry {
        port,
        master: master?,
        mac: lladdr?,
        state,
    })
}

/// An `RTM_NEWLINK` body.
pub fn parse_link(body: &[u8]) -> Option<Link> {
    if body.len() < IFINFOMSG_LEN {
        return None;
    }
    let mut link = Link {
        ifindex: u32::from_ne_bytes(body[4..8].try_into().ok()?),
        ..Link::default()
    };
    for (kind, v) in attributes(body, IFINFOMSG_LEN) {
        match kind {
            IFLA_ADDRESS => link.mac = mac(v),
            IFLA_LINK_NETNSID => link.peer_elsewhere = true,
            IFLA_MTU => link.mtu = v.try_into().ok().map(u32::from_ne_bytes),
            IFLA_IFNAME => {
                let text = v.split(|&b| b == 0).next().unwrap_or(&[]);
                link.name = Some(String::from_utf8_lossy(text).into_owned());
            }
            IFLA_MASTER => {}
            IFLA_LINKINFO => {
                for (k, info) in attributes(v, 0) {
                    if k == IFLA_INFO_KIND {
                        let text = info.split(|&b| b == 0).next().unwrap_or(&[]);
                        link.kind = Some(String::from_utf8_lossy(text).into_owned());
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}

fn usable_neighbour(state: u16) -> bool {
    state & (NUD_INCOMPLETE | NUD_FAILED | NUD_NOARP) == 0 && state != 0
}

/// The endpoints the ingress program may deliver to: every usable neighbour in `our_subnet`
/// (but not its network or broadcast address) on the device the kernel routes that address to
/// (`routes`: a container on another bridge answering ARP for a pod's address is not taken),
/// whose device is, or bridges to, a veth with its peer in another namespace. An address with
/// two candidates is left out. Keyed by the IP in wire order, as the program looks it up.
pub fn join(
    our_subnet: Ipv4Net,
    neighbours: &[Neighbour],
    fdb: &[FdbEntry],
    links: &[Link],
    routes: &[RouteRecord],
) -> BTreeMap<[u8; 4], Endpoint> {
    let by_index: HashMap<u32, &Link> = links.iter().map(|l| (l.ifindex, l)).collect();
    let is_container_veth = |i: u32| {
        by_index
            .get(&i)
            .is_some_and(|l| l.kind.as_deref() == Some("veth") && l.peer_elsewhere)
    };
    let mut out = BTreeMap::new();
    let mut ambiguous = Vec::new();
    for n in neighbours {
        if !our_subnet.contains(n.ip)
            || n.ip == our_subnet.addr()
            || n.ip == our_subnet.last()
            || !usable_neighbour(n.state)
            || route_for(routes, n.ip).and_then(|r| r.oif) != Some(n.ifindex)
        {
            continue;
        }
        let Some(dev) = by_index.get(&n.ifindex) else {
            continue;
        };
        let port = match dev.kind.as_deref() {
            Some("bridge") => fdb
                .iter()
                .find(|f| {
                    f.master == n.ifindex
                        && f.mac == n.mac
                        && f.port != n.ifindex
                        && f.state & NUD_PERMANENT == 0
                })
                .map(|f| f.port),
            _ => Some(n.ifindex),
        };
        let (Some(port), Some(gateway_mac)) = (port, dev.mac) else {
            continue;
        };
        if !is_container_veth(port) {
            continue;
        }
        let e = Endpoint {
            ifindex: port,
            mac: n.mac,
            gateway_mac,
        };
        if out.insert(n.ip.octets(), e).is_some_and(|old| old != e) {
            ambiguous.push(n.ip.octets());
        }
    }
    for ip in ambiguous {
        out.remove(&ip);
    }
    out
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

    fn nd(family: u8, ifindex: u32, state: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![family, 0, 0, 0];
        b.extend_from_slice(&ifindex.to_ne_bytes());
        b.extend_from_slice(&state.to_ne_bytes());
        b.extend_from_slice(&[0, 1]);
        for a in attrs {
            b.extend_from_slice(a);
        }
        b
    }

    fn link(ifindex: u32, mac: [u8; 6], kind: &str, netnsid: bool) -> Vec<u8> {
        let mut b = vec![0u8, 0, 1, 0];
        b.extend_from_slice(&ifindex.to_ne_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend(attr(IFLA_ADDRESS, &mac));
        b.extend(attr(IFLA_MTU, &1500u32.to_ne_bytes()));
        let mut kind_z = kind.as_bytes().to_vec();
        kind_z.push(0);
        b.extend(attr(IFLA_LINKINFO | 0x8000, &attr(IFLA_INFO_KIND, &kind_z)));
        if netnsid {
            b.extend(attr(IFLA_LINK_NETNSID, &0i32.to_ne_bytes()));
        }
        b
    }

    const BR: u32 = 4;
    const VETH: u32 = 9;
    const BR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xbb];
    const C_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xca];

    /// Our subnet is routed to the bridge; a routed pod's /32 to its veth.
    fn routes() -> Vec<RouteRecord> {
        let r = |dst: &str, oif: u32| RouteRecord {
            dst: dst.parse().unwrap(),
            table: 254,
            unicast: true,
            mtu: None,
            cloned: false,
            oif: Some(oif),
        };
        vec![
            r("10.1.15.0/24", BR),
            r("10.1.15.7/32", VETH),
            r("10.1.0.0/16", 3),
        ]
    }

    fn world() -> (Vec<Neighbour>, Vec<FdbEntry>, Vec<Link>) {
        let neigh = [
            nd(
                AF_INET,
                BR,
                0x02,
                &[attr(NDA_DST, &[10, 1, 15, 2]), attr(NDA_LLADDR, &C_MAC)],
            ),
            // Incomplete: no address yet.
            nd(
                AF_INET,
                BR,
                NUD_INCOMPLETE,
                &[attr(NDA_DST, &[10, 1, 15, 3])],
            ),
            // Outside our subnet (an underlay neighbour).
            nd(
                AF_INET,
                2,
                0x02,
                &[attr(NDA_DST, &[198, 18, 0, 2]), attr(NDA_LLADDR, &[2; 6])],
            ),
        ];
        let fdb = [
            nd(
                AF_BRIDGE,
                VETH,
                0x02,
                &[
                    attr(NDA_LLADDR, &C_MAC),
                    attr(NDA_MASTER, &BR.to_ne_bytes()),
                ],
            ),
            // The port's own address: permanent, not a container.
            nd(
                AF_BRIDGE,
                VETH,
                NUD_PERMANENT,
                &[
                    attr(NDA_LLADDR, &[2, 0, 0, 0, 0, 0x99]),
                    attr(NDA_MASTER, &BR.to_ne_bytes()),
                ],
            ),
        ];
        let links = [
            link(BR, BR_MAC, "bridge", false),
            link(VETH, [2, 0, 0, 0, 0, 0x99], "veth", true),
            link(2, [2, 0, 0, 0, 0, 1], "veth", true),
        ];
        (
            neigh.iter().filter_map(|b| parse_neighbour(b)).collect(),
            fdb.iter().filter_map(|b| parse_fdb(b)).collect(),
            links.iter().filter_map(|b| parse_link(b)).collect(),
        )
    }

    #[test]
    fn records_parse_from_golden_bodies() {
        let (n, f, l) = world();
        assert_eq!(n.len(), 2, "the incomplete entry has no lladdr: {n:?}");
        assert_eq!(
            n[0],
            Neighbour {
                ifindex: BR,
                ip: Ipv4Addr::new(10, 1, 15, 2),
                mac: C_MAC,
                state: 2
            }
        );
        assert_eq!(f[0].port, VETH);
        assert_eq!(f[0].master, BR);
        assert_eq!(l[0].kind.as_deref(), Some("bridge"));
        assert!(!l[0].peer_elsewhere && l[1].peer_elsewhere);
        assert_eq!(l[1].mac, Some([2, 0, 0, 0, 0, 0x99]));
        assert_eq!(l[1].mtu, Some(1500));
        // Wrong family, short bodies: nothing, no panic.
        let body = nd(AF_BRIDGE, 1, 2, &[attr(NDA_DST, &[10, 1, 15, 2])]);
        assert_eq!(parse_neighbour(&body), None);
        for cut in 0..body.len() {
            let _ = parse_neighbour(&body[..cut]);
            let _ = parse_fdb(&body[..cut]);
            let _ = parse_link(&body[..cut]);
        }
    }

    #[test]
    fn a_container_behind_a_bridge_is_its_veth() {
        let (n, f, l) = world();
        let subnet: Ipv4Net = "10.1.15.0/24".parse().unwrap();
        let got = join(subnet, &n, &f, &l, &routes());
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            got[&[10, 1, 15, 2]],
            Endpoint {
                ifindex: VETH,
                mac: C_MAC,
                gateway_mac: BR_MAC
            }
        );
        // Another subnet: nothing.
        assert!(join("10.1.16.0/24".parse().unwrap(), &n, &f, &l, &routes()).is_empty());
        // Not routed to the bridge (a neighbour entry another device got by ARP): not taken.
        let mut elsewhere = routes();
        elsewhere[0].oif = Some(12);
        assert!(join(subnet, &n, &f, &l, &elsewhere).is_empty());
        // The same address behind two ports: ambiguous, left out.
        let mut f2 = f.clone();
        f2.insert(
            0,
            FdbEntry {
                port: 2,
                ..f[0].clone()
            },
        );
        let mut n2 = n.clone();
        n2.push(n[0].clone());
        let mut l2 = l.clone();
        l2[2].peer_elsewhere = true;
        assert_eq!(
            join(subnet, &n2, &f2, &l2, &routes()).len(),
            1,
            "same entry twice: kept"
        );
    }

    #[test]
    fn only_veths_with_a_peer_elsewhere_qualify() {
        let (n, f, mut l) = world();
        let subnet: Ipv4Net = "10.1.15.0/24".parse().unwrap();
        l[1].peer_elsewhere = false;
        assert!(
            join(subnet, &n, &f, &l, &routes()).is_empty(),
            "peer in this namespace"
        );
        l[1].peer_elsewhere = true;
        l[1].kind = Some("dummy".into());
        assert!(join(subnet, &n, &f, &l, &routes()).is_empty(), "not a veth");
    }

    #[test]
    fn a_routed_veth_neighbour_is_its_own_endpoint() {
        let subnet: Ipv4Net = "10.1.15.0/24".parse().unwrap();
        let n = vec![Neighbour {
            ifindex: VETH,
            ip: Ipv4Addr::new(10, 1, 15, 7),
            mac: C_MAC,
            state: NUD_PERMANENT,
        }];
        let l = vec![Link {
            ifindex: VETH,
            mac: Some([2, 0, 0, 0, 0, 0x99]),
            kind: Some("veth".into()),
            peer_elsewhere: true,
            mtu: Some(1500),
            name: None,
        }];
        let got = join(subnet, &n, &[], &l, &routes());
        assert_eq!(got[&[10, 1, 15, 7]].ifindex, VETH);
        assert_eq!(got[&[10, 1, 15, 7]].gateway_mac, [2, 0, 0, 0, 0, 0x99]);
        // The subnet's own network and broadcast addresses are never endpoints.
        let mut n2 = n.clone();
        n2[0].ip = Ipv4Addr::new(10, 1, 15, 255);
        assert!(join(subnet, &n2, &[], &l, &routes()).is_empty());
    }
}
