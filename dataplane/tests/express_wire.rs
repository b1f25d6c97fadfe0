//! The egress program on a real TUN device (the L3 build, as on flannel0): a packet routed
//! into the device leaves the underlay as flannel's datagram, which a plain UDP socket on the
//! peer's port receives — through `bpf_skb_change_head` and `bpf_redirect_neigh` (the first
//! packet waits for ARP in the kernel's neighbour queue).
//!
//! Two namespaces joined by a veth; the TUN device is persistent and has no reader, so a packet
//! the program handed on would be lost, not delivered.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

use flannel_dataplane::express::egress::{egress_program, LinkKind};
use flannel_dataplane::express::layout::{peer_value, LaneCfg, LaneCounter};
use flannel_dataplane::sys::bpf::{self, BpfMap, MapKind};
use flannel_dataplane::sys::tcx::{TcxDir, TcxLink};
use flannel_perf::testbed::netns::{unique_id, Netns};
use flannel_perf::testbed::{have, is_root, require};

const HOST_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const HOST_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn ifindex_of(ns: &Netns, dev: &str) -> u32 {
    let out = ns.ip(&["-o", "link", "show", dev]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in {text:?}"))
}

/// The loaded lane: the link and the maps it uses (kept alive and readable).
struct Lane {
    _link: TcxLink,
    _prog: OwnedFd,
    stats: BpfMap,
}

#[test]
fn egress_on_a_tun_device_sends_flannel_datagrams() {
    if !require("root", is_root())
        || !require("`ip` and `ping` installed", have("ip") && have("ping"))
    {
        return;
    }
    let id = unique_id();
    let a = Netns::create(&format!("fl{id}ea")).unwrap();
    let b = Netns::create(&format!("fl{id}eb")).unwrap();
    a.add_veth("ua", &b, "ub", None).unwrap();
    a.ip(&["addr", "add", "198.18.0.1/24", "dev", "ua"])
        .unwrap();
    a.ip(&["link", "set", "ua", "up"]).unwrap();
    b.ip(&["addr", "add", "198.18.0.2/24", "dev", "ub"])
        .unwrap();
    b.ip(&["link", "set", "ub", "up"]).unwrap();
    a.ip(&["tuntap", "add", "dev", "fl0", "mode", "tun"])
        .unwrap();
    a.ip(&["addr", "add", "10.1.15.0/32", "dev", "fl0"])
        .unwrap();
    a.ip(&["link", "set", "fl0", "up"]).unwrap();
    a.ip(&["route", "add", "10.1.0.0/16", "dev", "fl0"])
        .unwrap();
    let ua = ifindex_of(&a, "ua");
    let fl0 = ifindex_of(&a, "fl0");

    // The peer: a plain UDP socket on flannel's port, as flannel's own receiver.
    let rx = b.spawn_thread(|| {
        let s = UdpSocket::bind((HOST_B, 8285)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = s.recv_from(&mut buf).expect("a datagram from the lane");
        (buf[..n].to_vec(), from)
    });
    std::thread::sleep(Duration::from_millis(200));

    let lane = a.run_in(move || {
        let cfg = LaneCfg {
            enabled: true,
            spoof_check: true,
            fixed_source_port: false,
            network: Ipv4Addr::new(10, 1, 0, 0),
            prefix: 16,
            subnet_len: 24,
            our_subnet: Ipv4Addr::new(10, 1, 15, 0),
            our_prefix: 24,
            our_ip: HOST_A,
            port: 8285,
            underlay_ifindex: ua,
            max_inner_len: 1472,
            outer_ttl: 64,
            stack_delivery: true,
            gso_whole: true,
        };
        let cfg_map = BpfMap::create(MapKind::Array, 4, 56, 1, 0).unwrap();
        let peers = BpfMap::create(MapKind::Array, 4, 4, 256, 0).unwrap();
        let stats = BpfMap::create(MapKind::PercpuArray, 4, 8, LaneCounter::COUNT, 0).unwrap();
        cfg_map
            .update(&0u32.to_ne_bytes(), &cfg.to_bytes())
            .unwrap();
        let senders = BpfMap::create(MapKind::Hash, 4, 4, 64, 0).unwrap();
        peers
            .update(&16u32.to_ne_bytes(), &peer_value(HOST_B))
            .unwrap();
        senders
            .update(&peer_value(HOST_B), &0u32.to_ne_bytes())
            .unwrap();
        let insns = egress_program(LinkKind::L3)
            .unwrap()
            .with_map_fds(&[
                cfg_map.raw_fd(),
                peers.raw_fd(),
                stats.raw_fd(),
                senders.raw_fd(),
            ])
            .unwrap();
        let prog = bpf::load_sched_cls(&insns).unwrap();
        let link = TcxLink::attach(&prog, fl0, TcxDir::Egress).unwrap();
        Lane {
            _link: link,
            _prog: prog,
            stats,
        }
    });

    // One echo request into the overlay; nobody answers, the datagram is what counts.
    let _ = a
        .command("ping")
        .args(["-n", "-c", "1", "-W", "1", "-s", "100", "10.1.16.2"])
        .stdout(Stdio::null())
        .status();
    let (payload, from) = flannel_perf::testbed::join(rx);

    assert_eq!(from.ip(), std::net::IpAddr::V4(HOST_A), "outer source");
    assert!(from.port() >= 0xc000, "flow source port {}", from.port());
    // The payload is the inner IPv4 packet and nothing else.
    assert_eq!(payload.len(), 20 + 8 + 100, "{payload:02x?}");
    assert_eq!(payload[0], 0x45);
    assert_eq!(
        usize::from(u16::from_be_bytes([payload[2], payload[3]])),
        payload.len()
    );
    assert_eq!(payload[9], 1, "ICMP");
    assert_eq!(
        &payload[12..16],
        &[10, 1, 15, 0],
        "inner source: flannel0's address"
    );
    assert_eq!(&payload[16..20], &[10, 1, 16, 2], "inner destination");
    assert_eq!(payload[8], 63, "inner TTL decremented once (locally sent)");
    let sum = payload[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    assert_eq!(folded, 0xffff, "inner header checksum");
    assert_eq!(payload[20], 8, "echo request");
    let sent = lane
        .stats
        .sum_u64(&(LaneCounter::TxPackets as u32).to_ne_bytes())
        .unwrap();
    assert!(sent >= 1, "tx counter {sent}");
}

/// `link/ether` address of `dev` in `ns`.
fn mac_of(ns: &Netns, dev: &str) -> [u8; 6] {
    let out = ns.ip(&["-o", "link", "show", dev]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let hex = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {text:?}"));
    let mut mac = [0u8; 6];
    for (m, h) in mac.iter_mut().zip(hex.split(':')) {
        *m = u8::from_str_radix(h, 16).unwrap();
    }
    mac
}

/// Both programs of one host, with the maps they share.
struct HostLane {
    _links: Vec<TcxLink>,
    _progs: Vec<OwnedFd>,
    stats: BpfMap,
}

impl HostLane {
    fn counter(&self, c: LaneCounter) -> u64 {
        self.stats.sum_u64(&(c as u32).to_ne_bytes()).unwrap()
    }
}

/// A host of the pair: underlay `under` with `ip`, flannel0-like `fl0`, and a container
/// namespace `c` at 10.1.`n`.2/24 behind veth `vh` (10.1.`n`.1) ↔ `vc`; the lane's egress on
/// fl0, its ingress on the underlay, the container as its one endpoint.
fn host(h: &Netns, under: &str, ip: Ipv4Addr, n: u8, c: &Netns) -> HostLane {
    h.ip(&["addr", "add", &format!("{ip}/24"), "dev", under])
        .unwrap();
    h.ip(&["link", "set", under, "up"]).unwrap();
    h.ip(&["tuntap", "add", "dev", "fl0", "mode", "tun"])
        .unwrap();
    h.ip(&["addr", "add", &format!("10.1.{n}.0/32"), "dev", "fl0"])
        .unwrap();
    h.ip(&["link", "set", "fl0", "mtu", "1472", "up"]).unwrap();
    h.ip(&["route", "add", "10.1.0.0/16", "dev", "fl0"])
        .unwrap();
    h.add_veth("vh", c, "vc", Some(1472)).unwrap();
    h.ip(&["addr", "add", &format!("10.1.{n}.1/24"), "dev", "vh"])
        .unwrap();
    h.ip(&["link", "set", "vh", "up"]).unwrap();
    c.ip(&["addr", "add", &format!("10.1.{n}.2/24"), "dev", "vc"])
        .unwrap();
    c.ip(&["link", "set", "vc", "up"]).unwrap();
    c.ip(&["route", "add", "default", "via", &format!("10.1.{n}.1")])
        .unwrap();
    h.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let (under_ix, fl0, vh) = (
        ifindex_of(h, under),
        ifindex_of(h, "fl0"),
        ifindex_of(h, "vh"),
    );
    let endpoint = flannel_dataplane::express::layout::Endpoint {
        ifindex: vh,
        mac: mac_of(c, "vc"),
        gateway_mac: mac_of(h, "vh"),
    };
    let container = Ipv4Addr::new(10, 1, n, 2);
    h.run_in(move || {
        let cfg = LaneCfg {
            enabled: true,
            spoof_check: true,
            fixed_source_port: false,
            network: Ipv4Addr::new(10, 1, 0, 0),
            prefix: 16,
            subnet_len: 24,
            our_subnet: Ipv4Addr::new(10, 1, n, 0),
            our_prefix: 24,
            our_ip: ip,
            port: 8285,
            underlay_ifindex: under_ix,
            max_inner_len: 1472,
            outer_ttl: 64,
            stack_delivery: true,
            gso_whole: true,
        };
        let cfg_map = BpfMap::create(MapKind::Array, 4, 56, 1, 0).unwrap();
        let peers = BpfMap::create(MapKind::Array, 4, 4, 256, 0).unwrap();
        let stats = BpfMap::create(MapKind::PercpuArray, 4, 8, LaneCounter::COUNT, 0).unwrap();
        let senders = BpfMap::create(MapKind::Hash, 4, 4, 64, 0).unwrap();
        let endpoints = BpfMap::create(MapKind::Hash, 4, 16, 64, 0).unwrap();
        cfg_map
            .update(&0u32.to_ne_bytes(), &cfg.to_bytes())
            .unwrap();
        for (index, peer) in [(15u32, HOST_A), (16, HOST_B)] {
            peers
                .update(&index.to_ne_bytes(), &peer_value(peer))
                .unwrap();
            let ours = u32::from(peer == ip);
            senders.update(&peer.octets(), &ours.to_ne_bytes()).unwrap();
        }
        endpoints
            .update(&container.octets(), &endpoint.to_bytes())
            .unwrap();
        let fds = [
            cfg_map.raw_fd(),
            peers.raw_fd(),
            stats.raw_fd(),
            senders.raw_fd(),
            endpoints.raw_fd(),
        ];
        let egress = egress_program(LinkKind::L3)
            .unwrap()
            .with_map_fds(&fds)
            .unwrap();
        let ingress = flannel_dataplane::express::ingress::ingress_program()
            .unwrap()
            .with_map_fds(&fds)
            .unwrap();
        let egress = bpf::load_sched_cls(&egress).unwrap();
        let ingress = bpf::load_sched_cls(&ingress).unwrap();
        let links = vec![
            TcxLink::attach(&egress, fl0, TcxDir::Egress).unwrap(),
            TcxLink::attach(&ingress, under_ix, TcxDir::Ingress).unwrap(),
        ];
        HostLane {
            _links: links,
            _progs: vec![egress, ingress],
            stats,
        }
    })
}

/// Two hosts running only the lane (no data plane: the TUN devices have no reader), a
/// container on each: ping and bulk TCP between the containers go through it both ways,
/// delivered by `bpf_redirect_peer`, with no drop and no error counted.
#[test]
fn two_lanes_carry_ping_and_bulk_tcp_between_containers() {
    if !require("root", is_root())
        || !require(
            "`ip`, `ping`, `iperf3` installed",
            have("ip") && have("ping") && have("iperf3"),
        )
    {
        return;
    }
    let id = unique_id();
    let ca = Netns::create(&format!("fl{id}ca")).unwrap();
    let cb = Netns::create(&format!("fl{id}cb")).unwrap();
    let a = Netns::create(&format!("fl{id}a")).unwrap();
    let b = Netns::create(&format!("fl{id}b")).unwrap();
    a.add_veth("ua", &b, "ub", None).unwrap();
    let lane_a = host(&a, "ua", HOST_A, 15, &ca);
    let lane_b = host(&b, "ub", HOST_B, 16, &cb);

    let (ping, text) = ca.ping(Ipv4Addr::new(10, 1, 16, 2), 5).unwrap();
    assert_eq!(ping.received, 5, "{text}");

    // On B's underlay, the lengths of the flannel datagrams as they arrive (AF_PACKET, all
    // protocols): a GSO skb crosses the veth whole, as one "frame" of tens of kilobytes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = b.spawn_thread({
        let stop = std::sync::Arc::clone(&stop);
        move || {
            use socket2::{Domain, Protocol, Socket, Type};
            use std::io::Read;
            let eth_p_all = (libc::ETH_P_ALL as u16).to_be();
            let mut s = Socket::new(
                Domain::PACKET,
                Type::RAW,
                Some(Protocol::from(i32::from(eth_p_all))),
            )
            .unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let (mut frames, mut longest) = (0usize, 0usize);
            let mut buf = vec![0u8; 1 << 17];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(n) = s.read(&mut buf) else { continue };
                // Ethernet + IPv4 (no options) + UDP to 8285.
                if n >= 42 && buf[12..14] == [8, 0] && buf[23] == 17 && buf[36..38] == [0x20, 0x5d]
                {
                    frames += 1;
                    longest = longest.max(n);
                }
            }
            (frames, longest)
        }
    });
    let mut server = cb
        .command("iperf3")
        .args(["-s", "-1", "-B", "10.1.16.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = ca
        .command("iperf3")
        .args(["-c", "10.1.16.2", "-t", "3", "-f", "g"])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (frames, longest) = flannel_perf::testbed::join(watch);
    println!("B's underlay: {frames} flannel frames, the longest {longest} bytes");
    assert!(
        longest > 1514,
        "no GSO super-frame crossed the veth (longest {longest})"
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "iperf3: {report}");
    let receiver = report
        .lines()
        .find(|l| l.contains("receiver"))
        .unwrap_or_else(|| panic!("no receiver line: {report}"));
    println!("{receiver}");

    for (name, lane) in [("A", &lane_a), ("B", &lane_b)] {
        let tx = lane.counter(LaneCounter::TxPackets);
        let rx = lane.counter(LaneCounter::RxPackets);
        println!(
            "host {name}: tx {tx} skbs / {} bytes, rx {rx} / {} bytes, passed tx {} rx {}",
            lane.counter(LaneCounter::TxBytes),
            lane.counter(LaneCounter::RxBytes),
            lane.counter(LaneCounter::TxPassed),
            lane.counter(LaneCounter::RxPassed),
        );
        assert!(tx > 100 && rx > 100, "host {name}: tx {tx} rx {rx}");
        for c in [
            LaneCounter::TxErrors,
            LaneCounter::RxErrors,
            LaneCounter::DropTooShort,
            LaneCounter::DropNotIpv4,
            LaneCounter::DropBadIhl,
            LaneCounter::DropBadLength,
            LaneCounter::DropRxTtlExpired,
        ] {
            assert_eq!(lane.counter(c), 0, "host {name}: {c:?}");
        }
    }
}
