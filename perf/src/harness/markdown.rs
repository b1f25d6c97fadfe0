//! The Markdown report of a run (pure): a table with one row per metric and one column per
//! variant (`median (min–max)` over the repeats), the ratios of medians (ours ÷ kernel VXLAN,
//! ours ÷ bare underlay), issue 30's targets with a met / not met mark each ([`targets`]), every
//! repeat's figure for the headline metrics ([`HEADLINE`]), where the TCP tests' threads ran in
//! every repeat ([`placement`]), the paced UDP searches' probes ([`udpsearch`]), the per-worker
//! packet counts, the `--profile` breakdown when there is one, errors, and how the testbed was
//! wired.
//!
//! [`targets`]: super::targets
//! [`placement`]: super::placement
//! [`udpsearch`]: super::udpsearch

use std::fmt::Write as _;

use super::metric::{metric, MetricKey, Streams, HEADLINE, METRICS};
use super::model::{Run, Sample, TcpSample, VariantResult};
use super::placement::{Placement, ThreadPlacement, WORKER_PREFIX};
use super::profile::{Category, PingProfile, Profile, TcpProfile};
use super::targets::{self, Goal, Stat};
use super::udpsearch::CLEAN_LOSS_PCT;
use crate::report::markdown::{cell, header, num, row};
use crate::report::summary::Summary;

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => {
            format!("{:.2}×", a / b)
        }
        _ => "—".into(),
    }
}

fn column(v: &VariantResult, key: MetricKey) -> String {
    if v.unavailable.is_some() {
        return "unavailable".into();
    }
    v.summary
        .get(key.as_str())
        .map(cell)
        .unwrap_or_else(|| "—".into())
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
    s += &header(std::iter::once("metric").chain(run.variants.iter().map(|v| v.label.as_str())));
    for metric in METRICS {
        if run
            .variants
            .iter()
            .all(|v| !v.summary.contains_key(metric.key.as_str()))
        {
            continue;
        }
        s += &row(
            std::iter::once(format!("{} ({})", metric.label, metric.unit))
                .chain(run.variants.iter().map(|v| column(v, metric.key))),
        );
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
        s.push_str("\nRatios of medians (throughput: higher is better; RTT: lower is better); the issues' targets (issue 30: ours; issue 31: ours --express) are checked below.\n\n");
        s += &header([
            "variant",
            "TCP 1 ÷ VXLAN",
            "TCP 1 ÷ bare",
            "TCP 4 ÷ VXLAN",
            "TCP 4 ÷ bare",
            "RTT ÷ VXLAN",
            "RTT ÷ bare",
        ]);
        let med = |v: Option<&VariantResult>, k: MetricKey| v.and_then(|v| v.median(k));
        let keys = [
            MetricKey::TcpGbps(Streams::One),
            MetricKey::TcpGbps(Streams::Four),
            MetricKey::RttMedianMs,
        ];
        for v in ours {
            let ratios = keys.iter().flat_map(|&k| {
                [
                    ratio(v.median(k), med(vxlan, k)),
                    ratio(v.median(k), med(bare, k)),
                ]
            });
            s += &row(std::iter::once(v.label.clone()).chain(ratios));
        }
    }

    if let Some(vx) = vxlan.filter(|v| v.unavailable.is_none()) {
        for v in run.variants.iter().filter(|v| v.unavailable.is_none()) {
            if let Some((issue, list)) = targets::for_variant(&v.id) {
                s.push_str(&render_targets(issue, list, v, vx));
            }
            if v.id == "ours" {
                s.push_str(&render_floor(run, v, vx));
            }
        }
    }

    let _ = writeln!(s, "\n![TCP throughput per variant]({chart})");

    s.push_str(&render_repeats(run));
    s.push_str(&render_placement(run));
    s.push_str(&render_udp_search(run));
    s.push_str(&render_udp_loss(run));

    // Per-worker counts.
    let with_workers: Vec<&VariantResult> = run
        .variants
        .iter()
        .filter(|v| v.samples.iter().any(|x| !x.workers.is_empty()))
        .collect();
    if !with_workers.is_empty() {
        s.push_str("\n## Per-worker packets during TCP 4 streams\n\n");
        s.push_str("Deltas of the data plane's per-worker counters (sender: packets read from the TUN device; receiver: datagrams received). Target: busiest ≤ 2× idlest.\n\n");
        s += &header([
            "variant",
            "repeat",
            "sender tun_rx_packets per worker",
            "receiver udp_rx_packets per worker",
        ]);
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
                s += &row([
                    v.label.clone(),
                    x.repeat.to_string(),
                    find("sender", "tun_rx_packets"),
                    find("receiver", "udp_rx_packets"),
                ]);
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

/// The `--profile` section: CPU per GB by category for TCP 1 and 4 streams, and what a ping
/// round trip costs in context switches and syscalls.
fn render_profile(profiled: &[(&VariantResult, &Profile)]) -> String {
    let mut s = String::new();
    s.push_str("\n## Profile (`--profile`, first repeat)\n\n");
    s.push_str("TCP 1 and 4 streams, each under `perf record -a` (cpu-clock on every CPU): CPU seconds per GB moved, by where the samples fell (share of all samples × recorded time × CPUs ÷ GB). Ping (200 at 10 ms): `sched:sched_switch` and `raw_syscalls:sys_enter` recorded on every CPU for 1 s while pinging, counted for the threads a round trip runs in (ping, data-plane workers, idle, ksoftirqd), the rate of a quiet second before subtracted, divided by the echo requests ping sent in that second.\n\n");
    type Pick = fn(&Profile) -> Option<&TcpProfile>;
    let tests: [(&str, Pick); 2] = [
        ("TCP 1 stream", |p| p.tcp1.as_ref()),
        ("TCP 4 streams", |p| p.tcp4.as_ref()),
    ];
    for (i, (name, pick)) in tests.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s += &header(
            std::iter::once(format!("CPU-s per GB, {name}"))
                .chain(profiled.iter().map(|(v, _)| v.label.clone())),
        );
        let tcp_cell = |p: &Profile, f: &dyn Fn(&TcpProfile) -> Option<f64>| {
            pick(p).and_then(f).map_or("—".to_string(), num)
        };
        let mut tcp_row = |label: &str, f: &dyn Fn(&TcpProfile) -> Option<f64>| {
            s += &row(std::iter::once(label.to_string())
                .chain(profiled.iter().map(|(_, p)| tcp_cell(p, f))));
        };
        tcp_row("throughput while profiled (Gbit/s)", &|t| {
            Some(t.gbit_per_s)
        });
        tcp_row("**busy, all CPUs**", &|t| t.busy_s_per_gb());
        for c in Category::ALL.iter().filter(|c| **c != Category::Idle) {
            tcp_row(c.label(), &|t| t.s_per_gb.get(c.key()).copied());
        }
        tcp_row("idle share of all CPU time (%)", &|t| {
            t.shares.get(Category::Idle.key()).map(|v| v * 100.0)
        });
        if i == 0 {
            for (key, label, _, _) in PingProfile::ROWS {
                let per_round_trip = profiled.iter().map(|(_, p)| {
                    p.ping
                        .as_ref()
                        .and_then(|x| x.per_round_trip.get(key).copied())
                        .map_or("—".to_string(), |v| format!("{v:.1}"))
                });
                s +=
                    &row(std::iter::once(format!("ping: {label} per round trip"))
                        .chain(per_round_trip));
            }
        }
    }
    for (name, pick) in &tests {
        let Some((v, t)) = profiled.iter().find_map(|(v, p)| pick(p).map(|t| (v, t))) else {
            continue;
        };
        let _ = writeln!(
            s,
            "\nHottest symbols, {name}, {} (share of all samples):\n",
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

/// ours' machine CPU per GB against the design's floor ([`super::floor`]): kernel VXLAN's
/// plus four copies of a GB, measured on this machine in this run.
fn render_floor(run: &Run, ours: &VariantResult, vxlan: &VariantResult) -> String {
    use super::floor::{floor_row, COPIES, FLOOR_TARGET};
    use super::metric::Streams;
    let Some(copy) = &run.copy_cost else {
        return String::new();
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## The design's floor: {} vs {}\n",
        ours.label, vxlan.label
    );
    let samples: Vec<String> = copy.samples.iter().map(|v| num(*v)).collect();
    let _ = writeln!(
        s,
        "Each byte crosses the user/kernel boundary {COPIES} times here (TUN read, UDP send, UDP \
         receive, TUN write); kernel VXLAN copies it none. One memcpy of a GB on this machine \
         ({} KiB chunks between 64 MiB buffers): {} s (median of {}: {}). Floor = VXLAN's machine \
         CPU per GB + {COPIES} × that; the target is ours ≤ {FLOOR_TARGET:.2}× the floor (medians).\n",
        copy.chunk_bytes / 1024,
        num(copy.s_per_gb),
        copy.samples.len(),
        samples.join(", ")
    );
    s += &header([
        "TCP streams",
        "VXLAN machine CPU per GB (s)",
        "4 copies (s)",
        "floor (s)",
        "ours machine CPU per GB (s)",
        "ours ÷ floor",
        "verdict",
    ]);
    for (name, streams) in [("1", Streams::One), ("4", Streams::Four)] {
        let key = MetricKey::MachineCpuPerGb(streams);
        match floor_row(ours.median(key), vxlan.median(key), copy) {
            Some(r) => {
                s += &row([
                    name.to_string(),
                    num(r.vxlan),
                    num(r.copies),
                    num(r.floor),
                    num(r.ours),
                    format!("{:.2}×", r.ratio),
                    if r.ratio <= FLOOR_TARGET {
                        "✅ met".to_string()
                    } else {
                        "❌ not met".to_string()
                    },
                ])
            }
            None => s += &row([name, "—", "—", "—", "—", "—", "no data"].map(String::from)),
        }
    }
    s
}

/// An issue's targets for an ours variant against kernel VXLAN, each with its inputs and a
/// mark.
fn render_targets(
    issue: &str,
    list: &[targets::Target],
    ours: &VariantResult,
    vxlan: &VariantResult,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Targets ({issue}): {} vs {}\n",
        ours.label, vxlan.label
    );
    s.push_str("Computed from this run's repeats: ours' worst repeat (min) or median against VXLAN's median.\n\n");
    s += &header([
        "target",
        "goal",
        &ours.label,
        &vxlan.label,
        "ratio / difference",
        "verdict",
    ]);
    for c in targets::evaluate(list, ours, vxlan) {
        let unit = metric(c.key).map_or("", |m| m.unit);
        let figure = |v: Option<f64>, what: &str| {
            v.map_or("—".to_string(), |v| format!("{} {unit} ({what})", num(v)))
        };
        let goal = match c.goal {
            Goal::RatioAtLeast(min, Some(st)) => format!("≥ {min:.2}× (stretch ≥ {st:.2}×)"),
            Goal::RatioAtLeast(min, None) => format!("≥ {min:.2}×"),
            Goal::RatioAtMost(max) => format!("≤ {max:.2}×"),
            Goal::PointsAtMost(p) => format!("≤ VXLAN + {p:.0} points"),
            Goal::Report | Goal::ReportPoints => "reported".into(),
        };
        let value = c.value.map_or("—".to_string(), |v| match c.goal {
            Goal::PointsAtMost(_) | Goal::ReportPoints => format!("{v:+.1} points"),
            _ => format!("{v:.2}×"),
        });
        let verdict = match (c.met, c.stretch_met) {
            (Some(true), Some(true)) => "✅ met (stretch met)".to_string(),
            (Some(true), Some(false)) => "✅ met (stretch not met)".to_string(),
            (Some(true), None) => "✅ met".to_string(),
            (Some(false), _) => "❌ not met".to_string(),
            (None, _) if c.value.is_none() => "no data".to_string(),
            (None, _) => "—".to_string(),
        };
        let ours_figure = figure(
            c.ours,
            match c.ours_stat {
                Stat::Min => "worst",
                Stat::Median => "median",
            },
        );
        s += &row([
            c.target.to_string(),
            goal,
            ours_figure,
            figure(c.vxlan, "median"),
            value,
            verdict,
        ]);
    }
    s
}

/// One repeat's value of `key`, or why there is none.
fn repeat_cell(x: &Sample, key: MetricKey) -> Option<String> {
    if let Some(v) = x.metrics.get(key.as_str()) {
        return Some(num(*v));
    }
    // A search that found no clean rate says what it is below.
    let MetricKey::UdpMaxCleanKpps(payload) = key else {
        return None;
    };
    let search = x.udp_search.iter().find(|u| u.payload == payload.bytes())?;
    search
        .lowest_probe_pps()
        .map(|p| format!("none clean (< {})", num(p / 1e3)))
}

/// Every repeat's figure of the headline metrics: one table per metric, a row per repeat, a
/// column per variant, then min / median / max.
fn render_repeats(run: &Run) -> String {
    let mut s = String::new();
    let repeats = run
        .variants
        .iter()
        .flat_map(|v| v.samples.iter().map(|x| x.repeat))
        .max()
        .unwrap_or(0);
    let mut any = false;
    for key in HEADLINE {
        let Some(m) = metric(*key) else { continue };
        let cols: Vec<&VariantResult> = run
            .variants
            .iter()
            .filter(|v| v.samples.iter().any(|x| repeat_cell(x, *key).is_some()))
            .collect();
        if cols.is_empty() {
            continue;
        }
        if !any {
            s.push_str("\n## Every repeat\n\n");
            s.push_str("Each repeat's figure per variant (variants alternate within a repeat)");
            s.push_str(if repeats > 1 {
                ", then min / median / max over the repeats.\n"
            } else {
                ".\n"
            });
            any = true;
        }
        let _ = write!(s, "\n### {} ({})\n\n", m.label, m.unit);
        s += &header(std::iter::once("repeat").chain(cols.iter().map(|v| v.label.as_str())));
        for rep in 1..=repeats {
            let cells: Vec<Option<String>> = cols
                .iter()
                .map(|v| {
                    v.samples
                        .iter()
                        .find(|x| x.repeat == rep)
                        .and_then(|x| repeat_cell(x, *key))
                })
                .collect();
            if cells.iter().all(Option::is_none) {
                continue;
            }
            s += &row(std::iter::once(rep.to_string())
                .chain(cells.into_iter().map(|c| c.unwrap_or_else(|| "—".into()))));
        }
        // Min / median / max (only once there is more than one repeat).
        for (name, f) in [
            ("min", (|x: &Summary| x.min) as fn(&Summary) -> f64),
            ("median", |x: &Summary| x.median),
            ("max", |x: &Summary| x.max),
        ]
        .into_iter()
        .filter(|_| repeats > 1)
        {
            s += &row(
                std::iter::once(format!("**{name}**")).chain(cols.iter().map(|v| {
                    v.summary
                        .get(key.as_str())
                        .map_or("—".into(), |x| num(f(x)))
                })),
            );
        }
    }
    s
}

/// Per-CPU seconds of one thread as `cpu1 0.90 s + cpu0 0.05 s` (CPUs with at least 1 % of
/// the wall time, busiest first; `idle` when none).
fn cpu_seconds(t: &ThreadPlacement, wall_s: f64) -> String {
    let parts: Vec<String> = by_cpu(t, wall_s)
        .into_iter()
        .map(|(c, v)| format!("cpu{c} {v:.2} s"))
        .collect();
    if parts.is_empty() {
        "idle".into()
    } else {
        parts.join(" + ")
    }
}

/// (CPU, seconds) with at least 1 % of `wall_s`, busiest first.
fn by_cpu(t: &ThreadPlacement, wall_s: f64) -> Vec<(usize, f64)> {
    let mut v: Vec<(usize, f64)> = t
        .cpu_s
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, x)| *x > 0.0 && *x >= 0.01 * wall_s)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn moves(t: &ThreadPlacement) -> String {
    match t.migrations {
        0 => String::new(),
        1 => " (1 move)".into(),
        n => format!(" ({n} moves)"),
    }
}

/// An iperf3 process: its share of the wall time on each CPU, e.g. `cpu0 96%, cpu1 3%`.
fn app_cell(p: &Placement, label: &str) -> String {
    let Some(t) = p.get(label) else {
        return "—".into();
    };
    if p.wall_s <= 0.0 {
        return "—".into();
    }
    let parts: Vec<String> = by_cpu(t, p.wall_s)
        .into_iter()
        .map(|(c, v)| format!("cpu{c} {:.0}%", 100.0 * v / p.wall_s))
        .collect();
    let body = if parts.is_empty() {
        "idle".into()
    } else {
        parts.join(", ")
    };
    format!("{body}{}", moves(t))
}

/// A host's data-plane threads: `w0 cpu1 0.90 s, w1 cpu0 0.10 s` (other threads by name).
fn dataplane_cell(p: &Placement, host: &str) -> String {
    let prefix = format!("{host} ");
    let parts: Vec<String> = p
        .with_prefix(&prefix)
        .map(|t| {
            let name = &t.label[prefix.len()..];
            let short = name
                .strip_prefix(WORKER_PREFIX)
                .map_or(name.to_string(), |n| format!("w{n}"));
            format!("{short} {}{}", cpu_seconds(t, p.wall_s), moves(t))
        })
        .collect();
    if parts.is_empty() {
        "—".into()
    } else {
        parts.join(", ")
    }
}

fn busy_cell(t: &TcpSample) -> String {
    if t.cpu_busy_pct.is_empty() {
        return "—".into();
    }
    t.cpu_busy_pct
        .iter()
        .enumerate()
        .map(|(c, b)| format!("cpu{c} {b:.0}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the TCP tests ran, every repeat.
fn render_placement(run: &Run) -> String {
    let mut s = String::new();
    let mut titled = false;
    for streams in [1u64, 4] {
        let mut rows: Vec<(&VariantResult, &Sample, &TcpSample, &Placement)> = Vec::new();
        for v in &run.variants {
            for x in &v.samples {
                for t in x.tcp.iter().filter(|t| t.iperf.streams == streams) {
                    if let Some(p) = &t.placement {
                        rows.push((v, x, t, p));
                    }
                }
            }
        }
        if rows.is_empty() {
            continue;
        }
        if !titled {
            titled = true;
            let interval = rows[0].3.interval_ms;
            let _ = writeln!(s, "\n## Where the TCP tests ran (every repeat)\n");
            let _ = writeln!(s, "Sampled every {interval} ms while iperf3 ran: each thread's CPU time (`/proc/<pid>/task/<tid>/schedstat`) charged to the CPU it was last seen on (field 39 of `…/stat`). iperf3: share of the test's wall time on each CPU (100 % = one CPU the whole time); data plane: CPU seconds per worker thread (`w0` = `fdp-worker-0`) and per CPU, other threads only above 1 % of the test; a move is a change of CPU between two samples. CPU busy: each CPU's busy share during the test (`/proc/stat`). VXLAN and bare have no data plane.");
        }
        let _ = writeln!(
            s,
            "\n### TCP {streams} stream{}\n",
            if streams == 1 { "" } else { "s" }
        );
        s += &header([
            "variant",
            "repeat",
            "Gbit/s",
            "CPU busy",
            "iperf3 client",
            "iperf3 server",
            "h1 data plane",
            "h2 data plane",
        ]);
        for (v, x, t, p) in rows {
            s += &row([
                v.label.clone(),
                x.repeat.to_string(),
                num(t.iperf.gbit_per_s()),
                busy_cell(t),
                app_cell(p, "iperf3 client"),
                app_cell(p, "iperf3 server"),
                dataplane_cell(p, "h1"),
                dataplane_cell(p, "h2"),
            ]);
        }
    }
    s
}

/// The paced UDP searches, probe by probe.
/// Where each unpaced UDP test's lost datagrams went ([`super::udploss`]), every repeat.
fn render_udp_loss(run: &Run) -> String {
    let rows: Vec<(&str, usize, &super::udploss::UdpLoss)> = run
        .variants
        .iter()
        .flat_map(|v| {
            v.samples.iter().flat_map(move |x| {
                x.udp_loss
                    .iter()
                    .map(move |l| (v.label.as_str(), x.repeat, l))
            })
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n## Where unpaced UDP datagrams were lost\n\n");
    s.push_str("Deltas of counters on both hosts around each unpaced test (`super::udploss`): the sender's tunnel device (flannel0's TUN queue full, or vxlan0), the receiving host's UDP sockets (`RcvbufErrors`: the data plane's), the receiving data plane's `drop_*`, the receiver's tunnel device, the receiving container's socket (iperf3's `RcvbufErrors`); unexplained: lost but counted by none.\n\n");
    let mut head = vec!["variant", "repeat", "payload (B)", "sent", "lost"];
    let stages = super::udploss::UdpLoss::default().stages();
    head.extend(stages.iter().map(|(name, _)| *name));
    s += &header(head);
    for (label, repeat, l) in rows {
        let mut cells = vec![
            label.to_string(),
            repeat.to_string(),
            l.payload.to_string(),
            l.sent.to_string(),
            l.lost.to_string(),
        ];
        cells.extend(l.stages().iter().map(|(_, n)| n.to_string()));
        s += &row(cells);
    }
    s
}

fn render_udp_search(run: &Run) -> String {
    let mut s = String::new();
    let mut titled = false;
    for v in &run.variants {
        for x in &v.samples {
            for u in &x.udp_search {
                if !titled {
                    titled = true;
                    let _ = writeln!(s, "\n## Paced UDP search (≤ {CLEAN_LOSS_PCT} % loss)\n");
                    let _ = writeln!(s, "One sender, `iperf3 -u -b <rate> -l <payload> -t {}`, {} probes bisecting between {:.0} % and {:.0} % of the unpaced test's received rate: a clean probe (loss ≤ {CLEAN_LOSS_PCT} %) raises the lower end, a lossy one lowers the upper end. Probes: offered → received kpps (loss), ✓ clean. Highest clean: the best received rate of a clean probe.\n",
                        super::udpsearch::PROBE_SECONDS,
                        super::udpsearch::PROBES,
                        100.0 * super::udpsearch::FLOOR_FRACTION,
                        100.0 * super::udpsearch::CEILING_FACTOR,
                    );
                    s += &header([
                        "variant",
                        "repeat",
                        "payload",
                        "probes",
                        "highest clean (kpps)",
                    ]);
                }
                let probes: Vec<String> = u
                    .probes
                    .iter()
                    .map(|p| {
                        format!(
                            "{} → {} ({} %){}",
                            num(p.offered_pps / 1e3),
                            num(p.received_pps / 1e3),
                            num(p.loss_pct),
                            if p.clean { " ✓" } else { "" }
                        )
                    })
                    .collect();
                let best = u.max_clean_pps.map_or_else(
                    || {
                        u.lowest_probe_pps()
                            .map_or("—".into(), |p| format!("none (< {})", num(p / 1e3)))
                    },
                    |b| num(b / 1e3),
                );
                s += &row([
                    v.label.clone(),
                    x.repeat.to_string(),
                    format!("{} B", u.payload),
                    if probes.is_empty() {
                        "—".into()
                    } else {
                        probes.join(", ")
                    },
                    best,
                ]);
            }
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
    match crate::report::summary::spread(counts) {
        Some(r) => format!("{list} ({}×)", num(r)),
        None => list,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::harness::model::{Machine, Testbed, WorkerDeltas};

    /// A small run: ours (2 repeats), one unavailable variant, VXLAN, bare.
    pub(crate) fn sample_run() -> Run {
        let mk = |id: &str, label: &str, values: &[(&str, &[f64])]| {
            VariantResult::from_repeats(id, label, &format!("{label} wiring"), values)
        };
        let mut ours = mk(
            "ours",
            "ours",
            &[
                ("tcp1_gbps", &[10.0, 12.0]),
                ("tcp4_gbps", &[14.0, 14.0]),
                ("rtt_median_ms", &[0.09, 0.07]),
                ("rx_worker_spread", &[1.5, f64::INFINITY]),
                ("machine_cpu_s_per_gb_tcp1", &[1.3, 1.3]),
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
        ours.samples[0]
            .udp_loss
            .push(crate::harness::udploss::attribute(
                64,
                1000,
                400,
                &Default::default(),
                &crate::harness::udploss::LossCounters {
                    sender_tunnel_tx_dropped: 500,
                    receiver_app_rcvbuf_errors: 90,
                    ..Default::default()
                },
            ));
        let mut off = VariantResult::new("ours-no-offload", "ours --no-offload", "x");
        off.unavailable = Some("flannel-dataplane does not accept --no-offload".into());
        let vxlan = mk(
            "vxlan",
            "kernel VXLAN",
            &[
                ("tcp1_gbps", &[20.0]),
                ("rtt_median_ms", &[0.05]),
                ("machine_cpu_s_per_gb_tcp1", &[1.0]),
            ],
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
            copy_cost: Some(super::super::floor::CopyCost {
                s_per_gb: 0.05,
                samples: vec![0.05, 0.06],
                chunk_bytes: 65536,
            }),
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
            // The same samples for 8 GB: half the CPU per GB.
            tcp4: Some(TcpProfile::new(&parse_report(report), 6.4, 8.0, 10.0, 2)),
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
            md.contains("| CPU-s per GB, TCP 4 streams | ours |\n|---|---|\n"),
            "{md}"
        );
        assert!(md.contains("| **busy, all CPUs** | 2.00 |"), "{md}");
        assert!(
            md.contains("Hottest symbols, TCP 4 streams, ours (share of all samples)"),
            "{md}"
        );
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
    fn every_repeat_targets_placement_and_udp_search() {
        use crate::harness::iperf::TcpResult;
        use crate::harness::model::TcpSample;
        use crate::harness::placement::attribute;
        use crate::harness::placement::tests::{snap, t as th};
        use crate::harness::udpsearch::UdpSearch;
        use std::time::Duration;

        let mut run = sample_run();
        // VXLAN gets a second repeat so both columns have two rows.
        let mut x2 = run.variants[2].samples[0].clone();
        x2.repeat = 2;
        x2.metrics.insert("tcp1_gbps".into(), 22.0);
        run.variants[2].samples.push(x2);
        run.variants[2].summarize();
        // Ours, repeat 1: placement of the TCP 1 test; the client moved once, worker 0 of
        // host 1 ran on CPU 1, worker 1 on CPU 0.
        let at = |s: f64, run_ms: [u64; 4], client_cpu| {
            snap(
                s,
                vec![
                    th(1, "iperf3 client", client_cpu, run_ms[0]),
                    th(2, "iperf3 server", 1, run_ms[1]),
                    th(3, "h1 fdp-worker-0", 1, run_ms[2]),
                    th(4, "h1 fdp-worker-1", 0, run_ms[3]),
                ],
            )
        };
        let snaps = vec![
            at(0.0, [0, 0, 0, 0], 0),
            at(1.0, [960, 500, 900, 100], 0),
            at(2.0, [1000, 1000, 1800, 200], 1),
        ];
        run.variants[0].samples[0].tcp.push(TcpSample {
            iperf: TcpResult {
                streams: 1,
                seconds: 2.0,
                bytes: 2_500_000_000,
                bits_per_second: 10e9,
                retransmits: None,
            },
            our_cpu_s: None,
            machine_cpu_s: None,
            cpu_busy_pct: vec![96.4, 57.0],
            placement: Some(attribute(&snaps, Duration::from_millis(50))),
        });
        // Ours, repeat 1: a UDP 64 B search that found 38.2 kpps and one that found nothing.
        let mut found = UdpSearch::new(64, 6_600.0, 66_000.0, 2);
        found.record(36_300.0, 36_300.0, 0.0);
        found.record(51_150.0, 44_000.0, 14.0);
        let mut none = UdpSearch::new(1400, 1_000.0, 9_000.0, 1);
        none.record(5_000.0, 4_000.0, 20.0);
        let x = &mut run.variants[0].samples[0];
        x.metrics.insert("udp64_max_clean_kpps".into(), 36.3);
        x.udp_search = vec![found, none];
        run.variants[0].summarize();

        let md = render(&run, "x.svg");
        // Every repeat: a row per repeat, a column per variant with data, then min/median/max.
        assert!(
            md.contains(
                "### TCP 1 stream (Gbit/s)\n\n| repeat | ours | kernel VXLAN | bare underlay |\n|---|---|---|---|\n| 1 | 10.0 | 20.0 | 40.0 |\n| 2 | 12.0 | 22.0 | — |\n| **min** | 10.0 | 20.0 | 40.0 |\n| **median** | 11.0 | 21.0 | 40.0 |\n| **max** | 12.0 | 22.0 | 40.0 |\n"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 1 | 36.3 |\n| **min** | 36.3 |"),
            "search found: {md}"
        );
        assert!(
            md.contains("### UDP 1400 B, highest paced rate with ≤ 0.1 % loss (kpps received)\n\n| repeat | ours |\n|---|---|\n| 1 | none clean (< 5.00) |\n| **min** | — |"),
            "search found nothing: {md}"
        );
        // Targets: ours' worst TCP 1 repeat 10 ÷ VXLAN's median 21; median 11 ÷ 21; RTT
        // 0.08 ÷ 0.05.
        assert!(
            md.contains("## Targets (issue 30): ours vs kernel VXLAN"),
            "{md}"
        );
        assert!(
            md.contains("| TCP 1 stream: ours' worst repeat ÷ VXLAN's median | ≥ 0.80× | 10.0 Gbit/s (worst) | 21.0 Gbit/s (median) | 0.48× | ❌ not met |"),
            "{md}"
        );
        assert!(
            md.contains("| TCP 1 stream: median ÷ VXLAN's median | ≥ 0.95× (stretch ≥ 1.00×) | 11.0 Gbit/s (median) | 21.0 Gbit/s (median) | 0.52× | ❌ not met |"),
            "{md}"
        );
        assert!(
            md.contains("| ping RTT: median ÷ VXLAN's median | ≤ 1.50× | 0.0800 ms (median) | 0.0500 ms (median) | 1.60× | ❌ not met |"),
            "{md}"
        );
        assert!(
            md.contains("| UDP 64 B unpaced: loss − VXLAN's loss | ≤ VXLAN + 10 points | — | — | — | no data |"),
            "{md}"
        );
        // Placement: the client 96 % + 2 % of 2 s (one move), the server on CPU 1, host 1's
        // workers in seconds per CPU, no data plane on host 2.
        assert!(
            md.contains("| ours | 1 | 10.0 | cpu0 96%, cpu1 57% | cpu0 48%, cpu1 2% (1 move) | cpu1 50% | w0 cpu1 1.80 s, w1 cpu0 0.20 s | — |"),
            "{md}"
        );
        assert!(!md.contains("### TCP 4 streams\n\n| variant | repeat | Gbit/s"));
        // The UDP search, probe by probe.
        assert!(
            md.contains("| ours | 1 | 64 B | 36.3 → 36.3 (0 %) ✓, 51.1 → 44.0 (14.0 %) | 36.3 |"),
            "{md}"
        );
        assert!(
            md.contains("| ours | 1 | 1400 B | 5.00 → 4.00 (20.0 %) | none (< 5.00) |"),
            "{md}"
        );
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

    #[test]
    fn the_floor_table_sets_ours_against_vxlan_plus_four_copies() {
        let md = render(&sample_run(), "chart.svg");
        assert!(
            md.contains("## The design's floor: ours vs kernel VXLAN"),
            "{md}"
        );
        // 1.0 + 4 × 0.05 = 1.2; ours 1.3: 1.08× (met); no TCP 4 figures.
        assert!(
            md.contains("| 1 | 1.00 | 0.200 | 1.20 | 1.30 | 1.08× | ✅ met |"),
            "{md}"
        );
        assert!(md.contains("| 4 | — | — | — | — | — | no data |"), "{md}");
    }

    #[test]
    fn udp_loss_is_shown_stage_by_stage() {
        let md = render(&sample_run(), "chart.svg");
        assert!(
            md.contains("## Where unpaced UDP datagrams were lost"),
            "{md}"
        );
        assert!(
            md.contains("| ours | 1 | 64 | 1000 | 600 | 500 | 0 | 0 | 0 | 90 | 10 |"),
            "{md}"
        );
    }
}
