//! Faults under traffic, in namespaces with real etcd and the real daemons. Needs root (skips
//! with a message otherwise; fails under CI).
//!
//! - A flood of garbage datagrams to host B's UDP 8285, sent from host A's namespace (and, for
//!   the unknown-sender case, from a second address on A's eth0 that holds no lease) while a
//!   TCP transfer runs container A → container B: every datagram sent is accounted for, either
//!   counted by B under a drop reason or reported dropped by the kernel on the way (socket
//!   buffer full, backlog full); no reason counts more than was sent of its kind, each kind is
//!   counted, nothing reaches B's container, no daemon dies, the transfer's SHA-256 matches.
//! - Forwarding interruptions: `ping -i 0.01` container A → container B across each fault
//!   (flanneld kill -9 and restart on either host, etcd restart, data plane kill -9 and restart,
//!   B's lease deleted by hand); the longest run of lost replies × 10 ms is the interruption.
//!   Printed for the fault table in docs/faults.md; leases and routes are checked after every fault.
//! - Lease churn among other hosts (≥ 1,000 etcd changes per minute) during a TCP transfer
//!   between two unaffected hosts: no drop counted, throughput within the noise of runs
//!   without churn (`lease_churn_1000_per_minute…`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use flannel_perf::testbed::cluster::{Cluster, ClusterOpts};
use flannel_perf::testbed::wait_for;
use flannel_shared::stats::StatsReader;

const SEC: Duration = Duration::from_secs(1);
const PREFIX: &str = "/coreos.com/network";

fn cluster(dataplane_args: &[&str]) -> Option<Cluster> {
    let mut opts = ClusterOpts::for_test()?;
    opts.dataplane_args = dataplane_args.iter().map(|s| s.to_string()).collect();
    let mut c = Cluster::new(opts).expect("build the testbed");
    c.add_host().unwrap();
    c.add_host().unwrap();
    // The hosts learn each other's lease through etcd: wait for that before the faults.
    c.wait_reachable(0, 1, SEC * 10)
        .unwrap_or_else(|e| panic!("{e:#}\n{}{}", c.hosts[0].logs(), c.hosts[1].logs()));
    Some(c)
}

fn loadgen() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flannel-loadgen"))
}

/// A child process killed (and reaped) on drop, so a failing test leaves nothing running
/// inside namespaces it is about to delete. Declare it after the cluster: it drops first.
struct Proc(Option<Child>);

impl Proc {
    fn take(mut self) -> Child {
        self.0.take().expect("child")
    }
    fn still_running(&mut self) -> bool {
        matches!(self.0.as_mut().map(Child::try_wait), Some(Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a loadgen receiver in host `host`'s container and waits until it listens.
fn spawn_receiver(c: &Cluster, host: usize, args: &[&str]) -> Proc {
    Proc(Some(c.spawn_listener(host, &loadgen(), args).unwrap()))
}

fn finish(child: Proc) -> String {
    let out = child.take().wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The lease key of host `i`.
fn lease_key(c: &Cluster, i: usize) -> String {
    let (gw, len) = c.hosts[i].subnet.unwrap();
    format!(
        "{PREFIX}/subnets/{}-{len}",
        Ipv4Addr::from(u32::from(gw) - 1)
    )
}

/// Datagrams the kernel reports it dropped between host `from`'s UDP socket and host `to`'s
/// data plane: `to`'s UDP `InErrors` (receive buffer full, also counted as `RcvbufErrors`;
/// socket filter; bad checksum) and `rx_dropped` of the two veth ends the path enters (the
/// switch's port of `from`, `to`'s eth0), where a full backlog drops. A datagram is dropped at
/// most once, so the sum counts datagrams; other traffic to `to` is in there too.
#[derive(Debug, Clone, Copy, Default)]
struct KernelDrops {
    udp_in_errors: u64,
    udp_rcvbuf_errors: u64,
    switch_port_rx_dropped: u64,
    eth0_rx_dropped: u64,
}

impl KernelDrops {
    fn read(c: &Cluster, from: usize, to: usize) -> Self {
        let dst = &c.hosts[to].ns;
        let port = format!("h{}", c.hosts[from].index);
        let snmp = text(dst.exec("cat", &["/proc/net/snmp"]));
        Self {
            udp_in_errors: snmp_udp(&snmp, "InErrors"),
            udp_rcvbuf_errors: snmp_udp(&snmp, "RcvbufErrors"),
            switch_port_rx_dropped: rx_dropped(&c.underlay.switch, &port),
            eth0_rx_dropped: rx_dropped(dst, "eth0"),
        }
    }

    /// Datagrams dropped (`udp_rcvbuf_errors` is part of `udp_in_errors`).
    fn total(&self) -> u64 {
        self.udp_in_errors + self.switch_port_rx_dropped + self.eth0_rx_dropped
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            udp_in_errors: self.udp_in_errors - before.udp_in_errors,
            udp_rcvbuf_errors: self.udp_rcvbuf_errors - before.udp_rcvbuf_errors,
            switch_port_rx_dropped: self.switch_port_rx_dropped - before.switch_port_rx_dropped,
            eth0_rx_dropped: self.eth0_rx_dropped - before.eth0_rx_dropped,
        }
    }
}

fn text(out: anyhow::Result<std::process::Output>) -> String {
    String::from_utf8_lossy(&out.expect("read kernel counters").stdout).into_owned()
}

/// One `Udp:` counter from `/proc/net/snmp` text (a header line of names, then one of values).
fn snmp_udp(snmp: &str, name: &str) -> u64 {
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    assert!(udp.len() >= 2, "no Udp: lines in /proc/net/snmp:\n{snmp}");
    let names: Vec<&str> = udp[0].split_whitespace().collect();
    let values: Vec<&str> = udp[1].split_whitespace().collect();
    names
        .iter()
        .position(|n| *n == name)
        .and_then(|i| values.get(i)?.parse().ok())
        .unwrap_or_else(|| panic!("Udp {name} not in /proc/net/snmp:\n{snmp}"))
}

/// `rx_dropped` of interface `dev` in namespace `ns`.
fn rx_dropped(ns: &flannel_perf::testbed::netns::Netns, dev: &str) -> u64 {
    let path = format!("/sys/class/net/{dev}/statistics/rx_dropped");
    let t = text(ns.exec("cat", &[&path]));
    t.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{} {path}: {e}: {t:?}", ns.name()))
}

/// Waits (at most `timeout`) until host B's counters `names` (read through `stats`) have moved
/// from `before` by enough to account, together with the kernel's drops on the way from host A
/// since `kernel_before`, for `sent` datagrams, and stopped moving; returns the counters' deltas
/// and the kernel's drops then.
fn settle(
    c: &Cluster,
    stats: &StatsReader,
    names: &[String],
    before: &[u64],
    kernel_before: &KernelDrops,
    sent: u64,
    timeout: Duration,
) -> (Vec<u64>, KernelDrops) {
    let read = || {
        let deltas: Vec<u64> = names
            .iter()
            .zip(before)
            .map(|(n, b)| stats.total(n) - b)
            .collect();
        (deltas, KernelDrops::read(c, 0, 1).since(kernel_before))
    };
    let mut previous: Option<Vec<u64>> = None;
    wait_for(timeout, || {
        let (deltas, kernel) = read();
        let accounted = deltas.iter().sum::<u64>() + kernel.total() >= sent;
        let still = previous.as_ref() == Some(&deltas);
        previous = Some(deltas);
        (accounted && still).then_some(())
    });
    read()
}

const REASONS: [&str; 7] = [
    "drop_too_short",
    "drop_not_ipv4",
    "drop_bad_ihl",
    "drop_bad_length",
    "drop_dst_not_local",
    "drop_spoofed_src",
    "drop_unknown_sender",
];

#[test]
fn garbage_flood_to_8285_is_counted_per_reason_while_tcp_flows() {
    garbage_flood(&[]);
}

#[test]
fn garbage_flood_on_the_fallback_path() {
    garbage_flood(&["--no-io-uring"]);
}

fn garbage_flood(dataplane_args: &[&str]) {
    let Some(mut c) = cluster(dataplane_args) else {
        return;
    };
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let (ca, cb) = (a.container_ip(), b.container_ip());
    // A second address on A's underlay link that holds no lease.
    const ROGUE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 77);
    a.ns.ip(&["addr", "add", "198.18.0.77/24", "dev", "eth0"])
        .unwrap();
    let dst = format!("{}:8285", b.underlay_ip);
    let stats = StatsReader::open(&b.stats_file()).unwrap();
    // The receive-side reasons (TUN-side ones move with the host's own traffic).
    let all_drops: Vec<String> = REASONS
        .iter()
        .chain(&["drop_rx_ttl_expired"])
        .map(|s| s.to_string())
        .collect();
    let before: Vec<u64> = all_drops.iter().map(|n| stats.total(n)).collect();
    let kernel_before = KernelDrops::read(&c, 0, 1);

    // Nothing injected may reach B's container: a listener on the inner packets' port.
    let sink = spawn_receiver(&c, 1, &["udp-recv", "5999", "1", "20000"]);
    // The real traffic: 600 MB container A → container B (over a second at a few Gbit/s).
    let rx = spawn_receiver(&c, 1, &["tcp-recv", "5001"]);
    let mut tx = Proc(Some(
        a.container()
            .command(loadgen())
            .args(["tcp-send", &format!("{cb}:5001"), "600000000", "11"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(SEC / 5);
    // "While TCP flows": the transfer must still be going when the flood starts.
    assert!(
        tx.still_running(),
        "the TCP transfer ended before the flood began"
    );

    const COUNT: u32 = 3000;
    let spoofed_src = Ipv4Addr::from(u32::from(cb) + 5);
    let a_ip = a.underlay_ip;
    // (from, kind, inner src, inner dst, expected counter)
    let floods: [(Ipv4Addr, &str, Ipv4Addr, Ipv4Addr, &str); 7] = [
        (a_ip, "too-short", ca, cb, "drop_too_short"),
        (a_ip, "not-ipv4", ca, cb, "drop_not_ipv4"),
        (a_ip, "bad-ihl", ca, cb, "drop_bad_ihl"),
        (a_ip, "bad-length", ca, cb, "drop_bad_length"),
        // Well formed, but for A's own container: B is not the destination.
        (a_ip, "ipv4", ca, ca, "drop_dst_not_local"),
        // Well formed, but A claims a source outside its subnet.
        (a_ip, "ipv4", spoofed_src, cb, "drop_spoofed_src"),
        // Well formed, from an address that holds no lease.
        (ROGUE, "ipv4", ca, cb, "drop_unknown_sender"),
    ];
    let t0 = Instant::now();
    for (from, kind, src, inner_dst, _) in floods {
        // Marked as the data plane's sockets are: A's OUTPUT guard lets it through, so this
        // is what a member (a buggy or hostile peer data plane) can send.
        let out =
            a.ns.command(loadgen())
                .env("LOADGEN_SO_MARK", "0x2000")
                .args([
                    "udp-garbage",
                    &from.to_string(),
                    &dst,
                    kind,
                    &COUNT.to_string(),
                    &src.to_string(),
                    &inner_dst.to_string(),
                ])
                .output()
                .unwrap();
        assert!(
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).trim() == format!("sent={COUNT}"),
            "udp-garbage {kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let flood_time = t0.elapsed();
    let overlapped = tx.still_running();

    let sent = |name: &str| -> u64 {
        floods.iter().filter(|f| f.4 == name).count() as u64 * u64::from(COUNT)
    };
    let total_sent = floods.len() as u64 * u64::from(COUNT);
    let (deltas, kernel) = settle(
        &c,
        &stats,
        &all_drops,
        &before,
        &kernel_before,
        total_sent,
        SEC * 10,
    );
    let counted: u64 = deltas.iter().sum();
    let table: Vec<String> = all_drops
        .iter()
        .zip(&deltas)
        .map(|(n, v)| format!("{n}: sent {} counted {v}", sent(n)))
        .collect();
    let report = format!(
        "{total_sent} datagrams in {flood_time:?} during the TCP transfer (still running \
         afterwards: {overlapped}); counted {counted}, dropped by the kernel meanwhile (all UDP \
         to B, the transfer's too): {kernel:?}\n  {}",
        table.join("\n  ")
    );
    eprintln!("garbage flood {dataplane_args:?}: {report}");
    // No reason counts more than was sent of its kind (nothing over-counted or misfiled into
    // it), and each kind sent was counted.
    for (n, v) in all_drops.iter().zip(&deltas) {
        assert!(
            *v <= sent(n),
            "{n}: {v} counted, {} sent:\n{report}\n{}",
            sent(n),
            b.logs()
        );
        assert!(
            sent(n) == 0 || *v > 0,
            "{n}: none of {} counted:\n{report}\n{}",
            sent(n),
            b.logs()
        );
    }
    for r in REASONS {
        assert_eq!(sent(r), u64::from(COUNT), "{r} is exercised");
    }
    // Every datagram sent was counted by B or dropped by the kernel on the way. (The kernel's
    // drops also include the TCP transfer's datagrams, so this is `<=`, not `=`.)
    assert!(
        total_sent <= counted + kernel.total(),
        "{} garbage datagrams neither counted by B nor dropped by the kernel:\n{report}\n{}",
        total_sent - counted - kernel.total(),
        b.logs()
    );

    // Empty datagrams too: never delivered, nothing crashes, each counted as too short.
    let short = ["drop_too_short".to_string()];
    let short_before = [stats.total(&short[0])];
    let kernel_before = KernelDrops::read(&c, 0, 1);
    let out =
        a.ns.command(loadgen())
            .env("LOADGEN_SO_MARK", "0x2000")
            .args(["udp-garbage", &a_ip.to_string(), &dst, "empty", "500"])
            .args([ca.to_string(), cb.to_string()])
            .output()
            .unwrap();
    assert!(out.status.success());
    let (d, kernel) = settle(
        &c,
        &stats,
        &short,
        &short_before,
        &kernel_before,
        500,
        SEC * 5,
    );
    eprintln!(
        "500 empty datagrams: counted in drop_too_short: {}; kernel drops meanwhile: {kernel:?}",
        d[0]
    );
    assert!(
        (1..=500).contains(&d[0]) && 500 <= d[0] + kernel.total(),
        "500 empty datagrams: {} counted as drop_too_short, kernel drops meanwhile {kernel:?}",
        d[0]
    );

    // The transfer is intact.
    let tx_out = tx.take().wait_with_output().unwrap();
    assert!(
        tx_out.status.success(),
        "{}",
        String::from_utf8_lossy(&tx_out.stderr)
    );
    let sent = String::from_utf8_lossy(&tx_out.stdout).trim().to_string();
    assert!(sent.starts_with("bytes=600000000 sha256="), "{sent}");
    assert_eq!(finish(rx), sent, "TCP data corrupted during the flood");
    // Nothing injected reached the container.
    let got = finish(sink);
    assert_eq!(
        got, "received=0 intact=0",
        "injected packets were delivered"
    );

    // Nobody crashed, forwarding goes on.
    for h in &mut c.hosts {
        for (name, d) in [
            ("flanneld", &mut h.flanneld),
            ("dataplane", &mut h.dataplane),
        ] {
            assert!(
                d.as_mut().unwrap().is_running(),
                "host {} {name} died",
                h.index
            );
        }
    }
    // Every ping answered: the flood left nothing broken.
    c.ping(0, 1, 3).unwrap();
    c.ping(1, 0, 3).unwrap();
}

/// `ping -i 0.01` container `from` → container `to`, for `count` packets.
struct Pinger {
    child: Proc,
    count: u32,
    started: Instant,
}

const PING_INTERVAL_MS: u64 = 10;
/// "No interruption" in the fault table in docs/faults.md, as asserted: at most two pings lost in a row.
const NO_INTERRUPTION_BOUND_MS: u64 = 2 * PING_INTERVAL_MS;
/// A data-plane restart or a lease re-acquisition, as asserted (the fault table in docs/faults.md).
const RESTART_BOUND_MS: u64 = 250;

impl Pinger {
    fn start(c: &Cluster, from: usize, to: usize, count: u32) -> Self {
        let dst = c.hosts[to].container_ip().to_string();
        let child = c.hosts[from]
            .container()
            .command("ping")
            .args([
                "-n",
                "-i",
                "0.01",
                "-W",
                "1",
                "-c",
                &count.to_string(),
                &dst,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child: Proc(Some(child)),
            count,
            started: Instant::now(),
        }
    }

    /// Waits for ping to end; returns (replies received, longest run of lost replies).
    fn finish(self) -> (u32, u32) {
        let out = self.child.take().wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut got = vec![false; self.count as usize + 1];
        for line in text.lines().filter(|l| l.contains(" bytes from ")) {
            if let Some(seq) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))
                .and_then(|s| s.parse::<usize>().ok())
            {
                if seq < got.len() {
                    got[seq] = true;
                }
            }
        }
        let (mut longest, mut run) = (0, 0);
        for ok in &got[1..] {
            if *ok {
                run = 0;
            } else {
                run += 1;
                longest = longest.max(run);
            }
        }
        (got[1..].iter().filter(|g| **g).count() as u32, longest)
    }
}

struct Measured {
    fault: &'static str,
    gap_ms: u64,
    lost: u32,
    sent: u32,
}

/// Runs `fault` 1 s into a `secs`-second ping A → B and measures the interruption.
fn measure(
    c: &mut Cluster,
    fault: &'static str,
    secs: u32,
    inject: impl FnOnce(&mut Cluster),
) -> Measured {
    let count = secs * 1000 / PING_INTERVAL_MS as u32;
    let p = Pinger::start(c, 0, 1, count);
    std::thread::sleep(SEC);
    inject(c);
    // Let ping run out its count.
    let rest = Duration::from_millis(u64::from(count) * PING_INTERVAL_MS + 1500)
        .saturating_sub(p.started.elapsed());
    std::thread::sleep(rest);
    let (received, longest) = p.finish();
    let m = Measured {
        fault,
        gap_ms: u64::from(longest) * PING_INTERVAL_MS,
        lost: count - received,
        sent: count,
    };
    eprintln!(
        "fault: {:<45} longest interruption {:>5} ms; lost {}/{} pings",
        m.fault, m.gap_ms, m.lost, m.sent
    );
    m
}

#[test]
fn forwarding_interruptions_under_faults() {
    let Some(mut c) = cluster(&[]) else { return };
    let keys = [lease_key(&c, 0), lease_key(&c, 1)];
    let values: Vec<Option<String>> = keys.iter().map(|k| c.etcd.get(k).unwrap()).collect();
    let mut results = Vec::new();

    results.push(measure(&mut c, "none (baseline)", 2, |_| {}));
    results.push(measure(
        &mut c,
        "flanneld A kill -9, restarted 1 s later",
        4,
        |c| {
            c.hosts[0].flanneld.as_mut().unwrap().kill9();
            std::thread::sleep(SEC);
            c.start_flanneld(0).unwrap();
        },
    ));
    results.push(measure(
        &mut c,
        "flanneld B kill -9, restarted 1 s later",
        4,
        |c| {
            c.hosts[1].flanneld.as_mut().unwrap().kill9();
            std::thread::sleep(SEC);
            c.start_flanneld(1).unwrap();
        },
    ));
    for h in &c.hosts {
        h.flanneld
            .as_ref()
            .unwrap()
            .wait_log("route table published", SEC * 20);
    }
    // A restarted flanneld keeps its subnet (same key and value) on a fresh etcd lease.
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(c.etcd.get(k).unwrap(), values[i], "{k}");
    }
    let leases: Vec<i64> = keys.iter().map(|k| c.etcd.lease_of(k).unwrap()).collect();
    results.push(measure(
        &mut c,
        "etcd stopped, restarted 1 s later",
        4,
        |c| {
            c.etcd.stop();
            std::thread::sleep(SEC);
            c.etcd.launch().unwrap();
        },
    ));
    // Across the etcd restart the etcd leases themselves survive.
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(c.etcd.get(k).unwrap(), values[i], "{k}");
        assert_eq!(
            c.etcd.lease_of(k).unwrap(),
            leases[i],
            "{k}: same etcd lease"
        );
    }
    results.push(measure(
        &mut c,
        "data plane B kill -9, restarted at once",
        4,
        |c| {
            c.hosts[1].dataplane.as_mut().unwrap().kill9();
            c.start_dataplane(1).unwrap();
        },
    ));
    // The data plane restart leaves the leases alone.
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            c.etcd.lease_of(k).unwrap(),
            leases[i],
            "{k}: same etcd lease"
        );
    }
    let key_b = keys[1].clone();
    results.push(measure(
        &mut c,
        "B's lease deleted by hand (re-acquired)",
        4,
        move |c| {
            c.etcd.ctl(&["del", &key_b]).unwrap();
        },
    ));
    // B re-acquired the same subnet with the same value (a new etcd lease).
    let back = wait_for(SEC * 10, || c.etcd.get(&keys[1]).ok().flatten());
    assert_eq!(back, values[1], "B re-acquired the same subnet");
    assert_eq!(c.etcd.get(&keys[0]).unwrap(), values[0]);
    // A re-learns B's re-created lease through its watch; then every ping gets through.
    c.wait_reachable(0, 1, SEC * 10)
        .unwrap_or_else(|e| panic!("{e:#}\n{}{}", c.hosts[0].logs(), c.hosts[1].logs()));
    c.ping(0, 1, 3).unwrap();
    c.ping(1, 0, 3).unwrap();

    eprintln!("\n| fault | longest interruption | pings lost |\n|---|---|---|");
    for m in &results {
        eprintln!("| {} | {} ms | {}/{} |", m.fault, m.gap_ms, m.lost, m.sent);
    }
    // The fault table in docs/faults.md quotes these bounds ("asserted"): no interruption where the
    // design promises none (two lost pings in a row allowed for a loaded CI machine); a
    // restart or re-acquisition within a quarter second (measured here: 10-40 ms).
    for m in &results {
        let bound = match m.fault {
            f if f.starts_with("data plane") => RESTART_BOUND_MS,
            f if f.starts_with("B's lease") => RESTART_BOUND_MS,
            _ => NO_INTERRUPTION_BOUND_MS,
        };
        assert!(
            m.gap_ms <= bound,
            "{}: interrupted {} ms (bound {bound} ms)\n{}{}",
            m.fault,
            m.gap_ms,
            c.hosts[0].logs(),
            c.hosts[1].logs()
        );
    }
}

/// etcd unreachable from host B for longer than B's lease TTL (B's packets to etcd dropped in
/// its namespace; etcd itself keeps running, so the lease really expires): B's key disappears
/// from etcd, and once etcd is reachable again B re-acquires the same subnet with the same value
/// (the subnet is still free), A re-learns it, and traffic flows both ways. Forwarding between
/// A and B never depended on etcd: the data planes kept their tables while it was away.
#[test]
fn etcd_unreachable_longer_than_the_lease_ttl_reacquires_the_same_subnet() {
    let Some(mut opts) = ClusterOpts::for_test() else {
        return;
    };
    opts.flanneld_args = vec!["--subnet-lease-ttl=5".into()];
    let mut c = Cluster::new(opts).expect("build the testbed");
    c.add_host().unwrap();
    c.add_host().unwrap();
    c.wait_reachable(0, 1, SEC * 10)
        .unwrap_or_else(|e| panic!("{e:#}\n{}{}", c.hosts[0].logs(), c.hosts[1].logs()));
    let key_b = lease_key(&c, 1);
    let value_b = c.etcd.get(&key_b).unwrap();
    assert!(value_b.is_some());
    let port = c
        .etcd
        .endpoint()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let cut = [
        "-w",
        "-I",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        "198.18.0.254",
        "--dport",
        &port,
        "-j",
        "DROP",
    ];
    c.hosts[1].ns.exec("iptables", &cut).unwrap();
    // The lease (TTL 5 s) expires in etcd while B cannot renew it.
    let gone = wait_for(SEC * 15, || {
        c.etcd.get(&key_b).unwrap().is_none().then_some(())
    });
    assert!(
        gone.is_some(),
        "B's lease did not expire while etcd was unreachable"
    );
    // Forwarding A ↔ B does not need etcd: B's data plane still has its table, A's too until its
    // watch sees the deletion.
    let uncut: Vec<&str> = cut
        .iter()
        .map(|w| if *w == "-I" { "-D" } else { *w })
        .collect();
    c.hosts[1].ns.exec("iptables", &uncut).unwrap();
    let back = wait_for(SEC * 30, || c.etcd.get(&key_b).unwrap());
    assert_eq!(
        back,
        value_b,
        "B re-acquired another subnet or value\n{}",
        c.hosts[1].logs()
    );
    let env_subnet =
        flannel_shared::subnet_env::previous_subnet(&c.hosts[1].subnet_file()).unwrap();
    assert_eq!(
        format!("{PREFIX}/subnets/{}", env_subnet.to_key()),
        key_b,
        "subnet.env names the same subnet"
    );
    c.wait_reachable(0, 1, SEC * 10)
        .unwrap_or_else(|e| panic!("{e:#}\n{}{}", c.hosts[0].logs(), c.hosts[1].logs()));
    c.ping(0, 1, 3).unwrap();
    c.ping(1, 0, 3).unwrap();
}

/// Host B's underlay address changes (renumbered: the old address removed, a new one added):
/// B's flanneld notices within its 5 s check and rewrites its lease's PublicIP (same key, same
/// etcd lease), A follows through its watch, and traffic flows both ways again.
#[test]
fn underlay_address_change_updates_the_leases_public_ip() {
    let Some(c) = cluster(&[]) else { return };
    let key_b = lease_key(&c, 1);
    let lease_b = c.etcd.lease_of(&key_b).unwrap();
    let ns = &c.hosts[1].ns;
    // Old address removed first (removing a primary address also removes the secondaries of
    // its subnet), then the new one added: renumbered, as by DHCP.
    let old = format!("{}/24", c.hosts[1].underlay_ip);
    ns.ip(&["addr", "del", &old, "dev", "eth0"]).unwrap();
    ns.ip(&["addr", "add", "198.18.0.12/24", "dev", "eth0"])
        .unwrap();
    let want = r#"{"PublicIP":"198.18.0.12","PublicIPv6":null}"#;
    let updated = wait_for(SEC * 15, || {
        (c.etcd.get(&key_b).unwrap().as_deref() == Some(want)).then_some(())
    });
    assert!(
        updated.is_some(),
        "lease value {:?}\n{}",
        c.etcd.get(&key_b).unwrap(),
        c.hosts[1].logs()
    );
    assert_eq!(c.etcd.lease_of(&key_b).unwrap(), lease_b, "same etcd lease");
    c.hosts[1]
        .flanneld
        .as_ref()
        .unwrap()
        .wait_log("our lease now advertises the new one", SEC * 5);
    c.wait_reachable(0, 1, SEC * 10)
        .unwrap_or_else(|e| panic!("{e:#}\n{}{}", c.hosts[0].logs(), c.hosts[1].logs()));
    c.ping(0, 1, 3).unwrap();
    c.ping(1, 0, 3).unwrap();
}

/// Control-plane faults under traffic (`ping -i 0.01` A → B across each): the network config
/// changed in etcd and restored (flanneld reports it and keeps its config), SIGHUP to both of
/// B's daemons (ignored), and B's underlay address renumbered (the lease follows; the gap is
/// the time until A's table has B's new address: B's 5 s check plus A's watch). The first two
/// must not interrupt forwarding at all (NO_INTERRUPTION_BOUND_MS); the renumbering within
/// RENUMBER_BOUND_MS (the 5 s check, a reconnect to etcd, A's watch; the fault table in docs/faults.md).
/// An underlay renumbering, as asserted (the fault table in docs/faults.md).
const RENUMBER_BOUND_MS: u64 = 10_000;

#[test]
fn control_plane_faults_under_traffic() {
    let Some(mut c) = cluster(&[]) else { return };
    let mut results = Vec::new();
    results.push(measure(
        &mut c,
        "network config changed in etcd, restored 1 s later",
        3,
        |c| {
            c.etcd
                .put_config(PREFIX, r#"{"Network":"10.2.0.0/16"}"#)
                .unwrap();
            std::thread::sleep(SEC);
            c.etcd
                .put_config(PREFIX, r#"{"Network":"10.1.0.0/16"}"#)
                .unwrap();
        },
    ));
    results.push(measure(
        &mut c,
        "SIGHUP to B's flanneld and data plane",
        3,
        |c| {
            use flannel_perf::testbed::process::Signal;
            c.hosts[1].flanneld.as_ref().unwrap().signal(Signal::SIGHUP);
            c.hosts[1]
                .dataplane
                .as_ref()
                .unwrap()
                .signal(Signal::SIGHUP);
        },
    ));
    let h = &mut c.hosts[1];
    for d in [h.flanneld.as_mut().unwrap(), h.dataplane.as_mut().unwrap()] {
        d.wait_log("SIGHUP: ignored", SEC * 5);
        assert!(d.is_running(), "SIGHUP stopped it:\n{}", d.whole_log());
    }
    let old = format!("{}/24", c.hosts[1].underlay_ip);
    results.push(measure(
        &mut c,
        "B's underlay address renumbered",
        10,
        move |c| {
            let ns = &c.hosts[1].ns;
            ns.ip(&["addr", "del", &old, "dev", "eth0"]).unwrap();
            ns.ip(&["addr", "add", "198.18.0.13/24", "dev", "eth0"])
                .unwrap();
        },
    ));
    eprintln!("\n| fault | longest interruption | pings lost |\n|---|---|---|");
    for m in &results {
        eprintln!("| {} | {} ms | {}/{} |", m.fault, m.gap_ms, m.lost, m.sent);
    }
    for m in &results {
        let bound = if m.fault.contains("renumbered") {
            RENUMBER_BOUND_MS
        } else {
            NO_INTERRUPTION_BOUND_MS
        };
        assert!(
            m.gap_ms <= bound,
            "{}: interrupted {} ms (bound {bound} ms)\n{}{}",
            m.fault,
            m.gap_ms,
            c.hosts[0].logs(),
            c.hosts[1].logs()
        );
    }
    // Both daemons of B still run (SIGHUP), and both ways work.
    c.ping(0, 1, 3).unwrap();
    c.ping(1, 0, 3).unwrap();
}

/// One etcd write of the churn: a fake host's lease put (`Some(public IP)`) or deleted (`None`).
type Change = (flannel_shared::Ipv4Net, Option<Ipv4Addr>);

/// What a churn generator did: changes written, over how long, and which fake leases it left.
#[derive(Debug)]
struct ChurnDone {
    changes: u64,
    elapsed: Duration,
    live: std::collections::BTreeMap<flannel_shared::Ipv4Net, Ipv4Addr>,
}

impl ChurnDone {
    fn per_minute(&self) -> f64 {
        self.changes as f64 * 60.0 / self.elapsed.as_secs_f64()
    }
}

/// Lease churn on `CHURN_PERIOD` ticks, from a thread inside the switch namespace (where etcd
/// listens) through a real etcd client: fake hosts' leases put and deleted, one etcd write per
/// change. Stopped (and joined) on [`Churn::stop`] or on drop: declare it after the cluster.
struct Churn {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<anyhow::Result<ChurnDone>>>,
}

/// 1,200 changes per minute: the issue's 1,000 per minute with room for slow etcd writes.
const CHURN_PERIOD: Duration = Duration::from_millis(50);

impl Churn {
    /// Starts churning over `pool` (subnets nobody holds): first every one is put (fake host
    /// 198.18.0.100 + its index), then every one deleted, again and again.
    fn start(c: &Cluster, pool: Vec<flannel_shared::Ipv4Net>) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let endpoint = c.etcd.endpoint();
        let flag = stop.clone();
        let handle = c.underlay.switch.spawn_thread(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut client = etcd_client::Client::connect([endpoint.as_str()], None).await?;
                let prefix = flannel_shared::lease::subnets_prefix(PREFIX);
                let mut live = std::collections::BTreeMap::new();
                let mut tick = tokio::time::interval(CHURN_PERIOD);
                let t0 = Instant::now();
                let mut changes = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let i = changes as usize % (2 * pool.len());
                    let (subnet, ip): Change = if i < pool.len() {
                        (pool[i], Some(Ipv4Addr::new(198, 18, 0, 100 + i as u8)))
                    } else {
                        (pool[i - pool.len()], None)
                    };
                    let key = format!("{prefix}{}", subnet.to_key());
                    let write = async {
                        match ip {
                            Some(ip) => {
                                let value = flannel_shared::lease::LeaseAttrs::udp(ip).to_json();
                                client.put(key.as_str(), value, None).await.map(|_| ())
                            }
                            None => client.delete(key.as_str(), None).await.map(|_| ()),
                        }
                    };
                    tokio::time::timeout(SEC * 2, write)
                        .await
                        .map_err(|_| anyhow::anyhow!("etcd write of {key} took over 2 s"))??;
                    match ip {
                        Some(ip) => live.insert(subnet, ip),
                        None => live.remove(&subnet),
                    };
                    changes += 1;
                }
                Ok::<_, anyhow::Error>(ChurnDone {
                    changes,
                    elapsed: t0.elapsed(),
                    live,
                })
            })
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> ChurnDone {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let h = self.handle.take().expect("running");
        flannel_perf::testbed::join(h).expect("lease churn")
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One `iperf3 -c -t SECS -J` TCP run container `from` → container `to` (server `-s -1` in
/// `to`'s container, killed on failure); the receiver's Gbit/s.
fn iperf_tcp(c: &Cluster, from: usize, to: usize, secs: u32) -> f64 {
    let server = Proc(Some(
        c.hosts[to]
            .container()
            .command("iperf3")
            .args(["-s", "-1", "-p", "5201"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let pid = server.0.as_ref().unwrap().id();
    // LISTEN (state 0A) on port 5201 (0x1451) in the server's namespace.
    let up = wait_for(SEC * 5, || {
        ["tcp", "tcp6"]
            .iter()
            .any(|f| {
                std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).is_ok_and(|t| {
                    t.lines().any(|l| {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        w.len() > 3 && w[1].ends_with(":1451") && w[3] == "0A"
                    })
                })
            })
            .then_some(())
    });
    assert!(up.is_some(), "iperf3 -s did not listen");
    let out = c.hosts[from]
        .container()
        .command("iperf3")
        .args(["-c", &c.hosts[to].container_ip().to_string(), "-p", "5201"])
        .args(["-t", &secs.to_string(), "-J", "--connect-timeout", "3000"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    drop(server);
    let json = String::from_utf8_lossy(&out.stdout);
    let r = flannel_perf::harness::iperf::parse_tcp(&json)
        .unwrap_or_else(|e| panic!("iperf3 TCP: {e:#}: {json}"));
    assert!(
        out.status.success() && r.bytes > 0 && r.seconds >= f64::from(secs) * 0.9,
        "the transfer did not complete: {r:?}"
    );
    r.gbit_per_s()
}

/// Every `drop_*` counter of a data plane.
fn drops(stats: &StatsReader) -> Vec<(String, u64)> {
    stats
        .names()
        .iter()
        .filter(|n| n.starts_with("drop_"))
        .map(|n| (n.clone(), stats.total(n)))
        .collect()
}

/// The fake hosts' routes (subnets in `pool`) in host `i`'s published route table.
fn fake_routes(
    c: &Cluster,
    i: usize,
    pool: &[flannel_shared::Ipv4Net],
) -> std::collections::BTreeMap<flannel_shared::Ipv4Net, Ipv4Addr> {
    let mut r =
        flannel_shared::route_table::RouteTableReader::open(&c.hosts[i].route_table()).unwrap();
    r.snapshot()
        .unwrap()
        .routes()
        .filter(|r| pool.contains(&r.subnet))
        .map(|r| (r.subnet, r.public_ip))
        .collect()
}

/// The `drop_*` counters that moved between two readings of both hosts ([`drops`]), as
/// `host N name: before → after`.
fn moved(before: &[Vec<(String, u64)>], after: &[Vec<(String, u64)>]) -> Vec<String> {
    let mut out = Vec::new();
    for (h, (b, a)) in before.iter().zip(after).enumerate() {
        for (x, y) in b.iter().zip(a) {
            if x.1 != y.1 {
                out.push(format!("host {} {}: {} → {}", h + 1, x.0, x.1, y.1));
            }
        }
    }
    out
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// Lease churn among *other* hosts must not disturb two unaffected ones. A TCP transfer
/// container A → container B (iperf3, 4 s) runs `ROUNDS` times without churn and `ROUNDS`
/// times while fake hosts' leases (20 subnets nobody holds, PublicIP 198.18.0.100–119) are
/// put and deleted in etcd at ≥ 1,000 changes per minute (one write every 50 ms through an
/// etcd client, alternating baseline and churn runs so drift hits both alike). Asserted: the
/// achieved rate over each churn run is ≥ 1,000/min; every churn transfer completes; neither
/// data plane's `drop_*` counters move during a churn run; A's route table generation grows
/// by at least half the changes written (each change reached the table; a watch response may
/// carry more than one event), and after each churn run both tables hold exactly the fake
/// leases etcd holds (then deleted, and gone from both tables); and "within the noise": the
/// median churn throughput is ≥ 0.7 × the median baseline throughput (docs/faults.md's measured
/// run-to-run noise on this 2-vCPU VM is ±30 %).
#[test]
fn lease_churn_1000_per_minute_leaves_a_tcp_transfer_alone() {
    const ROUNDS: usize = 3;
    const SECS: u32 = 4;
    const NOISE_FLOOR: f64 = 0.7;
    let Some(c) = cluster(&[]) else { return };
    // Subnets 10.1.200.0/24 … on, skipping A's and B's.
    let held: Vec<flannel_shared::Ipv4Net> = (0..2)
        .map(|i| {
            let (gw, len) = c.hosts[i].subnet.unwrap();
            flannel_shared::Ipv4Net::containing(gw, len).unwrap()
        })
        .collect();
    let pool: Vec<flannel_shared::Ipv4Net> = (200..=255u8)
        .map(|n| flannel_shared::Ipv4Net::new(Ipv4Addr::new(10, 1, n, 0), 24).unwrap())
        .filter(|s| !held.contains(s))
        .take(20)
        .collect();
    let stats: Vec<StatsReader> = (0..2)
        .map(|i| StatsReader::open(&c.hosts[i].stats_file()).unwrap())
        .collect();
    let table_a =
        flannel_shared::route_table::RouteTableReader::open(&c.hosts[0].route_table()).unwrap();
    // The kernel would send its own IPv6 packets into flannel0 (router solicitations, MLD
    // reports), each counted as drop_tun_malformed; the data plane turns IPv6 off on the device
    // before bringing it up, so any drop counted below is a real one.
    for (h, s) in c.hosts.iter().zip(&stats) {
        let off = text(h.ns.exec("cat", &["/proc/sys/net/ipv6/conf/flannel0/disable_ipv6"]));
        assert_eq!(
            off.trim(),
            "1",
            "host {}: IPv6 still on on flannel0",
            h.index
        );
        assert_eq!(
            s.total("drop_tun_malformed"),
            0,
            "host {}: packets the kernel sent into flannel0 were dropped",
            h.index
        );
    }
    let (mut baseline, mut churned) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let before: Vec<_> = stats.iter().map(drops).collect();
        let gbit = iperf_tcp(&c, 0, 1, SECS);
        let after: Vec<_> = stats.iter().map(drops).collect();
        eprintln!(
            "round {round}: baseline {gbit:.2} Gbit/s; drops moved: {:?}",
            moved(&before, &after)
        );
        baseline.push(gbit);

        let gen0 = table_a.generation();
        let before: Vec<_> = stats.iter().map(drops).collect();
        let churn = Churn::start(&c, pool.clone());
        std::thread::sleep(SEC / 2);
        let gbit = iperf_tcp(&c, 0, 1, SECS);
        let done = churn.stop();
        let after: Vec<_> = stats.iter().map(drops).collect();
        let generations = table_a.generation() - gen0;
        eprintln!(
            "round {round}: churn {gbit:.2} Gbit/s; {} lease changes in {:.2?} = {:.0}/min; A's \
             table generation +{generations}",
            done.changes,
            done.elapsed,
            done.per_minute()
        );
        churned.push(gbit);
        assert!(
            done.per_minute() >= 1000.0,
            "churn reached only {:.0} changes/min",
            done.per_minute()
        );
        let moved = moved(&before, &after);
        assert!(
            moved.is_empty(),
            "a data plane dropped during the churn: {moved:?}\n{}{}",
            c.hosts[0].logs(),
            c.hosts[1].logs()
        );
        assert!(
            generations >= done.changes / 2,
            "{} changes written, A's table generation only +{generations}",
            done.changes
        );
        // Both tables converge to exactly the fake leases etcd holds.
        let prefix = flannel_shared::lease::subnets_prefix(PREFIX);
        let in_etcd: std::collections::BTreeMap<_, _> = c
            .etcd
            .get_prefix(&prefix)
            .unwrap()
            .into_iter()
            .filter_map(|(k, v)| {
                let s = flannel_shared::Ipv4Net::from_key(k.strip_prefix(&prefix)?).ok()?;
                pool.contains(&s).then_some((s, v))
            })
            .collect();
        let want: std::collections::BTreeMap<_, _> = done
            .live
            .iter()
            .map(|(s, ip)| (*s, flannel_shared::lease::LeaseAttrs::udp(*ip).to_json()))
            .collect();
        assert_eq!(in_etcd, want, "etcd holds the fake leases last written");
        for h in 0..2 {
            let got = wait_for(SEC * 5, || {
                let r = fake_routes(&c, h, &pool);
                (r == done.live).then_some(())
            });
            assert!(
                got.is_some(),
                "host {}'s table {:?}, etcd {:?}",
                h + 1,
                fake_routes(&c, h, &pool),
                done.live
            );
        }
        for s in done.live.keys() {
            c.etcd
                .ctl(&["del", &format!("{prefix}{}", s.to_key())])
                .unwrap();
        }
        for h in 0..2 {
            let gone = wait_for(SEC * 5, || {
                fake_routes(&c, h, &pool).is_empty().then_some(())
            });
            assert!(gone.is_some(), "host {}'s table kept fake leases", h + 1);
        }
    }
    let (b, ch) = (median(&baseline), median(&churned));
    eprintln!(
        "lease churn: baseline {baseline:.2?} Gbit/s (median {b:.2}), churn {churned:.2?} \
         (median {ch:.2}): {:.2}×",
        ch / b
    );
    assert!(
        ch >= NOISE_FLOOR * b,
        "TCP under lease churn: median {ch:.2} Gbit/s < {NOISE_FLOOR} × baseline median {b:.2}"
    );
    // A and B still reach each other, every packet.
    c.ping(0, 1, 3).unwrap();
    c.ping(1, 0, 3).unwrap();
}
