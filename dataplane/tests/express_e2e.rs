//! The express lane with the real binaries: real etcd, `flanneld` and `flannel-dataplane
//! --express` in network namespaces, containers behind bridges (the perf testbed's cluster).
//! Needs root (skips with a message otherwise; fails under CI).
//!
//! What is checked: the programs sit where the design puts them (the TUN device's tcx egress,
//! the underlay's tcx ingress); bulk TCP and ping cross in flannel's exact wire format, carried
//! by the kernel (the lane's counters, not the workers'); a `kill -9` leaves no program behind
//! and a restarted data plane takes over; an express host and an io_uring-path host reach
//! each other both ways.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use flannel_dataplane::sys::tcx::{self, TcxDir};
use flannel_perf::testbed::cluster::{Cluster, ClusterOpts, SimHost};
use flannel_perf::testbed::netns::Netns;
use flannel_perf::testbed::{bins, have, require, wait_for};
use flannel_shared::stats::StatsReader;

const SEC: Duration = Duration::from_secs(1);
/// Bytes of the bulk transfers.
const BULK: u64 = 200_000_000;

fn cluster() -> Option<Cluster> {
    let opts = ClusterOpts::for_test()?;
    if !require(
        "tcpdump and ethtool installed",
        have("tcpdump") && have("ethtool"),
    ) {
        return None;
    }
    Some(Cluster::new(opts).expect("build the testbed"))
}

fn set_dataplane_args(c: &mut Cluster, args: &[&str]) {
    c.opts.dataplane_args = args.iter().map(|s| s.to_string()).collect();
}

fn ifindex_of(ns: &Netns, dev: &str) -> u32 {
    let out = ns.ip(&["-o", "link", "show", dev]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex for {dev}: {text:?}"))
}

/// Programs on `dev`'s tcx hook `dir` in `ns`.
fn programs(ns: &Netns, dev: &str, dir: TcxDir) -> usize {
    let i = ifindex_of(ns, dev);
    ns.run_in(move || tcx::query(i, dir).map(|p| p.len()).unwrap_or(0))
}

fn total(h: &SimHost, name: &str) -> u64 {
    StatsReader::open(&h.stats_file()).unwrap().total(name)
}

/// The lane's counters reach the stats file within a second.
fn wait_total(h: &SimHost, name: &str, at_least: u64) -> u64 {
    wait_for(5 * SEC, || {
        let v = total(h, name);
        (v >= at_least).then_some(v)
    })
    .unwrap_or_else(|| total(h, name))
}

fn loadgen() -> PathBuf {
    bins("flannel-loadgen")
}

/// `BULK` bytes from host `from`'s container to host `to`'s over TCP; SHA-256 equal at both
/// ends.
fn bulk_tcp(c: &Cluster, from: usize, to: usize, port: u16) {
    let dst = c.hosts[to].container_ip();
    let rx = c
        .spawn_listener(to, &loadgen(), &["tcp-recv", &port.to_string()])
        .unwrap();
    let tx = c.hosts[from]
        .container()
        .command(loadgen())
        .args(["tcp-send", &format!("{dst}:{port}"), &BULK.to_string(), "7"])
        .output()
        .unwrap();
    assert!(
        tx.status.success(),
        "{}",
        String::from_utf8_lossy(&tx.stderr)
    );
    let sent = String::from_utf8_lossy(&tx.stdout).trim().to_string();
    let got = String::from_utf8_lossy(&rx.wait_with_output().unwrap().stdout)
        .trim()
        .to_string();
    assert!(sent.starts_with(&format!("bytes={BULK} sha256=")), "{sent}");
    assert_eq!(got, sent, "received data differs from sent data");
}

/// tcpdump of UDP 8285 on `ns`'s eth0, headers only.
fn capture(ns: &Netns, file: &std::path::Path) -> Child {
    let child = ns
        .command("tcpdump")
        .args(["-i", "eth0", "-U", "-s", "128", "-w"])
        .arg(file)
        .args(["udp", "port", "8285"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(SEC);
    child
}

fn stop_capture(mut child: Child) {
    std::thread::sleep(SEC / 2);
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// One captured flannel frame's outer and inner header fields.
#[derive(Debug)]
struct Frame {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    df: bool,
    ttl: u8,
    ip_len: usize,
    sport: u16,
    ulen: usize,
    ucsum: u16,
    inner_len: usize,
    inner_proto: u8,
    inner_ttl: u8,
}

/// The UDP 8285 frames of a pcap (Ethernet, any snap length ≥ 62).
fn frames(pcap: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[off + 8..off + 12].try_into().unwrap()) as usize;
        let f = &pcap[off + 16..(off + 16 + incl).min(pcap.len())];
        off += 16 + incl;
        if f.len() < 14 + 20 + 8 + 20 || f[12..14] != [0x08, 0x00] || f[14] != 0x45 {
            continue;
        }
        let ip = &f[14..];
        let udp = &ip[20..];
        let inner = &udp[8..];
        if ip[9] != 17 || u16::from_be_bytes([udp[2], udp[3]]) != 8285 {
            continue;
        }
        out.push(Frame {
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            df: ip[6] & 0x40 != 0,
            ttl: ip[8],
            ip_len: usize::from(u16::from_be_bytes([ip[2], ip[3]])),
            sport: u16::from_be_bytes([udp[0], udp[1]]),
            ulen: usize::from(u16::from_be_bytes([udp[4], udp[5]])),
            ucsum: u16::from_be_bytes([udp[6], udp[7]]),
            inner_len: usize::from(u16::from_be_bytes([inner[2], inner[3]])),
            inner_proto: inner[9],
            inner_ttl: inner[8],
        });
    }
    out
}

/// Two express hosts: where the programs sit, ping and bulk TCP both ways, the wire format
/// under bulk TCP, and that the kernel carried it.
#[test]
fn express_hosts_carry_ping_and_bulk_tcp_in_flannels_format_in_the_kernel() {
    let Some(mut c) = cluster() else { return };
    set_dataplane_args(&mut c, &["--express"]);
    c.add_host().unwrap();
    c.add_host().unwrap();
    c.wait_reachable(0, 1, 10 * SEC).unwrap();
    c.wait_reachable(1, 0, 10 * SEC).unwrap();
    for h in &c.hosts {
        let dp = h.dataplane.as_ref().unwrap();
        dp.wait_log("express lane on", 5 * SEC);
        assert_eq!(
            programs(&h.ns, "flannel0", TcxDir::Egress),
            1,
            "{}",
            h.logs()
        );
        assert_eq!(programs(&h.ns, "eth0", TcxDir::Ingress), 1, "{}", h.logs());
    }
    c.ping(0, 1, 5).unwrap();
    c.ping(1, 0, 5).unwrap();

    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let before = (total(a, "express_tx_bytes"), total(b, "express_rx_bytes"));
    let workers_before = (total(a, "udp_tx_bytes"), total(b, "udp_rx_bytes"));
    let pcap = c.dir().join("b.pcap");
    let tcpdump = capture(&b.ns, &pcap);
    bulk_tcp(&c, 0, 1, 5001);
    stop_capture(tcpdump);
    bulk_tcp(&c, 1, 0, 5002);

    // The kernel carried the bulk: the lane's bytes, not the workers'.
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let tx = wait_total(a, "express_tx_bytes", before.0 + BULK) - before.0;
    let rx = wait_total(b, "express_rx_bytes", before.1 + BULK) - before.1;
    assert!(tx >= BULK && rx >= BULK, "lane bytes: tx {tx}, rx {rx}");
    let worker_tx = total(a, "udp_tx_bytes") - workers_before.0;
    let worker_rx = total(b, "udp_rx_bytes") - workers_before.1;
    assert!(
        worker_tx < BULK / 100 && worker_rx < BULK / 100,
        "the workers carried part of the bulk: tx {worker_tx}, rx {worker_rx}"
    );
    // Delivered to the container's interface, not through the stack.
    let to_stack = total(b, "express_rx_to_stack");
    let rx_packets = total(b, "express_rx_packets");
    assert!(
        to_stack * 100 < rx_packets,
        "{to_stack} of {rx_packets} to the stack"
    );
    for name in ["express_tx_errors", "express_rx_errors"] {
        assert_eq!(total(a, name) + total(b, name), 0, "{name}");
    }

    // flannel's format, as captured under bulk TCP on B's underlay.
    let all = frames(&std::fs::read(&pcap).unwrap());
    let tcp: Vec<&Frame> = all
        .iter()
        .filter(|f| f.src == a.underlay_ip && f.dst == b.underlay_ip && f.inner_proto == 6)
        .collect();
    assert!(tcp.len() > 100, "{} TCP frames A→B captured", tcp.len());
    let mut ports = std::collections::BTreeSet::new();
    for f in &tcp {
        assert!(f.df, "DF: {f:?}");
        assert_eq!(f.ttl, 64, "outer TTL: {f:?}");
        assert_eq!(f.ucsum, 0, "UDP checksum: {f:?}");
        assert_eq!(f.ulen, f.ip_len - 20, "UDP length: {f:?}");
        assert_eq!(
            f.inner_len,
            f.ulen - 8,
            "the payload is one inner packet: {f:?}"
        );
        // Sent with TTL 64, forwarded by A's host (63), flannel's send decrement (62).
        assert_eq!(f.inner_ttl, 62, "inner TTL: {f:?}");
        assert!(f.sport >= 49152, "flow source port: {f:?}");
        ports.insert(f.sport);
    }
    assert_eq!(ports.len(), 1, "one TCP flow, one source port: {ports:?}");
    // Segments bigger than the MTU on the veth: GSO super-packets, segmented by a real NIC.
    assert!(
        tcp.iter().any(|f| f.ip_len > 1500),
        "no GSO super-packet seen"
    );
}

/// `kill -9` of an express data plane leaves no program on the underlay; a restarted one
/// attaches again and carries traffic.
#[test]
fn a_killed_express_data_plane_leaves_no_program_and_its_restart_takes_over() {
    let Some(mut c) = cluster() else { return };
    set_dataplane_args(&mut c, &["--express"]);
    c.add_host().unwrap();
    c.add_host().unwrap();
    c.wait_reachable(0, 1, 10 * SEC).unwrap();
    c.hosts[0]
        .dataplane
        .as_ref()
        .unwrap()
        .wait_log("express lane on", 5 * SEC);
    assert_eq!(programs(&c.hosts[0].ns, "eth0", TcxDir::Ingress), 1);
    c.hosts[0].dataplane.as_mut().unwrap().kill9();
    assert_eq!(
        programs(&c.hosts[0].ns, "eth0", TcxDir::Ingress),
        0,
        "a program outlived its data plane"
    );
    c.start_dataplane(0).unwrap();
    c.wait_reachable(0, 1, 10 * SEC).unwrap();
    c.hosts[0]
        .dataplane
        .as_ref()
        .unwrap()
        .wait_log("express lane on", 5 * SEC);
    assert_eq!(programs(&c.hosts[0].ns, "eth0", TcxDir::Ingress), 1);
    assert_eq!(programs(&c.hosts[0].ns, "flannel0", TcxDir::Egress), 1);
    c.ping(0, 1, 3).unwrap();
    c.ping(1, 0, 3).unwrap();
    let before = total(&c.hosts[0], "express_tx_packets");
    bulk_tcp(&c, 0, 1, 5003);
    assert!(wait_total(&c.hosts[0], "express_tx_packets", before + 1000) > before + 1000);
    // A stop (SIGTERM) detaches too.
    assert_eq!(programs(&c.hosts[1].ns, "eth0", TcxDir::Ingress), 1);
    let status = c.hosts[1].dataplane.as_mut().unwrap().stop(5 * SEC);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(programs(&c.hosts[1].ns, "eth0", TcxDir::Ingress), 0);
}

/// Without CAP_BPF (and CAP_SYS_ADMIN) the lane cannot load: one log line says so and why,
/// no program is attached, and the io_uring path forwards everything.
#[test]
fn without_cap_bpf_the_lane_stays_off_and_the_io_uring_path_forwards() {
    let Some(mut c) = cluster() else { return };
    if !require("setpriv installed", have("setpriv")) {
        return;
    }
    c.opts.dataplane_wrapper = ["setpriv", "--bounding-set", "-bpf,-sys_admin"]
        .map(String::from)
        .to_vec();
    set_dataplane_args(&mut c, &["--express"]);
    c.add_host().unwrap();
    c.add_host().unwrap();
    c.wait_reachable(0, 1, 10 * SEC).unwrap();
    c.ping(0, 1, 3).unwrap();
    c.ping(1, 0, 3).unwrap();
    for h in &c.hosts {
        let log = h.dataplane.as_ref().unwrap().log();
        let off: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("express lane off ("))
            .collect();
        assert_eq!(off.len(), 1, "one line, at start:\n{log}");
        assert!(off[0].contains("CAP_BPF"), "{}", off[0]);
        assert!(!log.contains("express lane on"), "{log}");
        assert_eq!(programs(&h.ns, "eth0", TcxDir::Ingress), 0);
        assert_eq!(programs(&h.ns, "flannel0", TcxDir::Egress), 0);
        assert_eq!(total(h, "express_tx_packets"), 0);
        assert!(
            total(h, "udp_tx_packets") >= 3,
            "the workers forwarded the pings"
        );
    }
}

/// An express host and an io_uring-path host (and so flannel's own UDP backend, which speaks
/// the same datagrams as the latter) reach each other both ways. A veth is not a wire: it
/// passes the lane's GSO super-packets and unfinished checksums on as they are, which only a
/// receiver that decapsulates in the kernel can take. A NIC segments and checksums them; the
/// express host's underlay is made to do the same (`ethtool -K eth0 tx off`).
#[test]
fn an_express_host_and_an_io_uring_host_reach_each_other() {
    let Some(mut c) = cluster() else { return };
    set_dataplane_args(&mut c, &["--express"]);
    c.add_host().unwrap();
    // B without the lane, also when the suite runs with FLANNEL_DATAPLANE_EXPRESS=true.
    set_dataplane_args(&mut c, &[]);
    c.opts.workers_only = true;
    c.add_host().unwrap();
    let out = c.hosts[0]
        .ns
        .command("ethtool")
        .args(["-K", "eth0", "tx", "off"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_reachable(0, 1, 10 * SEC).unwrap();
    c.wait_reachable(1, 0, 10 * SEC).unwrap();
    c.ping(0, 1, 5).unwrap();
    c.ping(1, 0, 5).unwrap();
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let before = (total(a, "express_tx_bytes"), total(b, "udp_rx_bytes"));
    bulk_tcp(&c, 0, 1, 5004);
    bulk_tcp(&c, 1, 0, 5005);
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    assert!(
        wait_total(a, "express_tx_bytes", before.0 + BULK) >= before.0 + BULK,
        "the express host's lane sent the bulk"
    );
    assert!(
        total(b, "udp_rx_bytes") >= before.1 + BULK,
        "the io_uring host's workers received it"
    );
    assert_eq!(total(b, "express_tx_packets"), 0, "B runs without the lane");
}
