//! The express lane's programs run by the kernel (root only): the verifier accepts them, and
//! `BPF_PROG_TEST_RUN` over crafted frames gives the golden bytes of flannel's format.
//!
//! `BPF_PROG_TEST_RUN` always builds an skb with an Ethernet header for TC programs, so the
//! packet tests run the [`LinkKind::Ethernet`] build; the L3 build (flannel0) differs only in
//! the offset of the inner header and the MAC-header push, and is checked by the verifier here
//! and by the namespace tests on a real TUN device.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use crate::express::egress::{egress_program, LinkKind};
use crate::express::ingress::{decap_l4_udp_probe, ingress_program};
use crate::express::layout::{
    peer_value, skb, Endpoint, LaneCfg, LaneCounter, SENDER_HOLDS_OUR_SUBNET, SENDER_NARROW_PATH,
    TCX_DROP, TCX_NEXT,
};
use crate::packet::internet_checksum;
use crate::sys::bpf::{self, BpfMap, MapKind, TestRun};

const HOST_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const HOST_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CA: Ipv4Addr = Ipv4Addr::new(10, 1, 15, 2);
const CB: Ipv4Addr = Ipv4Addr::new(10, 1, 16, 2);
const TCX_REDIRECT: u32 = 7;

/// True as root (the effective uid in /proc/self/status); otherwise a skip (a failure in CI).
fn is_root() -> bool {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false);
    if !euid {
        flannel_shared::ci::skip_or_fail("express lane BPF tests: need root");
    }
    euid
}

/// Host A's lane: network 10.1.0.0/16 of /24s, our lease 10.1.15.0/24.
fn cfg_a(fixed_source_port: bool) -> LaneCfg {
    LaneCfg {
        enabled: true,
        spoof_check: true,
        fixed_source_port,
        network: Ipv4Addr::new(10, 1, 0, 0),
        prefix: 16,
        subnet_len: 24,
        our_subnet: Ipv4Addr::new(10, 1, 15, 0),
        our_prefix: 24,
        our_ip: HOST_A,
        port: 8285,
        underlay_ifindex: 1,
        max_inner_len: 1472,
        outer_ttl: 64,
        stack_delivery: true,
        gso_whole: true,
    }
}

/// The egress program (Ethernet build) with its four maps.
struct Egress {
    prog: OwnedFd,
    cfg: BpfMap,
    peers: BpfMap,
    stats: BpfMap,
    senders: BpfMap,
}

impl Egress {
    fn load(link: LinkKind, cfg: LaneCfg) -> Self {
        let cfg_map = BpfMap::create(MapKind::Array, 4, 56, 1, 0).unwrap();
        let peers = BpfMap::create(MapKind::Array, 4, 4, 256, 0).unwrap();
        let stats = BpfMap::create(MapKind::PercpuArray, 4, 8, LaneCounter::COUNT, 0).unwrap();
        let senders = BpfMap::create(MapKind::Hash, 4, 4, 64, 0).unwrap();
        cfg_map
            .update(&0u32.to_ne_bytes(), &cfg.to_bytes())
            .unwrap();
        for (index, ip) in [
            (15u32, HOST_A),
            (16, HOST_B),
            (99, Ipv4Addr::new(10, 1, 99, 1)),
        ] {
            peers.update(&index.to_ne_bytes(), &peer_value(ip)).unwrap();
            let flags = if ip == HOST_A {
                SENDER_HOLDS_OUR_SUBNET
            } else {
                0
            };
            senders
                .update(&peer_value(ip), &flags.to_ne_bytes())
                .unwrap();
        }
        let insns = egress_program(link)
            .unwrap()
            .with_map_fds(&[
                cfg_map.raw_fd(),
                peers.raw_fd(),
                stats.raw_fd(),
                senders.raw_fd(),
            ])
            .unwrap();
        let prog = bpf::load_sched_cls(&insns).unwrap_or_else(|e| panic!("{link:?}: {e}"));
        Self {
            prog,
            cfg: cfg_map,
            peers,
            stats,
            senders,
        }
    }

    fn run(&self, frame: &[u8]) -> TestRun {
        bpf::test_run(&self.prog, frame, None).unwrap()
    }

    fn counter(&self, c: LaneCounter) -> u64 {
        self.stats.sum_u64(&(c as u32).to_ne_bytes()).unwrap()
    }
}

/// An IPv4/TCP packet `src → dst` with TTL `ttl` and `payload` bytes of pattern, header
/// checksum valid (the TCP checksum does not matter to the lane).
fn inner(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload: usize) -> Vec<u8> {
    let len = 20 + 20 + payload;
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = ttl;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = internet_checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[32] = 0x50; // data offset 5
    for (i, b) in p[40..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// `ip` behind an Ethernet header (to 02:00:00:00:00:01 from 02:00:00:00:00:02).
fn frame(ip: &[u8]) -> Vec<u8> {
    // Destination: the test run's device's own MAC (loopback's, all zero), so the frame is
    // PACKET_HOST as on the underlay.
    let mut f = vec![0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(ip);
    f
}

#[test]
fn kernel_accepts_both_egress_builds() {
    if !is_root() {
        return;
    }
    for link in [LinkKind::L3, LinkKind::Ethernet] {
        Egress::load(link, cfg_a(false));
    }
}

/// The golden bytes: a packet to host B's subnet leaves as flannel's datagram, byte for byte.
#[test]
fn egress_encapsulates_in_flannels_format() {
    if !is_root() {
        return;
    }
    let e = Egress::load(LinkKind::Ethernet, cfg_a(true));
    let pkt = inner(CA, CB, 64, 60);
    let input = frame(&pkt);
    let out = e.run(&input);
    assert_eq!(out.retval, TCX_REDIRECT, "redirected to the underlay");

    // The inner packet as flannel sends it: TTL − 1, header checksum patched, nothing else.
    let mut want_inner = pkt.clone();
    want_inner[8] = 63;
    want_inner[10..12].copy_from_slice(&[0, 0]);
    let c = internet_checksum(&want_inner[..20]);
    want_inner[10..12].copy_from_slice(&c.to_be_bytes());

    let total = (20 + 8 + pkt.len()) as u16;
    let mut want_outer = vec![0x45, 0x00];
    want_outer.extend_from_slice(&total.to_be_bytes());
    want_outer.extend_from_slice(&[0x00, 0x00, 0x40, 0x00, 64, 17, 0, 0]);
    want_outer.extend_from_slice(&HOST_A.octets());
    want_outer.extend_from_slice(&HOST_B.octets());
    let c = internet_checksum(&want_outer);
    want_outer[10..12].copy_from_slice(&c.to_be_bytes());
    let mut want = input[..14].to_vec();
    want.extend_from_slice(&want_outer);
    want.extend_from_slice(&8285u16.to_be_bytes());
    want.extend_from_slice(&8285u16.to_be_bytes());
    want.extend_from_slice(&(total - 20).to_be_bytes());
    want.extend_from_slice(&[0, 0]);
    want.extend_from_slice(&want_inner);
    assert_eq!(out.data, want);
    assert_eq!(
        internet_checksum(&out.data[14..34]),
        0,
        "outer header checksum"
    );
    assert_eq!(
        internet_checksum(&out.data[42..62]),
        0,
        "inner header checksum"
    );

    assert_eq!(e.counter(LaneCounter::TxPackets), 1);
    assert_eq!(e.counter(LaneCounter::TxBytes), u64::from(total));
    assert_eq!(e.counter(LaneCounter::TxErrors), 0);
}

/// Without the fixed port, the source port comes from the inner flow: stable per flow, in
/// 49152–65535, and different flows usually differ.
#[test]
fn egress_source_port_follows_the_inner_flow() {
    if !is_root() {
        return;
    }
    let e = Egress::load(LinkKind::Ethernet, cfg_a(false));
    let sport = |src_port: u16| {
        let mut pkt = inner(CA, CB, 64, 10);
        pkt[20..22].copy_from_slice(&src_port.to_be_bytes());
        let out = e.run(&frame(&pkt));
        assert_eq!(out.retval, TCX_REDIRECT);
        assert_eq!(
            &out.data[36..38],
            &8285u16.to_be_bytes(),
            "destination port"
        );
        u16::from_be_bytes([out.data[34], out.data[35]])
    };
    let ports: Vec<u16> = (0..8).map(|i| sport(40000 + i)).collect();
    assert!(ports.iter().all(|&p| p >= 0xc000), "{ports:?}");
    assert_eq!(sport(40000), ports[0], "one flow, one port");
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() > 1, "8 flows on one port: {ports:?}");
}

/// Everything the userspace path must see is handed on byte for byte (`TCX_NEXT`): on
/// flannel0 it then continues into the TUN device.
#[test]
fn egress_hands_on_what_it_does_not_take() {
    if !is_root() {
        return;
    }
    let e = Egress::load(LinkKind::Ethernet, cfg_a(true));
    let next = TCX_NEXT as u32;
    let unchanged = |input: &[u8], why: &str| {
        let out = e.run(input);
        assert_eq!(out.retval, next, "{why}");
        assert_eq!(out.data, input, "{why}: packet changed");
    };
    unchanged(
        &frame(&inner(CA, Ipv4Addr::new(10, 1, 17, 2), 64, 10)),
        "no lease",
    );
    unchanged(
        &frame(&inner(CA, Ipv4Addr::new(10, 1, 15, 9), 64, 10)),
        "our own subnet",
    );
    unchanged(
        &frame(&inner(CA, Ipv4Addr::new(10, 2, 0, 1), 64, 10)),
        "outside the network",
    );
    unchanged(
        &frame(&inner(CA, Ipv4Addr::new(10, 1, 99, 5), 64, 10)),
        "peer address inside the overlay",
    );
    unchanged(&frame(&inner(CA, CB, 1, 10)), "TTL 1");
    unchanged(&frame(&inner(CA, CB, 0, 10)), "TTL 0");
    unchanged(&frame(&inner(CA, CB, 64, 1473 - 40)), "longer than the MTU");
    let mut options = inner(CA, CB, 64, 10);
    options[0] = 0x46;
    unchanged(&frame(&options), "IP options");
    let mut v6 = frame(&inner(CA, CB, 64, 10));
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    unchanged(&v6, "not IPv4");

    // A GSO skb whose type the kernel cannot encapsulate (test runs set no gso_type):
    // adjust_room refuses before touching it, the packet goes on unchanged and is counted.
    let mut ctx = [0u8; skb::SIZE];
    ctx[skb::GSO_SEGS as usize..][..4].copy_from_slice(&2u32.to_ne_bytes());
    ctx[skb::GSO_SIZE as usize..][..4].copy_from_slice(&1000u32.to_ne_bytes());
    let input = frame(&inner(CA, CB, 64, 1400));
    let out = bpf::test_run(&e.prog, &input, Some(&ctx[..])).unwrap();
    assert_eq!(out.retval, next, "refused GSO type");
    assert_eq!(out.data, input, "refused GSO type: packet changed");
    assert_eq!(e.counter(LaneCounter::TxPassed), 1);

    // Disabled: nothing is taken.
    let mut off = cfg_a(true);
    off.enabled = false;
    e.cfg.update(&0u32.to_ne_bytes(), &off.to_bytes()).unwrap();
    unchanged(&frame(&inner(CA, CB, 64, 10)), "lane disabled");

    // A lease removed from the peers array stops the lane for that subnet at once.
    e.cfg
        .update(&0u32.to_ne_bytes(), &cfg_a(true).to_bytes())
        .unwrap();
    assert_eq!(e.run(&frame(&inner(CA, CB, 64, 10))).retval, TCX_REDIRECT);
    // A peer behind a narrower path is left to the workers; cleared, the lane takes it again.
    let key = peer_value(HOST_B);
    e.senders
        .update(&key, &SENDER_NARROW_PATH.to_ne_bytes())
        .unwrap();
    unchanged(&frame(&inner(CA, CB, 64, 10)), "narrow path");
    e.senders.update(&key, &0u32.to_ne_bytes()).unwrap();
    assert_eq!(e.run(&frame(&inner(CA, CB, 64, 10))).retval, TCX_REDIRECT);
    // A stale entry naming our own address for another subnet: the workers'.
    e.peers
        .update(&17u32.to_ne_bytes(), &peer_value(HOST_A))
        .unwrap();
    unchanged(
        &frame(&inner(CA, Ipv4Addr::new(10, 1, 17, 2), 64, 10)),
        "peer is ourselves",
    );
    e.peers.update(&16u32.to_ne_bytes(), &[0; 4]).unwrap();
    unchanged(&frame(&inner(CA, CB, 64, 10)), "lease removed");
    assert_eq!(e.counter(LaneCounter::TxErrors), 0);
}

/// The ingress program with its five maps, as host A: B (10.1.16.0/24) is a known sender,
/// A's own address holds our lease, container CA is a known endpoint.
struct Ingress {
    prog: OwnedFd,
    stats: BpfMap,
    cfg: BpfMap,
    cfg_value: LaneCfg,
}

const CA_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xca];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x01];

impl Ingress {
    fn load(spoof_check: bool) -> Self {
        let mut c = cfg_a(false);
        c.spoof_check = spoof_check;
        let cfg_map = BpfMap::create(MapKind::Array, 4, 56, 1, 0).unwrap();
        let peers = BpfMap::create(MapKind::Array, 4, 4, 256, 0).unwrap();
        let stats = BpfMap::create(MapKind::PercpuArray, 4, 8, LaneCounter::COUNT, 0).unwrap();
        let senders = BpfMap::create(MapKind::Hash, 4, 4, 64, 0).unwrap();
        let endpoints = BpfMap::create(MapKind::Hash, 4, 16, 64, 0).unwrap();
        cfg_map.update(&0u32.to_ne_bytes(), &c.to_bytes()).unwrap();
        for (index, ip) in [(15u32, HOST_A), (16, HOST_B)] {
            peers.update(&index.to_ne_bytes(), &peer_value(ip)).unwrap();
        }
        senders
            .update(&HOST_A.octets(), &SENDER_HOLDS_OUR_SUBNET.to_ne_bytes())
            .unwrap();
        senders
            .update(&HOST_B.octets(), &0u32.to_ne_bytes())
            .unwrap();
        let ep = Endpoint {
            ifindex: 1,
            mac: CA_MAC,
            gateway_mac: GW_MAC,
        };
        endpoints.update(&CA.octets(), &ep.to_bytes()).unwrap();
        let fds = [
            cfg_map.raw_fd(),
            peers.raw_fd(),
            stats.raw_fd(),
            senders.raw_fd(),
            endpoints.raw_fd(),
        ];
        let insns = ingress_program().unwrap().with_map_fds(&fds).unwrap();
        let prog = bpf::load_sched_cls(&insns).unwrap_or_else(|e| panic!("ingress: {e}"));
        // The other maps stay alive through the program's references.
        Self {
            prog,
            stats,
            cfg: cfg_map,
            cfg_value: c,
        }
    }

    fn run(&self, frame: &[u8]) -> TestRun {
        bpf::test_run(&self.prog, frame, None).unwrap()
    }

    fn counter(&self, c: LaneCounter) -> u64 {
        self.stats.sum_u64(&(c as u32).to_ne_bytes()).unwrap()
    }
}

/// A flannel datagram `from → HOST_A:port` carrying `payload`, behind an Ethernet header,
/// outer header checksum valid.
fn datagram(from: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&HOST_A.octets());
    let c = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&40000u16.to_be_bytes());
    ip.extend_from_slice(&port.to_be_bytes());
    ip.extend_from_slice(&(total - 20).to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(payload);
    let mut f = frame(&ip);
    // Short frames are padded on Ethernet; the lengths in the headers stay authoritative.
    if f.len() < 64 {
        f.resize(64, 0);
    }
    f
}

#[test]
fn kernel_accepts_the_ingress_program() {
    if !is_root() {
        return;
    }
    Ingress::load(true);
}

/// A datagram from a member to a local container is decapsulated, its TTL decremented, its
/// MAC addresses set for the container, and redirected to the container's interface.
#[test]
fn ingress_delivers_to_the_container() {
    if !is_root() {
        return;
    }
    let i = Ingress::load(true);
    let pkt = inner(CB, CA, 63, 100);
    let out = i.run(&datagram(HOST_B, 8285, &pkt));
    assert_eq!(out.retval, TCX_REDIRECT, "redirect_peer");
    let mut want = CA_MAC.to_vec();
    want.extend_from_slice(&GW_MAC);
    want.extend_from_slice(&[0x08, 0x00]);
    let mut inner_want = pkt.clone();
    inner_want[8] = 62;
    inner_want[10..12].copy_from_slice(&[0, 0]);
    let c = internet_checksum(&inner_want[..20]);
    inner_want[10..12].copy_from_slice(&c.to_be_bytes());
    want.extend_from_slice(&inner_want);
    assert_eq!(out.data, want);
    assert_eq!(i.counter(LaneCounter::RxPackets), 1);
    assert_eq!(i.counter(LaneCounter::RxBytes), pkt.len() as u64);
}

/// The workers' receive checks, with their drop reasons, in the workers' order.
#[test]
fn ingress_drops_what_the_workers_drop() {
    if !is_root() {
        return;
    }
    let i = Ingress::load(true);
    let drop = TCX_DROP as u32;
    let case = |frame: Vec<u8>, counter: LaneCounter| {
        let before = i.counter(counter);
        let out = i.run(&frame);
        assert_eq!(out.retval, drop, "{counter:?}");
        assert_eq!(i.counter(counter), before + 1, "{counter:?}");
    };
    // The checks against the route table hand the datagram to the workers unchanged (they
    // decide with the newest table and count the drop).
    let to_workers = |frame: Vec<u8>, why: &str| {
        let before = i.counter(LaneCounter::RxPassed);
        let out = i.run(&frame);
        assert_eq!(out.retval, TCX_NEXT as u32, "{why}");
        assert_eq!(out.data, frame, "{why}: packet changed");
        assert_eq!(i.counter(LaneCounter::RxPassed), before + 1, "{why}");
    };
    to_workers(
        datagram(Ipv4Addr::new(198, 18, 0, 9), 8285, &inner(CB, CA, 63, 10)),
        "unknown sender",
    );
    to_workers(
        datagram(HOST_A, 8285, &inner(CA, CA, 63, 10)),
        "from ourselves",
    );
    to_workers(
        datagram(
            HOST_B,
            8285,
            &inner(CB, Ipv4Addr::new(10, 1, 17, 2), 63, 10),
        ),
        "destination not local",
    );
    to_workers(
        datagram(
            HOST_B,
            8285,
            &inner(Ipv4Addr::new(10, 1, 17, 5), CA, 63, 10),
        ),
        "source in another member's subnet",
    );
    to_workers(
        datagram(HOST_B, 8285, &inner(Ipv4Addr::new(10, 9, 0, 5), CA, 63, 10)),
        "source outside the network",
    );
    case(
        datagram(HOST_B, 8285, &inner(CB, CA, 1, 10)),
        LaneCounter::DropRxTtlExpired,
    );
    case(
        datagram(HOST_B, 8285, &[0x45; 10]),
        LaneCounter::DropTooShort,
    );
    let mut v6 = inner(CB, CA, 63, 10);
    v6[0] = 0x60;
    case(datagram(HOST_B, 8285, &v6), LaneCounter::DropNotIpv4);
    let mut ihl = inner(CB, CA, 63, 10);
    ihl[0] = 0x44;
    case(datagram(HOST_B, 8285, &ihl), LaneCounter::DropBadIhl);
    let mut len = inner(CB, CA, 63, 10);
    len[2..4].copy_from_slice(&100u16.to_be_bytes());
    case(datagram(HOST_B, 8285, &len), LaneCounter::DropBadLength);

    // With the spoof check off, a foreign inner source is delivered.
    let loose = Ingress::load(false);
    let out = loose.run(&datagram(
        HOST_B,
        8285,
        &inner(Ipv4Addr::new(10, 1, 17, 5), CA, 63, 10),
    ));
    assert_eq!(out.retval, TCX_REDIRECT);
}

/// What is not a flannel datagram for us, and what the lane cannot deliver, goes on unchanged.
#[test]
fn ingress_hands_on_what_it_does_not_take() {
    if !is_root() {
        return;
    }
    let i = Ingress::load(true);
    let next = TCX_NEXT as u32;
    let unchanged = |input: Vec<u8>, why: &str| {
        let out = i.run(&input);
        assert_eq!(out.retval, next, "{why}");
        assert_eq!(out.data, input, "{why}: packet changed");
    };
    let good = || datagram(HOST_B, 8285, &inner(CB, CA, 63, 10));
    unchanged(
        datagram(HOST_B, 8286, &inner(CB, CA, 63, 10)),
        "another port",
    );
    let mut other_mac = good();
    other_mac[0] = 2;
    unchanged(other_mac, "a frame for another MAC (PACKET_OTHERHOST)");
    let mut other_dst = good();
    other_dst[14 + 16..14 + 20].copy_from_slice(&[198, 18, 0, 3]);
    unchanged(other_dst, "another destination");
    let mut bad_csum = good();
    bad_csum[14 + 10] ^= 0xff;
    unchanged(bad_csum, "outer header checksum");
    let mut fragment = good();
    fragment[14 + 6] |= 0x20; // MF
    fragment[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let c = internet_checksum(&fragment[14..34]);
    fragment[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    unchanged(fragment, "a fragment");
    let mut truncated = good();
    truncated.truncate(60);
    truncated[14 + 2..14 + 4].copy_from_slice(&200u16.to_be_bytes());
    unchanged(truncated, "outer length beyond the frame");
    // No local endpoint: decapsulated (TTL − 1) and handed to the host's stack.
    let to_host = inner(CB, Ipv4Addr::new(10, 1, 15, 7), 63, 10);
    let input = datagram(HOST_B, 8285, &to_host);
    let out = i.run(&input);
    assert_eq!(out.retval, 0, "TCX_PASS");
    let mut want = input[..14].to_vec();
    let mut inner_want = to_host.clone();
    inner_want[8] = 62;
    inner_want[10..12].copy_from_slice(&[0, 0]);
    let c = internet_checksum(&inner_want[..20]);
    inner_want[10..12].copy_from_slice(&c.to_be_bytes());
    want.extend_from_slice(&inner_want);
    assert_eq!(
        &out.data[..want.len()],
        &want[..],
        "decapsulated for the stack"
    );
    assert_eq!(i.counter(LaneCounter::RxToStack), 1);
    assert_eq!(i.counter(LaneCounter::RxPassed), 0);
    // Stack delivery off (strict rp_filter): the socket path's, unchanged.
    let mut no_stack = i.cfg_value;
    no_stack.stack_delivery = false;
    i.cfg
        .update(&0u32.to_ne_bytes(), &no_stack.to_bytes())
        .unwrap();
    unchanged(input.clone(), "no stack delivery");
    i.cfg
        .update(&0u32.to_ne_bytes(), &i.cfg_value.to_bytes())
        .unwrap();
    assert_eq!(i.counter(LaneCounter::RxPassed), 1);
    // The same with a UDP checksum (a socket sent it): the socket path's, unchanged.
    let mut with_csum = datagram(HOST_B, 8285, &to_host);
    with_csum[14 + 20 + 6] = 0x12;
    unchanged(with_csum, "no local endpoint, UDP checksum set");
    assert_eq!(i.counter(LaneCounter::RxPassed), 2);

    // A GRO batch: several datagrams in one skb, the first inner length shorter than the
    // payload; the socket path splits it.
    let mut batch = inner(CB, CA, 63, 10);
    batch.extend_from_slice(&inner(CB, CA, 63, 10));
    let mut ctx = [0u8; skb::SIZE];
    ctx[skb::GSO_SEGS as usize..][..4].copy_from_slice(&2u32.to_ne_bytes());
    ctx[skb::GSO_SIZE as usize..][..4].copy_from_slice(&50u32.to_ne_bytes());
    let input = datagram(HOST_B, 8285, &batch);
    let out = bpf::test_run(&i.prog, &input, Some(&ctx[..])).unwrap();
    assert_eq!(out.retval, next, "GRO batch");
    assert_eq!(out.data, input, "GRO batch: packet changed");
    assert_eq!(i.counter(LaneCounter::RxPassed), 3);

    // A GSO skb whose first inner length spans all of it, where GSO skbs on the underlay can
    // only be GRO batches (not a veth): the socket path splits and checks it.
    let mut gro_only = i.cfg_value;
    gro_only.gso_whole = false;
    i.cfg
        .update(&0u32.to_ne_bytes(), &gro_only.to_bytes())
        .unwrap();
    let input = datagram(HOST_B, 8285, &inner(CB, CA, 63, 100));
    let out = bpf::test_run(&i.prog, &input, Some(&ctx[..])).unwrap();
    assert_eq!(out.retval, next, "crafted GRO batch");
    assert_eq!(out.data, input, "crafted GRO batch: packet changed");
    assert_eq!(i.counter(LaneCounter::RxPassed), 4);
    assert_eq!(i.counter(LaneCounter::RxErrors), 0);
}

/// The probe for `BPF_F_ADJ_ROOM_DECAP_L4_UDP` gets a clear answer from the kernel: 0 (the
/// flag exists) or -EINVAL (it does not; Linux 6.18).
#[test]
fn decap_l4_udp_probe_answers() {
    if !is_root() {
        return;
    }
    let prog = bpf::load_sched_cls(decap_l4_udp_probe().unwrap().insns()).unwrap();
    let out = bpf::test_run(&prog, &datagram(HOST_B, 8285, &inner(CB, CA, 63, 10)), None).unwrap();
    let answer = out.retval as i32;
    assert!(
        answer == 0 || answer == -libc::EINVAL,
        "adjust_room answered {answer}"
    );
    println!(
        "BPF_F_ADJ_ROOM_DECAP_L4_UDP: {}",
        if answer == 0 {
            "supported"
        } else {
            "not supported"
        }
    );
}
