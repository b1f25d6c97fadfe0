//! The Markdown report of a run (pure): a table with one row per metric and one column per
//! variant (`median (min–max)` over the repeats), the ratios the targets are stated in
//! (ours ÷ kernel VXLAN, ours ÷ bare underlay), the per-worker packet counts, the `--profile`
//! breakdown when there is one, errors, and how the testbed was wired.

use std::fmt::Write as _;

use super::model::{Run, VariantResult, METRICS};
use super::profile::{Category, PingProfile, Profile, TcpProfile};
use super::summary::Summary;

/// Formats a number with about three significant digits; infinity as `∞`.
pub fn num(v: f64) -> String {
    if v.is_infinite() {
        return "∞".into();
    }
    if v.is_nan() {
        return "NaN".into();
    }
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.1 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

/// `median (min–max)`, or just the value for a single sample.
pub fn cell(s: &Summary) -> String {
    if s.n <= 1 || s.min == s.max {
        num(s.median)
    } else {
        format!("{} ({}–{})", num(s.median), num(s.min), num(s.max))
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => {
            format!("{:.2}×", a / b)
        }
        _ => "—".into(),
    }
}

fn column(v: &VariantResult, key: &str) -> String {
    if v.unavailable.is_some() {
        return "unavailable".into();
    }
    v.summary.get(key).map(cell).unwrap_or_else(|| "—".into())
}

/// Renders the report; `chart` is the file name of the SVG next to it.
pub fn render(run: &Run, chart: &str) -> String {
    let mut s = String::new();
    let m = &run.machine;
    let _ = writeln!(s, "# flannel-rs perf run {}\n", run.started_utc);
    let _ = writeln!(
        s,
        "`{}` · {} repeat{} · {} s per iperf3 test · {} pings · kernel {} · {} CPUs ({}) · commit {}{} · load {} → {}\n",
        run.command,
        run.repeats,
        if run.repeats == 1 { "" } else { "s" },
        run.test_seconds,
        run.ping_count,
        m.kernel,
        m.nproc,
        m.cpu_model,
        if m.git_commit.is_empty() { "unknown" } else { &m.git_commit },
        match m.git_dirty {
            Some(true) => " (+ uncommitted changes)",
            _ => "",
        },
        m.loadavg_start,
        m.loadavg_end,
    );
    s.push_str("Cells: median (min–max) over the repeats. One testbed, all variants measured side by side in each repeat.\n\n");

    // The table.
    s.push_str("| metric |");
    for v in &run.variants {
        let _ = write!(s, " {} |", v.label);
    }
    s.push_str("\n|---|");
    for _ in &run.variants {
        s.push_str("---|");
    }
    s.push('\n');
    for metric in METRICS {
        if run
            .variants
            .iter()
            .all(|v| !v.summary.contains_key(metric.key))
        {
            continue;
        }
        let _ = write!(s, "| {} ({}) |", metric.label, metric.unit);
        for v in &run.variants {
            let _ = write!(s, " {} |", column(v, metric.key));
        }
        s.push('\n');
    }

    // Ratios of medians.
    let vxlan = run.variant("vxlan");
    let bare = run.variant("bare");
    let ours: Vec<&VariantResult> = run
        .variants
        .iter()
        .filter(|v| v.id.starts_with("ours") && v.unavailable.is_none())
        .collect();
    if !ours.is_empty() {
        s.push_str("\nRatios of medians (throughput: higher is better; RTT: lower is better). Targets: TCP 1 stream ≥ 1.0× VXLAN, RTT ≤ 1.5× VXLAN.\n\n");
        s.push_str("| variant | TCP 1 ÷ VXLAN | TCP 1 ÷ bare | TCP 4 ÷ VXLAN | TCP 4 ÷ bare | RTT ÷ VXLAN | RTT ÷ bare |\n");
        s.push_str("|---|---|---|---|---|---|---|\n");
        let med = |v: Option<&VariantResult>, k: &str| v.and_then(|v| v.median(k));
        for v in ours {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                v.label,
                ratio(v.median("tcp1_gbps"), med(vxlan, "tcp1_gbps")),
                ratio(v.median("tcp1_gbps"), med(bare, "tcp1_gbps")),
                ratio(v.median("tcp4_gbps"), med(vxlan, "tcp4_gbps")),
                ratio(v.median("tcp4_gbps"), med(bare, "tcp4_gbps")),
                ratio(v.median("rtt_median_ms"), med(vxlan, "rtt_median_ms")),
                ratio(v.median("rtt_median_ms"), med(bare, "rtt_median_ms")),
            );
        }
    }

    let _ = writeln!(s, "\n![TCP throughput per variant]({chart})");

    // Per-worker counts.
    let with_workers: Vec<&VariantResult> = run
        .variants
        .iter()
        .filter(|v| v.samples.iter().any(|x| !x.workers.is_empty()))
        .collect();
    if !with_workers.is_empty() {
        s.push_str("\n## Per-worker packets during TCP 4 streams\n\n");
        s.push_str("Deltas of the data plane's per-worker counters (sender: packets read from the TUN device; receiver: datagrams received). Target: busiest ≤ 2× idlest.\n\n");
        s.push_str("| variant | repeat | sender tun_rx_packets per worker | receiver udp_rx_packets per worker |\n|---|---|---|---|\n");
        for v in with_workers {
            for x in &v.samples {
                let find = |role: &str, counter: &str| {
                    x.workers
                        .iter()
                        .find(|w| w.role == role)
                        .and_then(|w| w.counters.get(counter))
                        .map(|c| workers_cell(c))
                        .unwrap_or_else(|| "—".into())
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    v.label,
                    x.repeat,
                    find("sender", "tun_rx_packets"),
                    find("receiver", "udp_rx_packets")
                );
            }
        }
    }

    // --profile.
    let profiled: Vec<(&VariantResult, &Profile)> = run
        .variants
        .iter()
        .filter_map(|v| {
            v.samples
                .iter()
                .find_map(|x| x.profile.as_ref())
                .map(|p| (v, p))
        })
        .collect();
    if !profiled.is_empty() {
        s.push_str(&render_profile(&profiled));
    }

    // Unavailable variants and errors.
    let mut problems = String::new();
    for v in &run.variants {
        if let Some(why) = &v.unavailable {
            let _ = writeln!(problems, "- {}: unavailable: {why}", v.label);
        }
        for (rep, e) in v.errors().chain(
            v.samples
                .iter()
                .filter_map(|x| x.profile.as_ref().map(|p| (x.repeat, p)))
                .flat_map(|(r, p)| p.errors.iter().map(move |e| (r, e.as_str()))),
        ) {
            let first = e.lines().next().unwrap_or("");
            let _ = writeln!(problems, "- {} (repeat {rep}): {first}", v.label);
        }
    }
    if !problems.is_empty() {
        s.push_str("\n## Not measured / errors\n\n");
        s.push_str(&problems);
    }

    s.push_str("\n## Setup\n\n");
    let t = &run.testbed;
    let _ = writeln!(
        s,
        "- Underlay MTU {}; overlay MTU ours {} (− 28), VXLAN {} (− 50); data-plane workers per host: {}.",
        t.underlay_mtu,
        t.ours_mtu,
        t.vxlan_mtu,
        t.workers.map_or("default (one per CPU)".to_string(), |w| w.to_string()),
    );
    for v in &run.variants {
        let _ = writeln!(s, "- **{}**: {}", v.label, v.description);
    }
    for n in &t.notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

/// The `--profile` section: CPU per GB by category for TCP 1 stream, and what a ping round
/// trip costs in context switches and syscalls.
fn render_profile(profiled: &[(&VariantResult, &Profile)]) -> String {
    let mut s = String::new();
    s.push_str("\n## Profile (`--profile`, first repeat)\n\n");
    s.push_str("TCP 1 stream under `perf record -a` (cpu-clock on every CPU): CPU seconds per GB moved, by where the samples fell (share of all samples × recorded time × CPUs ÷ GB). Ping (200 at 10 ms): `sched:sched_switch` and `raw_syscalls:sys_enter` recorded on every CPU for 1 s while pinging, counted for the threads a round trip runs in (ping, data-plane workers, idle, ksoftirqd), the rate of a quiet second before subtracted, divided by the echo requests ping sent in that second.\n\n");
    s.push_str("| CPU-s per GB, TCP 1 stream |");
    for (v, _) in profiled {
        let _ = write!(s, " {} |", v.label);
    }
    s.push_str("\n|---|");
    for _ in profiled {
        s.push_str("---|");
    }
    s.push('\n');
    let tcp_cell = |p: &Profile, f: &dyn Fn(&TcpProfile) -> Option<f64>| {
        p.tcp1.as_ref().and_then(f).map_or("—".to_string(), num)
    };
    let mut row = |label: &str, f: &dyn Fn(&TcpProfile) -> Option<f64>| {
        let _ = write!(s, "| {label} |");
        for (_, p) in profiled {
            let _ = write!(s, " {} |", tcp_cell(p, f));
        }
        s.push('\n');
    };
    row("throughput while profiled (Gbit/s)", &|t| {
        Some(t.gbit_per_s)
    });
    row("**busy, all CPUs**", &|t| t.busy_s_per_gb());
    for c in Category::ALL.iter().filter(|c| **c != Category::Idle) {
        row(c.label(), &|t| t.s_per_gb.get(c.key()).copied());
    }
    row("idle share of all CPU time (%)", &|t| {
        t.shares.get(Category::Idle.key()).map(|v| v * 100.0)
    });
    for (key, label, _, _) in PingProfile::ROWS {
        let _ = write!(s, "| ping: {label} per round trip |");
        for (_, p) in profiled {
            let v = p
                .ping
                .as_ref()
                .and_then(|x| x.per_round_trip.get(key).copied());
            let _ = write!(s, " {} |", v.map_or("—".to_string(), |v| format!("{v:.1}")));
        }
        s.push('\n');
    }
    if let Some((v, t)) = profiled
        .iter()
        .find_map(|(v, p)| p.tcp1.as_ref().map(|t| (v, t)))
    {
        let _ = writeln!(
            s,
            "\nHottest symbols, {} (share of all samples):\n",
            v.label
        );
        for l in t.top.iter().take(10) {
            let _ = writeln!(
                s,
                "- {:.2} % `{}` {} `{}`",
                l.percent,
                l.comm,
                if l.kernel { "[k]" } else { "[.]" },
                l.symbol
            );
        }
    }
    s
}

fn workers_cell(counts: &[u64]) -> String {
    let list = counts
        .iter()
        .enumerate()
        .map(|(i, c)| format!("w{i} {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    match super::summary::spread(counts) {
        Some(r) => format!("{list} ({}×)", num(r)),
        None => list,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::harness::model::{Machine, Sample, Testbed, WorkerDeltas};

    /// A small run: ours (2 repeats), one unavailable variant, VXLAN, bare.
    pub(crate) fn sample_run() -> Run {
        let mk = |id: &str, label: &str, values: &[(&str, &[f64])]| {
            let mut v = VariantResult::new(id, label, &format!("{label} wiring"));
            let n = values.first().map_or(0, |x| x.1.len());
            for r in 0..n {
                let mut s = Sample {
                    repeat: r + 1,
                    ..Default::default()
                };
                for (k, vals) in values {
                    s.metrics.insert(k.to_string(), vals[r]);
                }
                v.samples.push(s);
            }
            v
        };
        let mut ours = mk(
            "ours",
            "ours",
            &[
                ("tcp1_gbps", &[10.0, 12.0]),
                ("tcp4_gbps", &[14.0, 14.0]),
                ("rtt_median_ms", &[0.09, 0.07]),
                ("rx_worker_spread", &[1.5, f64::INFINITY]),
            ],
        );
        ours.samples[0].workers.push(WorkerDeltas {
            host: 1,
            role: "sender".into(),
            counters: BTreeMap::from([("tun_rx_packets".to_string(), vec![1000, 500])]),
        });
        ours.samples[0]
            .errors
            .push("UDP 64 B: iperf3: boom\nmore".into());
        let mut off = VariantResult::new("ours-no-offload", "ours --no-offload", "x");
        off.unavailable = Some("flannel-dataplane does not accept --no-offload".into());
        let vxlan = mk(
            "vxlan",
            "kernel VXLAN",
            &[("tcp1_gbps", &[20.0]), ("rtt_median_ms", &[0.05])],
        );
        let bare = mk(
            "bare",
            "bare underlay",
            &[("tcp1_gbps", &[40.0]), ("rtt_median_ms", &[0.025])],
        );
        let mut variants = vec![ours, off, vxlan, bare];
        variants.iter_mut().for_each(VariantResult::summarize);
        Run {
            started_utc: "2026-11-27T19:00:00Z".into(),
            finished_utc: "2026-11-27T19:01:00Z".into(),
            command: "scripts/perf --quick".into(),
            quick: true,
            repeats: 2,
            test_seconds: 2,
            ping_count: 50,
            machine: Machine {
                kernel: "6.18.44".into(),
                nproc: 2,
                cpu_model: "Test CPU".into(),
                git_commit: "abc1234".into(),
                git_dirty: Some(true),
                ..Default::default()
            },
            testbed: Testbed {
                underlay_mtu: 1500,
                ours_mtu: 1472,
                vxlan_mtu: 1450,
                workers: None,
                notes: vec!["note one".into()],
            },
            variants,
        }
    }

    #[test]
    fn profile_section() {
        use crate::harness::profile::{parse_report, parse_script, PingProfile, TcpProfile};
        let mut run = sample_run();
        assert!(
            !render(&run, "x.svg").contains("## Profile"),
            "no section without --profile"
        );
        let report = " 20.00% |swapper |[k] pv_native_safe_halt\n 30.00% |fdp-worker-0 |[k] _copy_to_iter\n 50.00% |iperf3 |[k] tcp_sendmsg_locked\n";
        let during = parse_script(
            "ping raw_syscalls:sys_enter: NR 44 (3)\nfdp-worker-0 sched:sched_switch: x\n",
            44,
            1.0,
        );
        let quiet = parse_script("", 44, 1.0);
        run.variants[0].samples[0].profile = Some(Profile {
            // 10 s on 2 CPUs, 4 GB: 30 % → 1.5 CPU-s/GB, busy 80 % → 4 CPU-s/GB.
            tcp1: Some(TcpProfile::new(&parse_report(report), 3.2, 4.0, 10.0, 2)),
            ping: Some(PingProfile::new(during, quiet)),
            errors: vec!["profile ping: perf record gave nothing".into()],
        });
        let md = render(&run, "x.svg");
        assert!(
            md.contains("## Profile (`--profile`, first repeat)"),
            "{md}"
        );
        assert!(
            md.contains("| CPU-s per GB, TCP 1 stream | ours |\n|---|---|\n"),
            "{md}"
        );
        assert!(md.contains("| **busy, all CPUs** | 4.00 |"), "{md}");
        assert!(
            md.contains(
                "| data plane: user↔kernel copies (TUN read/write, UDP send/receive) | 1.50 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| idle share of all CPU time (%) | 20.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| ping: context switches of data-plane workers per round trip | 1.0 |"),
            "{md}"
        );
        assert!(
            md.contains("- 50.00 % `iperf3` [k] `tcp_sendmsg_locked`"),
            "{md}"
        );
        assert!(
            md.contains("- ours (repeat 1): profile ping: perf record gave nothing"),
            "{md}"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(num(123.456), "123");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(0.1234), "0.123");
        assert_eq!(num(0.02954), "0.0295");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(f64::INFINITY), "∞");
    }

    #[test]
    fn table_ratios_workers_and_errors() {
        let md = render(&sample_run(), "x.svg");
        assert!(md.starts_with("# flannel-rs perf run 2026-11-27T19:00:00Z\n"));
        assert!(md.contains("`scripts/perf --quick` · 2 repeats · 2 s per iperf3 test"));
        assert!(md.contains("commit abc1234 (+ uncommitted changes)"));
        assert!(md.contains(
            "| metric | ours | ours --no-offload | kernel VXLAN | bare underlay |\n|---|---|---|---|---|\n"
        ));
        assert!(
            md.contains("| TCP 1 stream (Gbit/s) | 11.0 (10.0–12.0) | unavailable | 20.0 | 40.0 |"),
            "{md}"
        );
        // Equal min and max collapse to the value.
        assert!(md.contains("| TCP 4 streams (Gbit/s) | 14.0 | unavailable | — | — |"));
        assert!(md.contains("| ping RTT median (ms) | 0.0800 (0.0700–0.0900) |"));
        assert!(
            md.contains("| 1.50 (1.50–∞) |") || md.contains("| ∞ (1.50–∞) |"),
            "{md}"
        );
        // Rows without any value are left out.
        assert!(!md.contains("UDP 64 B received"));
        // ours ÷ VXLAN 11/20, ours ÷ bare 11/40, RTT 0.08/0.05 and 0.08/0.025.
        assert!(
            md.contains("| ours | 0.55× | 0.28× | — | — | 1.60× | 3.20× |"),
            "{md}"
        );
        assert!(!md.contains("| ours --no-offload | 0"));
        assert!(md.contains("![TCP throughput per variant](x.svg)"));
        assert!(
            md.contains("| ours | 1 | w0 1000, w1 500 (2.00×) | — |"),
            "{md}"
        );
        assert!(md.contains(
            "- ours --no-offload: unavailable: flannel-dataplane does not accept --no-offload"
        ));
        assert!(md.contains("- ours (repeat 1): UDP 64 B: iperf3: boom\n"));
        assert!(md.contains("- Underlay MTU 1500; overlay MTU ours 1472 (− 28), VXLAN 1450 (− 50)"));
        assert!(md.contains("- **kernel VXLAN**: kernel VXLAN wiring"));
        assert!(md.contains("- note one"));
    }
}
