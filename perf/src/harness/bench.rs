//! The measuring part of the harness (I/O): one testbed, six variants side by side, N repeats.
//!
//! # Testbed and fairness
//!
//! One [`Cluster`] with two hosts (real etcd, flanneld, flannel-dataplane, a docker0-like bridge
//! and one container each), underlay MTU 1500, built once per run. Per repeat, in this order:
//!
//! 1. **ours**: flannel-dataplane restarted on both hosts with the default flags;
//! 2. **ours --no-offload**: restarted with `--no-offload` (recorded as unavailable when the
//!    binary's `--help` does not list the flag);
//! 3. **ours --no-io-uring**: restarted with `--no-io-uring`;
//! 4. **ours --steering=flow**: restarted with `--steering=flow` (the flow-hash steering that
//!    CPU-local steering replaced, for comparison);
//! 5. **kernel VXLAN**: data planes stopped (flannel0 and its route go away with them), a
//!    `vxlan0` (id 42, dstport 4789, local/remote = the hosts' eth0) in both host namespaces over
//!    the same underlay, MTU underlay − 50, a transit /24 (10.254.42.0/24) on it and a route to
//!    the peer's flannel subnet via the peer's transit address: the SAME containers and bridges
//!    as ours, with vxlan0 in place of flannel0 (the way flannel's own vxlan backend routes).
//!    The container, its veth and cbr0 get the VXLAN MTU for this variant and their flannel MTU
//!    back afterwards; vxlan0 is deleted. Everything lives in the host namespaces, so it also
//!    dies with them;
//! 6. **bare underlay**: data planes stopped, host namespace to host namespace on 198.18.0.x.
//!
//! flanneld, etcd, namespaces and containers stay up for the whole run; only flannel-dataplane
//! is restarted between the ours variants, and every ours variant (also the first) starts from
//! a fresh restart. Data always flows host 1 → host 2 (iperf3 client in host 1's container,
//! server in host 2's; `iperf3 -s -1`, stopped by PID if it outlives its test).
//!
//! # Metrics per variant and repeat
//!
//! iperf3 TCP 1 and 4 streams (receiver's Gbit/s), UDP `-b 0` with 64 B and 1400 B payloads
//! (datagrams received per second, loss %), `ping -i 0.01` RTT (median of replies, and ping's
//! average), CPU seconds per GB during the TCP tests (our four processes from `/proc/<pid>/stat`;
//! the whole machine from `/proc/stat`), each CPU's busy share during the TCP tests (the busiest
//! and the least busy CPU go in the table: one CPU near 100 % while another has room means the
//! test is bound by one CPU, not by the machine), and for the 4-stream test each worker's
//! counter deltas from the data planes' stats files.
//!
//! # `--profile`
//!
//! In the first repeat of ours, kernel VXLAN and bare: a TCP 1-stream and a 4-stream test, each under `perf record -a
//! -F 499` (CPU per GB by category, [`profile`]) and a 200-ping run during which
//! `sched:sched_switch` and `raw_syscalls:sys_enter` are recorded for one second (and for a
//! quiet second before it): context switches and syscalls per round trip. The perf.data files
//! are deleted once summarised.
//!
//! # Safety of the testbed
//!
//! Nothing is sent from the root namespace; the underlay is 198.18.0.0/24, overlay addresses
//! exist only in the namespaces, no namespace has a route off the machine. Teardown is the
//! [`Cluster`]'s drop (daemons by PID, then namespaces), also on error, panic and interrupt
//! ([`INTERRUPTED`] is polled while waiting on any child).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use flannel_shared::stats::{StatsReader, WorkerCounters};

use super::metric::{MetricKey, Payload, Streams};
use super::model::{
    file_stamp, iso_utc, Machine, Run, Sample, TcpSample, Testbed, VariantResult, WorkerDeltas,
};
use super::placement::{Placement, Sampler, Watch};
use super::profile::{self, PingProfile, Profile, TcpProfile, PING_EVENTS};
use super::udpsearch::{self, UdpSearch};
use super::{cpu, iperf, markdown, ping, svg};
use crate::report::markdown::num;
use crate::report::summary;
use crate::testbed::cluster::{Cluster, ClusterOpts};
use crate::testbed::netns::Netns;
use crate::testbed::process;
use crate::testbed::{have, is_root, wait_for};

/// Set by the binary's signal thread (Ctrl-C, SIGTERM): the run stops at the next check and
/// the testbed is torn down.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// iperf3 server ports, one after the other per test: a datagram of the test before (still
/// queued somewhere on the path when an unpaced UDP test ends) must not reach the next test's
/// server, which takes the first datagram it gets as its client's UDP hello and, answering the
/// old sender, waits forever.
const IPERF_PORTS: std::ops::Range<u16> = 5201..5300;
/// Transit network on vxlan0 (inside the host namespaces only).
const VXLAN_TRANSIT: &str = "10.254.42";
/// Variants `--profile` profiles (in the first repeat).
const PROFILED: &[&str] = &["ours", "ours-express", "vxlan", "bare"];
/// Pings of the profiled ping run (at 10 ms: about 2 s), and the recorded windows: one quiet
/// before it, one inside it after it settled.
const PROFILE_PINGS: u32 = 200;
const PROFILE_PING_SETTLE: Duration = Duration::from_millis(300);
const PROFILE_WINDOW: Duration = Duration::from_secs(1);
/// Sampling rate of the TCP profile per CPU (perf's default 4 kHz costs the data plane ~⅓ of
/// its throughput on this kind of VM; 499 Hz still gives thousands of samples per test).
const PROFILE_SAMPLE_HZ: &str = "499";
/// Counters whose per-worker deltas are recorded for the 4-stream test.
const WORKER_COUNTERS: &[&str] = &[
    "tun_rx_packets",
    "udp_tx_packets",
    "udp_rx_packets",
    "tun_tx_packets",
];

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub repeats: usize,
    /// Seconds per iperf3 test.
    pub test_seconds: u32,
    pub ping_count: u32,
    /// Where the JSON, Markdown and SVG go.
    pub out_dir: PathBuf,
    /// Where `flanneld` and `flannel-dataplane` are.
    pub bin_dir: PathBuf,
    /// Only these variant ids (all when `None`).
    pub only: Option<Vec<String>>,
    /// `--workers` for flannel-dataplane (default: its own, one per CPU).
    pub workers: Option<usize>,
    /// Also profile ours, ours --express, VXLAN and bare in the first repeat ([`profile`]): needs `perf`.
    pub profile: bool,
    /// Run the paced UDP search ([`udpsearch`]) in the first this many repeats (0: never).
    pub udp_search_repeats: usize,
    /// The command line, for the report.
    pub command: String,
}

/// The files one run wrote.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub svg: PathBuf,
    pub latest_markdown: PathBuf,
    pub latest_svg: PathBuf,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Ours(&'static [&'static str]),
    Vxlan,
    Bare,
}

#[derive(Debug, Clone, Copy)]
struct VariantDef {
    id: &'static str,
    label: &'static str,
    kind: Kind,
    description: &'static str,
}

/// The variants, in measuring order.
const VARIANTS: &[VariantDef] = &[
    VariantDef {
        id: "ours",
        label: "ours",
        kind: Kind::Ours(&[]),
        description: "flanneld + flannel-dataplane, default flags: container → cbr0 → flannel0 → UDP 8285 over eth0 → peer's flannel0 → cbr0 → container.",
    },
    VariantDef {
        id: "ours-express",
        label: "ours --express",
        kind: Kind::Ours(&["--express"]),
        description: "as ours, flannel-dataplane restarted with --express: flannel's encapsulation in the kernel (TC-BPF on flannel0's egress and eth0's ingress, delivery straight into the container's veth); same wire format.",
    },
    VariantDef {
        id: "ours-no-offload",
        label: "ours --no-offload",
        kind: Kind::Ours(&["--no-offload"]),
        description: "as ours, flannel-dataplane restarted with --no-offload (no TUN offloads, GSO or GRO).",
    },
    VariantDef {
        id: "ours-no-io-uring",
        label: "ours --no-io-uring",
        kind: Kind::Ours(&["--no-io-uring"]),
        description: "as ours, flannel-dataplane restarted with --no-io-uring (poll + recvmmsg/sendmmsg fallback).",
    },
    VariantDef {
        id: "ours-tun-readiness",
        label: "ours --tun-reads=readiness",
        kind: Kind::Ours(&["--tun-reads=readiness"]),
        description: "as ours, flannel-dataplane restarted with --tun-reads=readiness (read(2) of the TUN queue after a multishot poll instead of a multishot READ through the ring).",
    },
    VariantDef {
        id: "ours-flow-steering",
        label: "ours --steering=flow",
        kind: Kind::Ours(&["--steering=flow"]),
        description: "as ours, flannel-dataplane restarted with --steering=flow (workers chosen by flow hash only, not by the CPU a packet is handled on).",
    },
    VariantDef {
        id: "vxlan",
        label: "kernel VXLAN",
        kind: Kind::Vxlan,
        description: "the same containers and bridges, routed by the hosts over a kernel vxlan0 instead of flannel0 (`ip link add vxlan0 type vxlan id 42 dstport 4789 local 198.18.0.X remote 198.18.0.Y dev eth0`, MTU underlay − 50, transit 10.254.42.0/24, route to the peer's /24 via the peer's transit address); container, veth and cbr0 MTU lowered to the VXLAN MTU during this variant; data planes stopped.",
    },
    VariantDef {
        id: "bare",
        label: "bare underlay",
        kind: Kind::Bare,
        description: "host namespace to host namespace on 198.18.0.x (veth → switch bridge → veth), no overlay, no container hop; data planes stopped.",
    },
];

/// Known variant ids (for `--only`).
pub fn variant_ids() -> Vec<&'static str> {
    VARIANTS.iter().map(|v| v.id).collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Checks what the run needs before building anything.
pub fn preflight(bin_dir: &Path, profile: bool) -> Result<()> {
    if !is_root() {
        bail!("must run as root (network namespaces, TUN devices); try: sudo scripts/perf");
    }
    let mut missing = Vec::new();
    for p in ["ip", "iperf3", "ping", "etcd", "etcdctl"] {
        if !have(p) {
            missing.push(p);
        }
    }
    if !missing.is_empty() {
        bail!(
            "missing programs: {} (scripts/perf installs iperf3 etcd-server etcd-client iproute2 iputils-ping)",
            missing.join(", ")
        );
    }
    if profile && !have("perf") {
        bail!("--profile needs `perf` (Debian: apt-get install linux-perf; scripts/perf --profile installs it)");
    }
    for b in ["flanneld", "flannel-dataplane"] {
        let p = bin_dir.join(b);
        if !p.is_file() {
            bail!(
                "{} not found; build with `cargo build --release --workspace` (scripts/perf does)",
                p.display()
            );
        }
    }
    Ok(())
}

/// Whether `flannel-dataplane --help` lists `flag`.
pub fn dataplane_accepts(bin_dir: &Path, flag: &str) -> Result<bool> {
    let out = Command::new(bin_dir.join("flannel-dataplane"))
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .context("running flannel-dataplane --help")?;
    Ok(help_lists(&String::from_utf8_lossy(&out.stdout), flag))
}

/// Whether a clap `--help` text lists `flag` (as a whole word, not a prefix of a longer flag).
pub fn help_lists(help: &str, flag: &str) -> bool {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == ']')
        .any(|w| w == flag)
}

/// True when the text of `/proc/<pid>/net/tcp` or `tcp6` has a socket listening on `port`.
pub fn listening_on(proc_net_tcp: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    proc_net_tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
    })
}

/// Per-worker deltas of `names` between two snapshots (missing counters count as 0; a counter
/// that went backwards, i.e. a restarted writer, counts from 0).
pub fn counter_deltas(
    before: &[WorkerCounters],
    after: &[WorkerCounters],
    names: &[&str],
) -> BTreeMap<String, Vec<u64>> {
    names
        .iter()
        .map(|&n| {
            let d = after
                .iter()
                .map(|a| {
                    let now = a.get(n).unwrap_or(0);
                    let then = before
                        .iter()
                        .find(|b| b.worker == a.worker)
                        .and_then(|b| b.get(n))
                        .unwrap_or(0);
                    if now >= then {
                        now - then
                    } else {
                        now
                    }
                })
                .collect();
            (n.to_string(), d)
        })
        .collect()
}

/// Who talks to whom in one variant.
struct Endpoints<'a> {
    client: &'a Netns,
    server: &'a Netns,
    target: Ipv4Addr,
}

struct Bench {
    cluster: Cluster,
    opts: Options,
    base_args: Vec<String>,
    clk_tck: f64,
    counter: usize,
    /// iperf3 tests started (picks each one's port from [`IPERF_PORTS`]).
    iperf_tests: u16,
    progress: String,
}

/// Runs everything, writes the outputs and returns the run and the files.
pub fn run(opts: Options) -> Result<(Run, Outputs)> {
    preflight(&opts.bin_dir, opts.profile)?;
    let started = now_secs();
    let mut machine = machine_info();
    // Before the testbed exists: the copies run on a quiet machine.
    eprintln!("measuring the cost of a memcpy of 1 GB (the design's floor)...");
    let copy_cost = super::floor::measure_copy(5);
    let defs: Vec<VariantDef> = VARIANTS
        .iter()
        .copied()
        .filter(|v| {
            opts.only
                .as_ref()
                .map_or(true, |o| o.iter().any(|x| x == v.id))
        })
        .collect();
    if defs.is_empty() {
        bail!("no variant selected; known: {}", variant_ids().join(", "));
    }
    let mut results: Vec<VariantResult> = defs
        .iter()
        .map(|d| VariantResult::new(d.id, d.label, d.description))
        .collect();
    for (d, r) in defs.iter().zip(results.iter_mut()) {
        if let Kind::Ours(flags) = d.kind {
            for f in flags {
                let name = f.split('=').next().unwrap_or(f);
                if !dataplane_accepts(&opts.bin_dir, name)? {
                    r.unavailable = Some(format!("flannel-dataplane does not accept {f}"));
                }
            }
        }
    }

    eprintln!("==> building the testbed (etcd, 2 hosts with flanneld, flannel-dataplane, a container each)");
    let mut copts = ClusterOpts::new(&opts.bin_dir);
    let base_args: Vec<String> = opts
        .workers
        .map(|w| vec![format!("--workers={w}")])
        .unwrap_or_default();
    copts.dataplane_args = base_args.clone();
    let underlay_mtu = copts.underlay_mtu;
    let mut cluster = Cluster::new(copts)?;
    cluster.add_host()?;
    check_interrupt()?;
    cluster.add_host()?;
    check_interrupt()?;
    let testbed = Testbed {
        underlay_mtu,
        ours_mtu: cluster.hosts[0].mtu,
        vxlan_mtu: underlay_mtu - 50,
        workers: opts
            .workers
            .or_else(|| StatsReader::open(&cluster.hosts[0].stats_file()).ok().map(|r| r.workers())),
        notes: vec![
            "One testbed for the whole run: flanneld, etcd, namespaces and containers stay up; between the ours variants only flannel-dataplane is restarted (both hosts), and each ours variant starts from a fresh restart.".into(),
            "Data flows host 1 → host 2: iperf3 client in host 1's container (bare: host namespace), `iperf3 -s -1` in host 2's.".into(),
            "Every repeat runs the variants in turn (ours, then kernel VXLAN, …), so slow phases of the machine hit all of them; the report gives every repeat's figure besides min / median / max.".into(),
            "TCP: iperf3 -J, receiver's Gbit/s (`end.sum_received`); retransmits as the sender counts them (`end.sum_sent.retransmits`, a diagnostic). UDP: `iperf3 -u -b 0 -l 64|1400`, one unpaced sender; rate = datagrams the receiver got per second; loss = datagrams sent (the sender's count, `end.sum_sent.packets`, which also covers datagrams lost after the last one that arrived) that the receiver did not get.".into(),
            search_note(opts.udp_search_repeats.min(opts.repeats)),
            format!("Placement (TCP tests): a sampler thread of the harness reads every {} ms `/proc/<pid>/task/<tid>/stat` (field 39, the CPU a thread last ran on) and `…/schedstat` (ns on a CPU) of both iperf3 processes (`ip netns exec` execs, so the child's PID is iperf3's: the JSON's `comms` show `ip`, then `iperf3`) and every thread of both data planes; each interval's run time is charged to the CPU seen at its end. The sampler itself costs well under 1 % of a CPU.", super::placement::SAMPLE_EVERY.as_millis()),
            "RTT: `ping -i 0.01` container to container (bare: host to host); median of the per-reply RTTs and ping's own average.".into(),
            "our CPU = utime + stime of flanneld and flannel-dataplane on both hosts during each TCP test, per GB received (a lower bound: softirq work is charged to whatever task was running). machine CPU = busy time of all CPUs from /proc/stat per GB (includes iperf3, the kernel, and anything else running on the machine).".into(),
            "Worker spread: deltas of each data-plane worker's counters during the 4-stream test; sender = host 1 (tun_rx_packets), receiver = host 2 (udp_rx_packets).".into(),
        ],
    };
    let mut bench = Bench {
        cluster,
        opts: opts.clone(),
        base_args,
        clk_tck: cpu::clk_tck(),
        counter: 0,
        iperf_tests: 0,
        progress: String::new(),
    };

    let total = opts.repeats * defs.len();
    for rep in 1..=opts.repeats {
        for (vi, d) in defs.iter().enumerate() {
            check_interrupt()?;
            let step = (rep - 1) * defs.len() + vi + 1;
            bench.progress = format!("[{step}/{total}] {}", d.label);
            if let Some(why) = &results[vi].unavailable {
                eprintln!("{}: skipped, unavailable ({why})", bench.progress);
                continue;
            }
            let sample = bench.measure(d, rep)?;
            for e in &sample.errors {
                eprintln!(
                    "{}: ERROR {}",
                    bench.progress,
                    e.lines().next().unwrap_or("")
                );
            }
            results[vi].samples.push(sample);
        }
    }
    bench.stop_dataplanes();
    drop(bench);

    for r in &mut results {
        r.summarize();
    }
    machine.loadavg_end = loadavg();
    let run = Run {
        started_utc: iso_utc(started),
        finished_utc: iso_utc(now_secs()),
        command: opts.command.clone(),
        quick: opts.quick,
        repeats: opts.repeats,
        test_seconds: opts.test_seconds,
        ping_count: opts.ping_count,
        machine,
        copy_cost: Some(copy_cost),
        testbed,
        variants: results,
    };
    let outputs = write_outputs(&run, &opts.out_dir, &file_stamp(started))?;
    Ok((run, outputs))
}

/// The methodology line of the paced UDP search, run in the first `repeats` repeats.
fn search_note(repeats: usize) -> String {
    if repeats == 0 {
        return "Paced UDP search: off (`--udp-search-repeats 0`).".into();
    }
    format!(
        "Paced UDP search, in {}: per payload size, {} probes of `iperf3 -u -b <rate> -l <payload> -t {}` bisecting between {:.0} % and {:.0} % of the unpaced test's received rate; the figure is the highest received rate of a probe with ≤ {} % loss (iperf3 paces in bursts, one per 1 ms timer tick).",
        if repeats == 1 { "the first repeat".to_string() } else { format!("the first {repeats} repeats") },
        udpsearch::PROBES,
        udpsearch::PROBE_SECONDS,
        100.0 * udpsearch::FLOOR_FRACTION,
        100.0 * udpsearch::CEILING_FACTOR,
        udpsearch::CLEAN_LOSS_PCT
    )
}

/// Writes `<stamp>.json`, `<stamp>.md`, `<stamp>.svg` and the `latest.md` / `latest.svg` copies.
pub fn write_outputs(run: &Run, dir: &Path, stamp: &str) -> Result<Outputs> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let o = Outputs {
        json: dir.join(format!("{stamp}.json")),
        markdown: dir.join(format!("{stamp}.md")),
        svg: dir.join(format!("{stamp}.svg")),
        latest_markdown: dir.join("latest.md"),
        latest_svg: dir.join("latest.svg"),
    };
    let chart = svg::render(run);
    let write = |p: &Path, text: &str| {
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
    };
    write(&o.json, &(serde_json::to_string_pretty(run)? + "\n"))?;
    write(&o.markdown, &markdown::render(run, &format!("{stamp}.svg")))?;
    write(&o.svg, &chart)?;
    write(&o.latest_markdown, &markdown::render(run, "latest.svg"))?;
    write(&o.latest_svg, &chart)?;
    Ok(o)
}

impl Bench {
    fn log_path(&mut self, what: &str) -> PathBuf {
        self.counter += 1;
        self.cluster
            .dir()
            .join(format!("{:03}-{what}.log", self.counter))
    }

    /// One repeat of one variant. Measurement errors are recorded in the sample; only an
    /// interrupt is returned as an error.
    fn measure(&mut self, d: &VariantDef, repeat: usize) -> Result<Sample> {
        let mut sample = Sample {
            repeat,
            ..Default::default()
        };
        eprintln!("{}: setting up", self.progress);
        let setup = match d.kind {
            Kind::Ours(flags) => self.start_ours(flags),
            Kind::Vxlan => {
                self.stop_dataplanes();
                self.setup_vxlan()
            }
            Kind::Bare => {
                self.stop_dataplanes();
                Ok(())
            }
        };
        let setup = setup.and_then(|()| self.wait_path(d.kind));
        if let Err(e) = setup {
            check_interrupt()?;
            sample.errors.push(format!("setup: {e:#}"));
        } else {
            let r = self.measure_all(d.kind, &mut sample);
            check_interrupt()?;
            if let Err(e) = r {
                sample.errors.push(format!("{e:#}"));
            }
        }
        if self.opts.profile && repeat == 1 && PROFILED.contains(&d.id) && sample.errors.is_empty()
        {
            sample.profile = Some(self.profile(d.kind)?);
        }
        if let Kind::Vxlan = d.kind {
            self.teardown_vxlan();
        }
        Ok(sample)
    }

    fn measure_all(&mut self, kind: Kind, s: &mut Sample) -> Result<()> {
        let ours = matches!(kind, Kind::Ours(_));
        let gb = |bytes: u64| bytes as f64 / 1e9;
        for tcp in Streams::ALL {
            let streams = tcp.count();
            let what = format!(
                "iperf3 TCP {streams} stream{}",
                if streams == 1 { "" } else { "s" }
            );
            eprint!("{}: {what} ... ", self.progress);
            match self.tcp(kind, streams) {
                Ok((t, workers)) => {
                    eprintln!("{:.2} Gbit/s", t.iperf.gbit_per_s());
                    s.metrics
                        .insert(MetricKey::TcpGbps(tcp).into(), t.iperf.gbit_per_s());
                    if let Some(r) = t.iperf.retransmits {
                        s.metrics
                            .insert(MetricKey::TcpRetransmits(tcp).into(), r as f64);
                    }
                    if let Some(c) = t.our_cpu_s.filter(|_| t.iperf.bytes > 0) {
                        s.metrics
                            .insert(MetricKey::OurCpuPerGb(tcp).into(), c / gb(t.iperf.bytes));
                    }
                    if let Some(c) = t.machine_cpu_s.filter(|_| t.iperf.bytes > 0) {
                        s.metrics.insert(
                            MetricKey::MachineCpuPerGb(tcp).into(),
                            c / gb(t.iperf.bytes),
                        );
                    }
                    if let Some(c) = summary::summarize(&t.cpu_busy_pct) {
                        s.metrics
                            .insert(MetricKey::BusiestCpuPct(tcp).into(), c.max);
                        s.metrics
                            .insert(MetricKey::LeastBusyCpuPct(tcp).into(), c.min);
                    }
                    if tcp == Streams::Four && ours {
                        for w in &workers {
                            let (counter, metric) = if w.role == "sender" {
                                ("tun_rx_packets", MetricKey::TxWorkerSpread)
                            } else {
                                ("udp_rx_packets", MetricKey::RxWorkerSpread)
                            };
                            if let Some(r) =
                                w.counters.get(counter).and_then(|c| summary::spread(c))
                            {
                                s.metrics.insert(metric.into(), r);
                            }
                        }
                        s.workers = workers;
                    }
                    s.tcp.push(t);
                }
                Err(e) => {
                    eprintln!("failed");
                    check_interrupt()?;
                    s.errors.push(format!("{what}: {e:#}"));
                }
            }
        }
        for size in Payload::ALL {
            let payload = size.bytes();
            let what = format!("iperf3 UDP {payload} B");
            eprint!("{}: {what} ... ", self.progress);
            let secs = self.opts.test_seconds;
            let before = self.loss_counters(kind);
            let r = self.udp(kind, payload, "0", secs);
            match r {
                Ok(u) => {
                    eprintln!("{:.0} kpps, {:.1}% loss", u.pps / 1e3, u.loss_percent);
                    if let (Some(b), Some(a)) = (before, self.loss_counters(kind)) {
                        let sent = u.sent_packets.unwrap_or(u.packets).max(u.packets);
                        s.udp_loss.push(super::udploss::attribute(
                            u.payload, sent, u.received, &b, &a,
                        ));
                    }
                    s.metrics
                        .insert(MetricKey::UdpKpps(size).into(), u.pps / 1e3);
                    s.metrics
                        .insert(MetricKey::UdpLossPct(size).into(), u.loss_percent);
                    let unpaced = u.pps;
                    s.udp.push(u);
                    if s.repeat <= self.opts.udp_search_repeats {
                        let search = self.udp_search(kind, payload, unpaced, s)?;
                        if let Some(best) = search.max_clean_pps {
                            s.metrics
                                .insert(MetricKey::UdpMaxCleanKpps(size).into(), best / 1e3);
                        }
                        s.udp_search.push(search);
                    }
                }
                Err(e) => {
                    eprintln!("failed");
                    check_interrupt()?;
                    s.errors.push(format!("{what}: {e:#}"));
                }
            }
        }
        eprint!("{}: ping x{} ... ", self.progress, self.opts.ping_count);
        match self.ping(kind) {
            Ok(p) => {
                let median = p.median_ms();
                eprintln!(
                    "median {} ms, avg {} ms, {}/{} replies",
                    median.map_or("-".into(), num),
                    p.avg_ms.map_or("-".into(), num),
                    p.received,
                    p.transmitted
                );
                if let Some(m) = median {
                    s.metrics.insert(MetricKey::RttMedianMs.into(), m);
                }
                if let Some(a) = p.avg_ms {
                    s.metrics.insert(MetricKey::RttAvgMs.into(), a);
                }
                s.ping = Some(p);
            }
            Err(e) => {
                eprintln!("failed");
                check_interrupt()?;
                s.errors.push(format!("ping: {e:#}"));
            }
        }
        Ok(())
    }

    fn endpoints(&self, kind: Kind) -> Endpoints<'_> {
        let (a, b) = (&self.cluster.hosts[0], &self.cluster.hosts[1]);
        match kind {
            Kind::Bare => Endpoints {
                client: &a.ns,
                server: &b.ns,
                target: b.underlay_ip,
            },
            _ => Endpoints {
                client: a.container(),
                server: b.container(),
                target: b.container_ip(),
            },
        }
    }

    /// PIDs of our processes on both hosts.
    fn our_pids(&self) -> Vec<u32> {
        self.cluster
            .hosts
            .iter()
            .flat_map(|h| [h.flanneld.as_ref(), h.dataplane.as_ref()])
            .flatten()
            .filter_map(|d| d.pid())
            .collect()
    }

    fn our_ticks(&self) -> Option<u64> {
        self.our_pids()
            .into_iter()
            .map(cpu::process_ticks)
            .sum::<Option<u64>>()
    }

    fn snapshots(&self) -> Vec<Option<Vec<WorkerCounters>>> {
        self.cluster
            .hosts
            .iter()
            .map(|h| {
                StatsReader::open(&h.stats_file())
                    .ok()
                    .map(|r| r.snapshot())
            })
            .collect()
    }

    fn tcp(&mut self, kind: Kind, streams: u32) -> Result<(TcpSample, Vec<WorkerDeltas>)> {
        let ours = matches!(kind, Kind::Ours(_));
        let p = streams.to_string();
        let ours0 = ours.then(|| self.our_ticks()).flatten();
        let sys0 = cpu::system_ticks();
        let per_cpu0 = cpu::per_cpu_ticks();
        let stats0 = ours.then(|| self.snapshots());
        let secs = self.opts.test_seconds;
        let run = self.iperf_run(kind, &["-P", &p], secs, true);
        let per_cpu1 = cpu::per_cpu_ticks();
        let sys1 = cpu::system_ticks();
        let ours1 = ours.then(|| self.our_ticks()).flatten();
        let stats1 = ours.then(|| self.snapshots());
        let (json, placement) = run?;
        let r = iperf::parse_tcp(&json)?;
        let mut workers = Vec::new();
        if let (Some(before), Some(after)) = (stats0, stats1) {
            for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
                if let (Some(b), Some(a)) = (b, a) {
                    workers.push(WorkerDeltas {
                        host: i + 1,
                        role: if i == 0 { "sender" } else { "receiver" }.into(),
                        counters: counter_deltas(b, a, WORKER_COUNTERS),
                    });
                }
            }
        }
        let tck = self.clk_tck;
        Ok((
            TcpSample {
                iperf: r,
                our_cpu_s: ours0
                    .zip(ours1)
                    .map(|(a, b)| b.saturating_sub(a) as f64 / tck),
                machine_cpu_s: sys0
                    .zip(sys1)
                    .map(|(a, b)| b.busy.saturating_sub(a.busy) as f64 / tck),
                cpu_busy_pct: per_cpu0
                    .zip(per_cpu1)
                    .map(|(a, b)| cpu::busy_percent(&a, &b))
                    .unwrap_or_default(),
                placement,
            },
            workers,
        ))
    }

    /// The counters that say where UDP datagrams from container A to container B were lost
    /// ([`super::udploss`]); `None` for the bare underlay or when one cannot be read.
    fn loss_counters(&self, kind: Kind) -> Option<super::udploss::LossCounters> {
        let dev = match kind {
            Kind::Ours(_) => "flannel0",
            Kind::Vxlan => "vxlan0",
            Kind::Bare => return None,
        };
        let (a, b) = (&self.cluster.hosts[0], &self.cluster.hosts[1]);
        let read = |ns: &Netns, path: &str| -> Option<String> {
            let out = ns.exec("cat", &[path]).ok()?;
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let stat = |ns: &Netns, name: &str| -> Option<u64> {
            read(ns, &format!("/sys/class/net/{dev}/statistics/{name}"))?
                .trim()
                .parse()
                .ok()
        };
        let dataplane_drops = match kind {
            Kind::Ours(_) => {
                let r = flannel_shared::stats::StatsReader::open(&b.stats_file()).ok()?;
                r.names()
                    .iter()
                    .filter(|n| n.starts_with("drop_"))
                    .map(|n| r.total(n))
                    .sum()
            }
            _ => 0,
        };
        Some(super::udploss::LossCounters {
            sender_tunnel_tx_dropped: stat(&a.ns, "tx_dropped")?,
            receiver_host_rcvbuf_errors: super::udploss::snmp_udp_rcvbuf_errors(&read(
                &b.ns,
                "/proc/net/snmp",
            )?)?,
            receiver_dataplane_drops: dataplane_drops,
            receiver_tunnel_rx_dropped: stat(&b.ns, "rx_dropped")?,
            receiver_app_rcvbuf_errors: super::udploss::snmp_udp_rcvbuf_errors(&read(
                b.container(),
                "/proc/net/snmp",
            )?)?,
        })
    }

    /// One UDP test of `payload`-byte datagrams at `bitrate` (`-b`; "0": unpaced) for `secs`.
    fn udp(
        &mut self,
        kind: Kind,
        payload: u32,
        bitrate: &str,
        secs: u32,
    ) -> Result<iperf::UdpResult> {
        let (json, _) = self.iperf_run(
            kind,
            &["-u", "-b", bitrate, "-l", &payload.to_string()],
            secs,
            false,
        )?;
        iperf::parse_udp(&json)
    }

    /// The paced search for the highest rate with ≤ 0.1 % loss ([`udpsearch`]) after an
    /// unpaced test that received `unpaced_pps`. A failed probe ends the search (recorded in
    /// the sample); only an interrupt is an error.
    fn udp_search(
        &mut self,
        kind: Kind,
        payload: u32,
        unpaced_pps: f64,
        s: &mut Sample,
    ) -> Result<UdpSearch> {
        let mut search = UdpSearch::after_unpaced(payload, unpaced_pps);
        eprint!("{}: UDP {payload} B paced search:", self.progress);
        while let Some(rate) = search.next_rate() {
            let bits = udpsearch::bits_per_second(rate, payload).to_string();
            match self.udp(kind, payload, &bits, udpsearch::PROBE_SECONDS) {
                Ok(u) => {
                    eprint!(" {:.1}k→{:.1}%", rate / 1e3, u.loss_percent);
                    search.record(rate, u.pps, u.loss_percent);
                }
                Err(e) => {
                    eprintln!(" failed");
                    check_interrupt()?;
                    s.errors.push(format!(
                        "UDP {payload} B paced probe at {:.1} kpps: {e:#}",
                        rate / 1e3
                    ));
                    return Ok(search);
                }
            }
        }
        eprintln!(
            " → {}",
            search
                .max_clean_pps
                .map_or("no clean rate".into(), |b| format!(
                    "{:.1} kpps clean",
                    b / 1e3
                ))
        );
        Ok(search)
    }

    /// Runs one iperf3 test of the configured length and returns the client's JSON.
    fn iperf(&mut self, kind: Kind, args: &[&str]) -> Result<String> {
        let secs = self.opts.test_seconds;
        self.iperf_run(kind, args, secs, false)
            .map(|(json, _)| json)
    }

    /// Who the placement sampler watches: both iperf3 processes and, for ours, both data planes.
    fn watch_list(&self, client: u32, server: u32) -> Vec<Watch> {
        let mut w = vec![
            Watch {
                pid: client,
                name: "iperf3 client".into(),
                per_thread: false,
            },
            Watch {
                pid: server,
                name: "iperf3 server".into(),
                per_thread: false,
            },
        ];
        for h in &self.cluster.hosts {
            if let Some(pid) = h.dataplane.as_ref().and_then(|d| d.pid()) {
                w.push(Watch {
                    pid,
                    name: format!("h{}", h.index),
                    per_thread: true,
                });
            }
        }
        w
    }

    /// Runs one iperf3 test of `secs` seconds (server in the receiving namespace, client in the
    /// sending one) and returns the client's JSON, and with `sample` where the threads ran
    /// ([`placement`](super::placement)).
    fn iperf_run(
        &mut self,
        kind: Kind,
        args: &[&str],
        secs: u32,
        sample: bool,
    ) -> Result<(String, Option<Placement>)> {
        let server_log = self.log_path("iperf3-server");
        let client_out = self.log_path("iperf3-client");
        let client_err = client_out.with_extension("stderr");
        let secs_arg = secs.to_string();
        let port = IPERF_PORTS.start + self.iperf_tests % IPERF_PORTS.len() as u16;
        self.iperf_tests = self.iperf_tests.wrapping_add(1);
        let port_arg = port.to_string();
        let ep = self.endpoints(kind);
        let target = ep.target.to_string();
        let mut server = ep
            .server
            .command("iperf3")
            .args(["-s", "-1", "-p", &port_arg])
            .stdin(Stdio::null())
            .stdout(File::create(&server_log)?)
            .stderr(File::create(server_log.with_extension("stderr"))?)
            .spawn()
            .context("starting iperf3 -s")?;
        let server_pid = server.id();
        let ready = wait_for(Duration::from_secs(5), || {
            let up = ["tcp", "tcp6"].iter().any(|f| {
                std::fs::read_to_string(format!("/proc/{server_pid}/net/{f}"))
                    .is_ok_and(|t| listening_on(&t, port))
            });
            (up || matches!(server.try_wait(), Ok(Some(_)))).then_some(())
        });
        if ready.is_none() || matches!(server.try_wait(), Ok(Some(_))) {
            process::kill_and_reap(&mut server);
            bail!(
                "iperf3 server did not start listening: {}",
                std::fs::read_to_string(server_log.with_extension("stderr")).unwrap_or_default()
            );
        }
        let client = ep
            .client
            .command("iperf3")
            .args(["-c", &target, "-p", &port_arg, "-t", &secs_arg, "-J"])
            .args(["--connect-timeout", "3000"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&client_out)?)
            .stderr(File::create(&client_err)?)
            .spawn()
            .context("starting iperf3 -c")?;
        let sampler = sample.then(|| Sampler::start(self.watch_list(client.id(), server_pid)));
        let limit = Duration::from_secs(u64::from(secs) + 20);
        let status = process::wait_bounded(client, &INTERRUPTED, limit);
        let placement = sampler.map(Sampler::finish);
        // The server exits by itself after one test (-1); stop it by PID if it does not.
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end && matches!(server.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        process::kill_and_reap(&mut server);
        let status = status?;
        let out = std::fs::read_to_string(&client_out).unwrap_or_default();
        if out.trim().is_empty() {
            bail!(
                "iperf3 client printed nothing ({status}): {}",
                std::fs::read_to_string(&client_err)
                    .unwrap_or_default()
                    .trim()
            );
        }
        Ok((out, placement))
    }

    fn ping(&mut self, kind: Kind) -> Result<ping::PingResult> {
        let (child, out_path) = self.spawn_ping(kind, self.opts.ping_count, "ping")?;
        process::wait_bounded(child, &INTERRUPTED, Duration::from_secs(30))?;
        ping::parse(&std::fs::read_to_string(&out_path)?)
    }

    /// Starts `ping -c count -i 0.01` from the variant's client to its target, stdout to a log
    /// named `what`; returns the child and the log's path.
    fn spawn_ping(&mut self, kind: Kind, count: u32, what: &str) -> Result<(Child, PathBuf)> {
        let out_path = self.log_path(what);
        let ep = self.endpoints(kind);
        let child = ep
            .client
            .command("ping")
            .args(["-c", &count.to_string(), "-i", "0.01", "-W", "2"])
            .arg(ep.target.to_string())
            .stdin(Stdio::null())
            .stdout(File::create(&out_path)?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting ping")?;
        Ok((child, out_path))
    }

    /// `--profile`: a TCP 1-stream and a TCP 4-stream test, each under `perf record -a`, and a
    /// ping run with its context switches and syscalls recorded (see [`profile`]). Failures
    /// are recorded in the profile; only an interrupt is an error.
    fn profile(&mut self, kind: Kind) -> Result<Profile> {
        let mut p = Profile::default();
        for streams in [1usize, 4] {
            eprint!(
                "{}: profile: iperf3 TCP {streams} stream(s) under perf record ... ",
                self.progress
            );
            match self.profile_tcp(kind, streams) {
                Ok(t) => {
                    eprintln!(
                        "{:.2} Gbit/s, busy {} CPU-s/GB",
                        t.gbit_per_s,
                        t.busy_s_per_gb().map_or("-".into(), num)
                    );
                    if streams == 1 {
                        p.tcp1 = Some(t);
                    } else {
                        p.tcp4 = Some(t);
                    }
                }
                Err(e) => {
                    eprintln!("failed");
                    check_interrupt()?;
                    p.errors
                        .push(format!("profile TCP {streams} stream(s): {e:#}"));
                }
            }
        }
        eprint!(
            "{}: profile: ping under perf record (tracepoints) ... ",
            self.progress
        );
        match self.profile_ping(kind) {
            Ok(x) => {
                let get = |k: &str| {
                    x.per_round_trip
                        .get(k)
                        .map_or("-".into(), |v| format!("{v:.1}"))
                };
                eprintln!(
                    "per round trip: {} context switches, data plane {} switches and {} syscalls",
                    get("switches_all"),
                    get("switches_dataplane"),
                    get("syscalls_dataplane")
                );
                p.ping = Some(x);
            }
            Err(e) => {
                eprintln!("failed");
                check_interrupt()?;
                p.errors.push(format!("profile ping: {e:#}"));
            }
        }
        Ok(p)
    }

    fn profile_tcp(&mut self, kind: Kind, streams: usize) -> Result<TcpProfile> {
        let data = self
            .log_path(&format!("perf-record-tcp{streams}"))
            .with_extension("data");
        let log = data.with_extension("log");
        let mut rec = Command::new("perf")
            .args(["record", "-a", "-q", "-F", PROFILE_SAMPLE_HZ, "-o"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting perf record")?;
        // perf opens its per-CPU events before it samples; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let p = streams.to_string();
        let args: &[&str] = if streams > 1 { &["-P", &p] } else { &[] };
        let json = self.iperf(kind, args);
        let wall = started.elapsed().as_secs_f64();
        let stopped = process::sigint(&mut rec).context("SIGINT to perf");
        let status = process::wait_bounded(rec, &INTERRUPTED, Duration::from_secs(60))?;
        stopped?;
        let r = iperf::parse_tcp(&json?)?;
        if !data.is_file() {
            bail!(
                "perf record wrote nothing ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
        let report = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "comm,sym",
                "-t",
                "|",
                "-q",
                "-i",
            ])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .context("running perf report")?;
        let lines = profile::parse_report(&String::from_utf8_lossy(&report.stdout));
        if lines.is_empty() {
            bail!(
                "perf report gave no samples: {}",
                String::from_utf8_lossy(&report.stderr).trim()
            );
        }
        // The recorded span: perf's own header when it has one, else what we timed.
        let header = Command::new("perf")
            .args(["report", "--stdio", "--header-only", "-i"])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .ok()
            .and_then(|o| profile::sample_duration_s(&String::from_utf8_lossy(&o.stdout)));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        // The perf.data of a run is large and only this summary is kept.
        let _ = std::fs::remove_file(&data);
        Ok(TcpProfile::new(
            &lines,
            r.gbit_per_s(),
            r.bytes as f64 / 1e9,
            header.unwrap_or(wall),
            cpus,
        ))
    }

    fn profile_ping(&mut self, kind: Kind) -> Result<PingProfile> {
        let quiet = self.trace_window()?;
        let (ping, out_path) = self.spawn_ping(kind, PROFILE_PINGS, "profile-ping")?;
        std::thread::sleep(PROFILE_PING_SETTLE);
        let during = self.trace_window();
        let status = process::wait_bounded(ping, &INTERRUPTED, Duration::from_secs(30))?;
        let during = during?;
        let p = ping::parse(&std::fs::read_to_string(&out_path)?)?;
        if p.received < u64::from(PROFILE_PINGS) / 2 || during.pings == 0 {
            bail!(
                "ping ({status}): {} of {} replies, {} sent in the window",
                p.received,
                p.transmitted,
                during.pings
            );
        }
        Ok(PingProfile::new(during, quiet))
    }

    /// [`PING_EVENTS`] on every CPU over [`PROFILE_WINDOW`] (`perf record -a`, perf's own
    /// events excluded), counted per path thread group.
    fn trace_window(&mut self) -> Result<profile::WindowCounts> {
        let data = self.log_path("perf-trace").with_extension("data");
        let log = data.with_extension("log");
        let mut args: Vec<String> = vec!["record".into(), "-a".into(), "-q".into()];
        for e in PING_EVENTS {
            args.extend(["-e".into(), e.to_string(), "--exclude-perf".into()]);
        }
        let rec = Command::new("perf")
            .args(&args)
            .arg("-o")
            .arg(&data)
            .args(["--", "sleep", &PROFILE_WINDOW.as_secs_f64().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting perf record")?;
        let status = process::wait_bounded(rec, &INTERRUPTED, Duration::from_secs(30))?;
        let script = Command::new("perf")
            .args(["script", "-F", "comm,event,trace", "-i"])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .context("running perf script")?;
        let _ = std::fs::remove_file(&data);
        let text = String::from_utf8_lossy(&script.stdout);
        if !status.success() || text.trim().is_empty() {
            bail!(
                "perf record of {} ({status}) gave nothing: {}",
                PING_EVENTS.join(", "),
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
        Ok(profile::parse_script(
            &text,
            nix::libc::SYS_sendto,
            PROFILE_WINDOW.as_secs_f64(),
        ))
    }

    /// Waits until one ping crosses the variant's path (ARP, routes, data planes ready).
    fn wait_path(&self, kind: Kind) -> Result<()> {
        let ep = self.endpoints(kind);
        let target = ep.target.to_string();
        let ok = wait_for(Duration::from_secs(15), || {
            if check_interrupt().is_err() {
                return Some(());
            }
            ep.client
                .command("ping")
                .args(["-c", "1", "-W", "1", &target])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()
                .filter(ExitStatus::success)
                .map(|_| ())
        });
        check_interrupt()?;
        if ok.is_none() {
            bail!(
                "no ping reply from {target} within 15 s\n{}{}",
                self.cluster.hosts[0].logs(),
                self.cluster.hosts[1].logs()
            );
        }
        Ok(())
    }

    fn stop_dataplanes(&mut self) {
        for h in &mut self.cluster.hosts {
            if let Some(mut d) = h.dataplane.take() {
                d.stop(Duration::from_secs(5));
            }
        }
    }

    /// Restarts flannel-dataplane on both hosts with the base flags plus `flags`.
    fn start_ours(&mut self, flags: &[&str]) -> Result<()> {
        self.stop_dataplanes();
        let mut args = self.base_args.clone();
        args.extend(flags.iter().map(|f| f.to_string()));
        self.cluster.opts.dataplane_args = args;
        for i in 0..self.cluster.hosts.len() {
            self.cluster.start_dataplane(i)?;
            // The stats file is replaced (rename) by the new process: wait until it is its.
            let h = &self.cluster.hosts[i];
            let pid = h.dataplane.as_ref().and_then(|d| d.pid()).unwrap_or(0);
            let fresh = wait_for(Duration::from_secs(10), || {
                StatsReader::open(&h.stats_file())
                    .ok()
                    .filter(|r| r.pid() == pid)
            });
            if fresh.is_none() {
                bail!(
                    "host {}: stats file {} not written by the new flannel-dataplane (pid {pid})\n{}",
                    h.index,
                    h.stats_file().display(),
                    h.logs()
                );
            }
        }
        Ok(())
    }

    fn set_overlay_mtu(&self, mtu: u32) -> Result<()> {
        let m = mtu.to_string();
        for h in &self.cluster.hosts {
            h.ns.ip(&["link", "set", "c0", "mtu", &m])?;
            h.ns.ip(&["link", "set", "cbr0", "mtu", &m])?;
            h.container().ip(&["link", "set", "eth0", "mtu", &m])?;
        }
        Ok(())
    }

    fn setup_vxlan(&mut self) -> Result<()> {
        let mtu = self.cluster.opts.underlay_mtu - 50;
        let n = self.cluster.hosts.len();
        for i in 0..n {
            let h = &self.cluster.hosts[i];
            let p = &self.cluster.hosts[(i + 1) % n];
            h.ns.ip(&[
                "link",
                "add",
                "vxlan0",
                "type",
                "vxlan",
                "id",
                "42",
                "dstport",
                "4789",
                "local",
                &h.underlay_ip.to_string(),
                "remote",
                &p.underlay_ip.to_string(),
                "dev",
                "eth0",
            ])?;
            h.ns.ip(&["link", "set", "vxlan0", "mtu", &mtu.to_string()])?;
            h.ns.ip(&[
                "addr",
                "add",
                &format!("{VXLAN_TRANSIT}.{}/24", h.index),
                "dev",
                "vxlan0",
            ])?;
            h.ns.ip(&["link", "set", "vxlan0", "up"])?;
            let (gw, len) = p.subnet.ok_or_else(|| anyhow!("peer subnet unknown"))?;
            let net = Ipv4Addr::from(u32::from(gw) - 1);
            h.ns.ip(&[
                "route",
                "add",
                &format!("{net}/{len}"),
                "via",
                &format!("{VXLAN_TRANSIT}.{}", p.index),
                "dev",
                "vxlan0",
            ])?;
        }
        self.set_overlay_mtu(mtu)
    }

    fn teardown_vxlan(&mut self) {
        for h in &self.cluster.hosts {
            let _ = h.ns.ip(&["link", "del", "vxlan0"]);
        }
        let mtu = self.cluster.hosts[0].mtu;
        if let Err(e) = self.set_overlay_mtu(mtu) {
            eprintln!("{}: restoring the overlay MTU: {e:#}", self.progress);
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Kernel, CPUs, git commit (read-only git commands), iperf3 version, load.
pub fn machine_info() -> Machine {
    let git_commit =
        process::stdout_text("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    let git_dirty = process::stdout_text(
        "git",
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .map(|s| !s.is_empty());
    Machine {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default(),
        git_commit,
        git_dirty,
        iperf3: process::stdout_text("iperf3", &["--version"])
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_default(),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
    }
}

/// Prints where the results went.
pub fn print_outputs(o: &Outputs, mut to: impl std::io::Write) -> std::io::Result<()> {
    writeln!(to, "==> results:")?;
    for p in [
        &o.markdown,
        &o.json,
        &o.svg,
        &o.latest_markdown,
        &o.latest_svg,
    ] {
        writeln!(to, "    {}", p.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_listening_socket() {
        // Captured from /proc/<iperf3 -s pid>/net/tcp6 (port 5201 = 0x1451, state 0A = LISTEN).
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000000000000:1451 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0\n";
        assert!(listening_on(tcp6, 5201));
        assert!(!listening_on(tcp6, 5202));
        // An established connection from port 5201 is not a listener.
        let est = "  sl  local_address rem_address   st\n   0: 0100007F:1451 0100007F:D3A2 01 00000000:00000000\n";
        assert!(!listening_on(est, 5201));
        assert!(!listening_on("", 5201));
    }

    fn wc(worker: usize, vals: &[(&str, u64)]) -> WorkerCounters {
        WorkerCounters {
            worker,
            counters: vals.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn per_worker_deltas() {
        let before = vec![
            wc(0, &[("udp_rx_packets", 100), ("tun_rx_packets", 5)]),
            wc(1, &[("udp_rx_packets", 50), ("tun_rx_packets", 5)]),
        ];
        let after = vec![
            wc(0, &[("udp_rx_packets", 1100), ("tun_rx_packets", 5)]),
            wc(1, &[("udp_rx_packets", 30), ("tun_rx_packets", 9)]),
        ];
        let d = counter_deltas(
            &before,
            &after,
            &["udp_rx_packets", "tun_rx_packets", "nope"],
        );
        // Worker 1's counter went backwards (a restarted writer): counted from 0.
        assert_eq!(d["udp_rx_packets"], vec![1000, 30]);
        assert_eq!(d["tun_rx_packets"], vec![0, 4]);
        assert_eq!(d["nope"], vec![0, 0]);
    }

    #[test]
    fn flag_in_help_text() {
        let help = "Options:\n      --no-io-uring\n          Use the poll path\n      --no-offload-foo\n  -w, --workers <WORKERS>\n      --stats=<PATH>\n";
        assert!(help_lists(help, "--no-io-uring"));
        assert!(help_lists(help, "--workers"));
        assert!(help_lists(help, "--stats"));
        assert!(!help_lists(help, "--no-offload"));
    }

    #[test]
    fn variant_order_is_the_issues() {
        assert_eq!(
            variant_ids(),
            vec![
                "ours",
                "ours-express",
                "ours-no-offload",
                "ours-no-io-uring",
                "ours-tun-readiness",
                "ours-flow-steering",
                "vxlan",
                "bare"
            ]
        );
    }

    #[test]
    fn outputs_are_written_with_latest_copies() {
        let dir = tempfile::tempdir().unwrap();
        let run = crate::harness::markdown::tests::sample_run();
        let o = write_outputs(&run, dir.path(), "20261127T190000Z").unwrap();
        let md = std::fs::read_to_string(&o.markdown).unwrap();
        assert!(md.contains("](20261127T190000Z.svg)"));
        let latest = std::fs::read_to_string(&o.latest_markdown).unwrap();
        assert!(latest.contains("](latest.svg)"));
        assert_eq!(
            std::fs::read_to_string(&o.svg).unwrap(),
            std::fs::read_to_string(&o.latest_svg).unwrap()
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&o.json).unwrap()).unwrap();
        assert_eq!(json["variants"][0]["id"], "ours");
        assert_eq!(json["variants"][0]["summary"]["tcp1_gbps"]["median"], 11.0);
        assert_eq!(
            json["variants"][0]["samples"][0]["metrics"]["tcp1_gbps"],
            10.0
        );
        assert_eq!(json["machine"]["kernel"], "6.18.44");
    }
}
