//! End to end: real etcd, real `flanneld` and `flannel-dataplane` in network namespaces, containers
//! behind docker0-like bridges. Needs root (skips with a message otherwise; fails under CI).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use flannel_perf::testbed::cluster::{Cluster, ClusterOpts};
use flannel_perf::testbed::{skip_or_fail, wait_for};
use flannel_shared::stats::StatsReader;

const SEC: Duration = Duration::from_secs(1);

fn cluster(dataplane_args: &[&str]) -> Option<Cluster> {
    cluster_with(dataplane_args, false)
}

/// `workers_only`: see [`ClusterOpts::workers_only`] (tests of the workers' own counters).
fn cluster_with(dataplane_args: &[&str], workers_only: bool) -> Option<Cluster> {
    let mut opts = ClusterOpts::for_test()?;
    opts.dataplane_args = dataplane_args.iter().map(|s| s.to_string()).collect();
    opts.workers_only = workers_only;
    Some(Cluster::new(opts).expect("build the testbed"))
}

fn loadgen() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_flannel-loadgen"))
}

/// Starts a loadgen receiver in host `host`'s container and waits until it listens.
fn spawn_receiver(c: &Cluster, host: usize, args: &[&str]) -> std::process::Child {
    c.spawn_listener(host, &loadgen(), args).unwrap()
}

fn finish(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Parses a pcap (Ethernet) and returns the UDP payloads sent to `port`, with the outer IPs and
/// whether the outer header has DF set.
fn udp_payloads(pcap: &[u8], port: u16) -> Vec<(Ipv4Addr, Ipv4Addr, bool, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[off + 8..off + 12].try_into().unwrap()) as usize;
        let frame = &pcap[off + 16..(off + 16 + incl).min(pcap.len())];
        off += 16 + incl;
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 17 || ip.len() < ihl + 8 {
            continue;
        }
        let udp = &ip[ihl..];
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if dport != port || ulen < 8 || udp.len() < ulen {
            continue;
        }
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let df = ip[6] & 0x40 != 0;
        out.push((src, dst, df, udp[8..ulen].to_vec()));
    }
    out
}

/// `io_path`: the I/O path both data planes must report (`io_uring` or `fallback`).
fn two_hosts_carry_ping_tcp_and_udp_in_flannels_wire_format(
    dataplane_args: &[&str],
    io_path: &str,
) {
    let Some(mut c) = cluster(dataplane_args) else {
        return;
    };
    c.add_host().unwrap();
    c.add_host().unwrap();
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let (ca, cb) = (a.container_ip(), b.container_ip());
    for h in [a, b] {
        let got = StatsReader::open(&h.stats_file()).unwrap().io_path();
        assert_eq!(got.name(), io_path, "host {}\n{}", h.index, h.logs());
        if io_path == "io_uring" {
            let want = if dataplane_args.contains(&"--tun-reads=readiness") {
                "TUN reads: read(2) after a multishot poll"
            } else {
                "TUN reads: one multishot READ per queue"
            };
            assert!(
                h.logs().contains(want),
                "host {}: {want:?}\n{}",
                h.index,
                h.logs()
            );
        }
    }
    // The hosts learn each other's lease through etcd.
    c.wait_reachable(0, 1, SEC * 10)
        .unwrap_or_else(|e| panic!("{e:#}\n{}{}", a.logs(), b.logs()));

    // Wire capture on B's underlay while a ping crosses.
    let pcap = c.dir().join("b.pcap");
    let mut tcpdump =
        b.ns.command("tcpdump")
            .args(["-i", "eth0", "-U", "-s", "0", "-w"])
            .arg(&pcap)
            .args(["udp", "port", "8285"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    std::thread::sleep(SEC);

    // Every echo request answered, both ways.
    c.ping(0, 1, 3)
        .unwrap_or_else(|e| panic!("{e:#}\n{}{}", a.logs(), b.logs()));
    c.ping(1, 0, 3).unwrap();
    std::thread::sleep(SEC / 2);
    let _ = Command::new("kill").arg(tcpdump.id().to_string()).status();
    let _ = tcpdump.wait();

    // Flannel's wire format: UDP to 8285 whose payload is exactly the inner IPv4 packet.
    let frames = udp_payloads(&std::fs::read(&pcap).unwrap(), 8285);
    let inner: Vec<_> = frames
        .iter()
        .filter(|(src, dst, _, _)| *src == a.underlay_ip && *dst == b.underlay_ip)
        .collect();
    assert!(!inner.is_empty(), "no UDP 8285 datagrams A→B captured");
    for (_, _, df, p) in &inner {
        // Outer packets are never fragmented (IP_PMTUDISC_DO): a larger one is refused and
        // counted (udp_tx_too_big), never split into fragments the peer must reassemble.
        assert!(*df, "outer datagram without DF");
        assert_eq!(p[0] >> 4, 4, "payload starts with an IPv4 header");
        assert_eq!(
            usize::from(u16::from_be_bytes([p[2], p[3]])),
            p.len(),
            "inner total length = payload"
        );
        assert_eq!(Ipv4Addr::new(p[12], p[13], p[14], p[15]), ca);
        assert_eq!(Ipv4Addr::new(p[16], p[17], p[18], p[19]), cb);
        assert_eq!(p[9], 1, "ICMP inside");
        // Container sent TTL 64; the host forwarded it once (63); flannel decrements on send (62).
        assert_eq!(p[8], 62, "inner TTL decremented on send as flannel does");
    }

    // 200 MB over TCP, SHA-256 equal at both ends.
    let rx = spawn_receiver(&c, 1, &["tcp-recv", "5001"]);
    let tx = c.hosts[0]
        .container()
        .command(loadgen())
        .args(["tcp-send", &format!("{cb}:5001"), "200000000", "7"])
        .output()
        .unwrap();
    assert!(
        tx.status.success(),
        "{}",
        String::from_utf8_lossy(&tx.stderr)
    );
    let sent = String::from_utf8_lossy(&tx.stdout).trim().to_string();
    let got = finish(rx);
    assert!(sent.starts_with("bytes=200000000 sha256="), "{sent}");
    assert_eq!(got, sent, "received data differs from sent data");

    // UDP datagrams arrive intact.
    let rx = spawn_receiver(&c, 0, &["udp-recv", "5002", "500", "3000"]);
    let tx = c.hosts[1]
        .container()
        .command(loadgen())
        .args(["udp-send", &format!("{ca}:5002"), "500", "1200"])
        .output()
        .unwrap();
    assert!(tx.status.success());
    let got = finish(rx);
    let received: u32 = got
        .split_whitespace()
        .find_map(|w| w.strip_prefix("received="))
        .unwrap()
        .parse()
        .unwrap();
    // UDP may lose datagrams under load (this is a shared 2-core machine); what arrives must be
    // intact, and most of it must arrive.
    assert!(received >= 250, "{got}");
    assert!(
        got.ends_with(&format!("intact={received}")),
        "corrupted datagrams: {got}"
    );
}

#[test]
fn io_uring_path_carries_ping_tcp_udp_in_wire_format() {
    two_hosts_carry_ping_tcp_and_udp_in_flannels_wire_format(&[], "io_uring");
}

#[test]
fn io_uring_path_with_readiness_tun_reads_carries_ping_tcp_udp_in_wire_format() {
    two_hosts_carry_ping_tcp_and_udp_in_flannels_wire_format(
        &["--tun-reads=readiness"],
        "io_uring",
    );
}

#[test]
fn flow_steering_carries_ping_tcp_udp_in_wire_format() {
    two_hosts_carry_ping_tcp_and_udp_in_flannels_wire_format(&["--steering=flow"], "io_uring");
}

#[test]
fn fallback_path_carries_ping_tcp_udp_in_wire_format() {
    two_hosts_carry_ping_tcp_and_udp_in_flannels_wire_format(&["--no-io-uring"], "fallback");
}

#[test]
fn third_host_joins_live_and_a_deleted_lease_becomes_net_unreachable() {
    let Some(mut c) = cluster(&[]) else { return };
    c.add_host().unwrap();
    c.add_host().unwrap();
    c.wait_reachable(0, 1, SEC * 10).unwrap();
    // A third host joins while the others run; once its lease reached them (convergence),
    // every ping gets through, and the first two still talk.
    let c3 = c.add_host().unwrap();
    for (from, to) in [(0, c3), (c3, 1)] {
        c.wait_reachable(from, to, SEC * 10)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", c.hosts[from].logs()));
        c.ping(from, to, 3).unwrap();
    }
    c.ping(1, 0, 3).unwrap();

    // Host 3's flanneld stops (otherwise it re-acquires) and its lease is deleted.
    c.hosts[c3].flanneld.as_mut().unwrap().kill9();
    let (gw, len) = c.hosts[c3].subnet.unwrap();
    let key = format!(
        "/coreos.com/network/subnets/{}-{len}",
        Ipv4Addr::from(u32::from(gw) - 1)
    );
    c.etcd.ctl(&["del", &key]).unwrap();
    // flannel never answers ICMP with ICMP, so ping just times out; a TCP connect from the
    // container gets the ICMP net-unreachable the data plane writes back (ENETUNREACH).
    let dst = format!("{}:5003", c.hosts[c3].container_ip());
    let unreachable = wait_for(SEC * 10, || {
        let out = c.hosts[0]
            .container()
            .command(loadgen())
            .args(["tcp-send", &dst, "1", "1"])
            .output()
            .ok()?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && err.contains("Network is unreachable")).then_some(err)
    });
    assert!(
        unreachable.is_some(),
        "no ICMP net-unreachable for a deleted lease\n{}",
        c.hosts[0].logs()
    );
    let stats = StatsReader::open(&c.hosts[0].stats_file()).unwrap();
    assert!(stats.total("icmp_unreachable_sent") >= 1);
    c.ping(0, 1, 3).unwrap();
}

#[test]
fn forwarding_survives_flanneld_death_and_dataplane_restart_keeps_the_lease() {
    let Some(mut c) = cluster(&[]) else { return };
    c.add_host().unwrap();
    c.add_host().unwrap();
    c.wait_reachable(0, 1, SEC * 10).unwrap();
    let (gw, len) = c.hosts[0].subnet.unwrap();
    let key = format!(
        "/coreos.com/network/subnets/{}-{len}",
        Ipv4Addr::from(u32::from(gw) - 1)
    );
    let value_before = c.etcd.get(&key).unwrap();

    // flanneld killed: the data plane keeps forwarding with the last table, every packet.
    c.hosts[0].flanneld.as_mut().unwrap().kill9();
    c.ping(0, 1, 3).unwrap();
    c.ping(1, 0, 3).unwrap();
    c.start_flanneld(0).unwrap();
    // This run's line: the previous run's is in the same log file.
    c.hosts[0]
        .flanneld
        .as_ref()
        .unwrap()
        .wait_log("route table published", SEC * 20);
    c.ping(0, 1, 3).unwrap();

    // The restarted flanneld kept the subnet (same key, same value).
    assert_eq!(c.etcd.get(&key).unwrap(), value_before);
    // flannel-dataplane killed and restarted: forwarding resumes; the lease is untouched.
    let lease_before = c.etcd.lease_of(&key).unwrap();
    c.hosts[0].dataplane.as_mut().unwrap().kill9();
    c.start_dataplane(0).unwrap();
    if let Err(e) = c.wait_reachable(0, 1, SEC * 5) {
        panic!(
            "no forwarding after data-plane restart: {e:#}\n{}",
            c.hosts[0].logs()
        );
    }
    c.ping(0, 1, 3).unwrap();
    c.ping(1, 0, 3).unwrap();
    assert_eq!(c.etcd.get(&key).unwrap(), value_before);
    assert_eq!(
        c.etcd.lease_of(&key).unwrap(),
        lease_before,
        "same etcd lease"
    );
    // Stopped and restarted at once with the other offload setting, and back: each process
    // gets a fresh flannel0 (attaching to the previous one, still closing, kept its vnet-header
    // mode and every packet read was malformed).
    for args in [vec!["--no-offload".to_string()], vec![]] {
        let h = &mut c.hosts[0];
        assert!(h
            .dataplane
            .as_mut()
            .unwrap()
            .stop(SEC * 5)
            .unwrap()
            .success());
        c.opts.dataplane_args = args.clone();
        c.start_dataplane(0).unwrap();
        // Up again, then every packet through (a device inherited in the wrong mode made
        // every one malformed).
        if let Err(e) = c
            .wait_reachable(0, 1, SEC * 5)
            .and_then(|()| c.ping(0, 1, 3))
        {
            panic!(
                "dataplane restarted with {args:?}: {e:#}\n{}",
                c.hosts[0].logs()
            );
        }
    }
    // SIGTERM: both exit 0.
    let h = &mut c.hosts[0];
    assert!(h
        .dataplane
        .as_mut()
        .unwrap()
        .stop(SEC * 5)
        .unwrap()
        .success());
    assert!(h
        .flanneld
        .as_mut()
        .unwrap()
        .stop(SEC * 5)
        .unwrap()
        .success());
}

/// The CPUs this process may run on (`/proc/self/status` `Cpus_allowed_list`, e.g. `0-3,6`).
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// Per-worker deltas of `counter` in host `host`'s data plane around `f`.
fn worker_deltas(c: &Cluster, host: usize, counter: &str, f: impl FnOnce()) -> Vec<u64> {
    let reader = StatsReader::open(&c.hosts[host].stats_file()).unwrap();
    let before = reader.snapshot();
    f();
    reader
        .snapshot()
        .iter()
        .zip(&before)
        .map(|(a, b)| a.get(counter).unwrap_or(0) - b.get(counter).unwrap_or(0))
        .collect()
}

#[test]
fn cpu_local_steering_hands_a_ping_to_the_workers_on_the_pinged_cpu() {
    // Default data plane: one worker per allowed CPU, worker i pinned to the i-th CPU.
    let cpus = allowed_cpus();
    if cpus.len() < 2 {
        skip_or_fail(&format!(
            "CPU-local steering needs at least 2 CPUs (this process may use {cpus:?})"
        ));
        return;
    }
    // The workers' steering: their own counters (the express lane would carry the pings).
    let Some(mut c) = cluster_with(&[], true) else {
        return;
    };
    c.add_host().unwrap();
    c.add_host().unwrap();
    c.wait_reachable(0, 1, SEC * 10).unwrap();
    for h in &c.hosts {
        assert!(
            h.logs().contains("steering: CPU-local"),
            "CPU-local steering not active:\n{}",
            h.logs()
        );
    }
    let dst = c.hosts[1].container_ip().to_string();
    for worker in [1, 0] {
        let cpu = cpus[worker].to_string();
        let mut rx = Vec::new();
        let tx = worker_deltas(&c, 0, "tun_rx_packets", || {
            rx = worker_deltas(&c, 1, "udp_rx_packets", || {
                // 20 ms apart: every echo request starts an idle flow, which may move.
                let out = c.hosts[0]
                    .container()
                    .command("taskset")
                    .args([
                        "-c", &cpu, "ping", "-c", "20", "-i", "0.02", "-W", "2", &dst,
                    ])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(text.contains(" 20 received"), "{text}");
            });
        });
        eprintln!("ping on CPU {cpu}: sender TUN reads {tx:?}, receiver datagrams {rx:?}");
        // The flow's first packet goes to the next queue in turn; the rest to `worker`.
        assert!(
            tx[worker] >= 19,
            "ping on CPU {cpu}: sender's TUN reads per worker {tx:?}"
        );
        assert!(
            rx[worker] >= 19,
            "ping on CPU {cpu}: receiver's datagrams per worker {rx:?}"
        );
    }
}

/// Threads of process `pid` named `iou-wrk-*` (io_uring's io-wq workers).
fn io_wq_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("iou-wrk"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// read(2)- and write(2)-family syscalls process `pid` made (`syscr`, `syscw` in
/// /proc/PID/io; io_uring reads and writes do not count).
fn rw_syscalls(pid: u32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let field = |k: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (field("syscr: "), field("syscw: "))
}

/// What a flood did to the data planes.
#[derive(Debug)]
struct Flood {
    /// Packets A's data plane read from its TUN queue, and the read syscalls it made.
    a_tun_reads: u64,
    a_read_syscalls: u64,
    /// Packets B's data plane wrote to its TUN queue, and the write syscalls it made.
    b_tun_writes: u64,
    b_write_syscalls: u64,
    /// The most io-wq threads seen in both data planes together while it ran.
    io_wq_threads: usize,
}

/// A 64-byte UDP flood container A → B (unpaced).
fn flood_from_a(c: &Cluster) -> Flood {
    let pids: Vec<u32> = (0..2)
        .map(|h| c.hosts[h].dataplane.as_ref().unwrap().pid().unwrap())
        .collect();
    let sa = StatsReader::open(&c.hosts[0].stats_file()).unwrap();
    let sb = StatsReader::open(&c.hosts[1].stats_file()).unwrap();
    let (tun_a, tun_b) = (sa.total("tun_rx_packets"), sb.total("tun_tx_packets"));
    let (ra, _) = rw_syscalls(pids[0]);
    let (_, wb) = rw_syscalls(pids[1]);
    let cb = c.hosts[1].container_ip();
    let mut sender = c.hosts[0]
        .container()
        .command(loadgen())
        .args(["udp-send", &format!("{cb}:5009"), "100000", "64"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut threads = 0;
    while sender.try_wait().unwrap().is_none() {
        threads = threads.max(pids.iter().map(|p| io_wq_threads(*p)).sum());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    threads = threads.max(pids.iter().map(|p| io_wq_threads(*p)).sum());
    Flood {
        a_tun_reads: sa.total("tun_rx_packets") - tun_a,
        a_read_syscalls: rw_syscalls(pids[0]).0 - ra,
        b_tun_writes: sb.total("tun_tx_packets") - tun_b,
        b_write_syscalls: rw_syscalls(pids[1]).1 - wb,
        io_wq_threads: threads,
    }
}

/// TUN I/O through the ring (Linux 6.7+): under a flood, no io-wq thread appears in either
/// data plane, the sender's data plane makes no read(2) per packet and the receiver's no
/// write(2) per packet, with offloads and without (`--no-offload`: no coalescing, the packets
/// of each receive written from its buffer). `--tun-reads=readiness` (read(2) per packet) and
/// `--no-io-uring` (read(2) and write(2) per packet) show what the measure catches.
#[test]
fn a_flood_crosses_tun_through_the_ring_without_io_wq_threads_or_per_packet_syscalls() {
    if sys_kernel_lacks_multishot_read() {
        return;
    }
    // (flags, a read(2) per packet on A, a write(2) per packet on B)
    let runs: [(&[&str], bool, bool); 4] = [
        (&[], false, false),
        (&["--no-offload"], false, false),
        (&["--tun-reads=readiness"], true, false),
        (&["--no-io-uring"], true, true),
    ];
    for (args, reads_per_packet, writes_per_packet) in runs {
        // The workers' own TUN I/O (the express lane would carry the flood).
        let Some(mut c) = cluster_with(args, true) else {
            return;
        };
        c.add_host().unwrap();
        c.add_host().unwrap();
        c.wait_reachable(0, 1, SEC * 10).unwrap();
        let f = flood_from_a(&c);
        eprintln!("{args:?}: {f:?}");
        assert!(f.a_tun_reads >= 10_000, "{args:?}: {f:?}");
        assert!(f.b_tun_writes >= 1_000, "{args:?}: {f:?}");
        assert_eq!(
            f.io_wq_threads, 0,
            "{args:?}: io-wq threads appeared: {f:?}"
        );
        let per_packet = |calls: u64, packets: u64| calls * 2 >= packets;
        let batched = |calls: u64, packets: u64| calls * 100 <= packets;
        if reads_per_packet {
            assert!(
                per_packet(f.a_read_syscalls, f.a_tun_reads),
                "{args:?}: {f:?}"
            );
        } else {
            assert!(batched(f.a_read_syscalls, f.a_tun_reads), "{args:?}: {f:?}");
        }
        if writes_per_packet {
            assert!(
                per_packet(f.b_write_syscalls, f.b_tun_writes),
                "{args:?}: {f:?}"
            );
        } else {
            assert!(
                batched(f.b_write_syscalls, f.b_tun_writes),
                "{args:?}: {f:?}"
            );
        }
    }
}

/// Kernels before 6.7 have no multishot READ (skipped with a message there).
fn sys_kernel_lacks_multishot_read() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) < (6, 7) {
        eprintln!("SKIPPED: kernel {release} has no io_uring multishot READ (6.7)");
        return true;
    }
    false
}
