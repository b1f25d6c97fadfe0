//! Where the time goes (pure): the `--profile` part of the harness, which answers "why is a
//! target not met" with numbers from the same run.
//!
//! - **TCP 1 stream under `perf record -a`** (cpu-clock sampling on every CPU, so idle time is
//!   sampled too): `perf report --sort comm,sym` is parsed ([`parse_report`]) and every sample
//!   put in one [`Category`] ([`categorize`]). A category's share of all samples times the
//!   recorded wall time times the CPU count is its CPU time; divided by the GB iperf3 moved, its
//!   cost per byte — comparable across variants in the same run.
//! - **ping with tracepoints recorded** (`sched:sched_switch`, `raw_syscalls:sys_enter`, `perf
//!   record -a` for one second while pinging, and one quiet second before): the events of the
//!   threads a round trip runs in ([`path_group`]), background subtracted, divided by the echo
//!   requests sent in the window ([`PingProfile`]): what one round trip costs in context
//!   switches and syscalls.
//!
//! Data-plane threads are recognised by name (`fdp-worker-N`, set by flannel-dataplane), the
//! load generator by `iperf3`; copies by the kernel's user-copy routines; idle by the idle
//! loop's functions.

use std::collections::BTreeMap;

use serde::Serialize;

/// One line of `perf report --stdio --no-children --sort comm,sym -t '|' -q`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportLine {
    /// Share of all samples, percent.
    pub percent: f64,
    pub comm: String,
    /// `true` for kernel symbols (`[k]`).
    pub kernel: bool,
    pub symbol: String,
}

/// Parses `perf report ... -t '|'` output; lines that are not `pct%|comm|[x] sym` are skipped.
pub fn parse_report(text: &str) -> Vec<ReportLine> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split('|');
            let pct = f
                .next()?
                .trim()
                .strip_suffix('%')?
                .trim()
                .parse::<f64>()
                .ok()?;
            let comm = f.next()?.trim().to_string();
            let sym = f.next()?.trim();
            let (kernel, symbol) = if let Some(s) = sym.strip_prefix("[k]") {
                (true, s)
            } else if let Some(s) = sym.strip_prefix("[.]") {
                (false, s)
            } else {
                return None;
            };
            (pct.is_finite() && !comm.is_empty()).then(|| ReportLine {
                percent: pct,
                comm,
                kernel,
                symbol: symbol.trim().to_string(),
            })
        })
        .collect()
}

/// Where a sample's CPU time went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// The idle loop (a halted CPU).
    Idle,
    /// Data-plane threads in the kernel's user/kernel copy routines (TUN read/write, UDP
    /// send/receive).
    DataplaneCopies,
    /// Data-plane threads copying or checksumming in user space (split, coalesce).
    DataplaneUserCopy,
    /// Everything else the data-plane threads ran (kernel and user), including the kernel work
    /// their syscalls carry, such as the inner packet's delivery on a TUN write.
    DataplaneOther,
    /// iperf3 in the user/kernel copy routines (its own send and receive copies).
    AppCopies,
    /// Everything else in iperf3's context: its TCP stack, and softirq work it happened to run.
    AppOther,
    /// Anything else: softirq on an otherwise idle CPU, ksoftirqd, kworkers, etcd, flanneld.
    Other,
}

impl Category {
    pub const ALL: [Category; 7] = [
        Category::DataplaneCopies,
        Category::DataplaneUserCopy,
        Category::DataplaneOther,
        Category::AppCopies,
        Category::AppOther,
        Category::Other,
        Category::Idle,
    ];

    /// Stable key (JSON) .
    pub fn key(self) -> &'static str {
        match self {
            Category::Idle => "idle",
            Category::DataplaneCopies => "dataplane_copies",
            Category::DataplaneUserCopy => "dataplane_user_copy_csum",
            Category::DataplaneOther => "dataplane_other",
            Category::AppCopies => "iperf3_copies",
            Category::AppOther => "iperf3_other",
            Category::Other => "other",
        }
    }

    /// Row label (Markdown).
    pub fn label(self) -> &'static str {
        match self {
            Category::Idle => "idle",
            Category::DataplaneCopies => "data plane: user↔kernel copies (TUN read/write, UDP send/receive)",
            Category::DataplaneUserCopy => "data plane: user-space copy + checksum (split, coalesce)",
            Category::DataplaneOther => "data plane: everything else (syscalls, the stack work they carry, wake-ups, our code)",
            Category::AppCopies => "iperf3: user↔kernel copies",
            Category::AppOther => "iperf3: everything else (its TCP, softirq it ran)",
            Category::Other => "other (softirq on idle CPUs, ksoftirqd, kworkers, etcd, flanneld)",
        }
    }
}

/// Thread names flannel-dataplane gives its workers.
fn is_dataplane(comm: &str) -> bool {
    comm.starts_with("fdp-")
}

fn is_user_copy(symbol: &str) -> bool {
    [
        "copy_to_iter",
        "copy_from_iter",
        "copy_user",
        "rep_movs_alternative",
    ]
    .iter()
    .any(|p| symbol.contains(p))
}

fn is_idle(symbol: &str) -> bool {
    [
        "safe_halt",
        "default_idle",
        "cpu_idle_poll",
        "poll_idle",
        "intel_idle",
        "acpi_idle",
        "mwait_idle",
        "haltpoll",
    ]
    .iter()
    .any(|p| symbol.contains(p))
}

/// The category of one report line.
pub fn category(l: &ReportLine) -> Category {
    if l.kernel && is_idle(&l.symbol) {
        Category::Idle
    } else if is_dataplane(&l.comm) {
        if l.kernel && is_user_copy(&l.symbol) {
            Category::DataplaneCopies
        } else if !l.kernel
            && ["memmove", "memcpy", "checksum"]
                .iter()
                .any(|p| l.symbol.contains(p))
        {
            Category::DataplaneUserCopy
        } else {
            Category::DataplaneOther
        }
    } else if l.comm == "iperf3" {
        if l.kernel && is_user_copy(&l.symbol) {
            Category::AppCopies
        } else {
            Category::AppOther
        }
    } else {
        Category::Other
    }
}

/// Share (0..=1) of all samples per category; every category present (0 when none).
pub fn categorize(lines: &[ReportLine]) -> BTreeMap<&'static str, f64> {
    let mut out: BTreeMap<&'static str, f64> =
        Category::ALL.iter().map(|c| (c.key(), 0.0)).collect();
    for l in lines {
        *out.entry(category(l).key()).or_default() += l.percent / 100.0;
    }
    out
}

/// One profiled TCP test (1 or 4 streams).
#[derive(Debug, Clone, Serialize)]
pub struct TcpProfile {
    pub gbit_per_s: f64,
    /// GB (1e9 bytes) the receiver got.
    pub gb: f64,
    /// How long perf recorded.
    pub wall_s: f64,
    pub cpus: usize,
    /// Category key → share of all samples (0..=1).
    pub shares: BTreeMap<String, f64>,
    /// Category key → CPU seconds per GB moved (share × wall × CPUs ÷ GB).
    pub s_per_gb: BTreeMap<String, f64>,
    /// The hottest report lines, for the reader who wants the symbols.
    pub top: Vec<ReportLine>,
}

impl TcpProfile {
    pub fn new(lines: &[ReportLine], gbit_per_s: f64, gb: f64, wall_s: f64, cpus: usize) -> Self {
        let shares = categorize(lines);
        let cpu_s = wall_s * cpus as f64;
        let s_per_gb = shares
            .iter()
            .filter(|_| gb > 0.0)
            .map(|(k, v)| (k.to_string(), v * cpu_s / gb))
            .collect();
        let mut top = lines.to_vec();
        top.sort_by(|a, b| b.percent.total_cmp(&a.percent));
        top.truncate(15);
        Self {
            gbit_per_s,
            gb,
            wall_s,
            cpus,
            shares: shares
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            s_per_gb,
            top,
        }
    }

    /// Busy CPU seconds per GB (everything but idle).
    pub fn busy_s_per_gb(&self) -> Option<f64> {
        (self.gb > 0.0).then(|| {
            let idle = self
                .shares
                .get(Category::Idle.key())
                .copied()
                .unwrap_or(0.0);
            (1.0 - idle) * self.wall_s * self.cpus as f64 / self.gb
        })
    }
}

/// The recorded span from `perf report --header-only` (`# sample duration :  6006.119 ms`).
pub fn sample_duration_s(header: &str) -> Option<f64> {
    header.lines().find_map(|l| {
        let rest = l
            .strip_prefix('#')?
            .trim()
            .strip_prefix("sample duration")?;
        let ms = rest
            .trim()
            .strip_prefix(':')?
            .trim()
            .strip_suffix("ms")?
            .trim();
        ms.parse::<f64>().ok().filter(|v| *v > 0.0).map(|v| v / 1e3)
    })
}

/// The tracepoints recorded during the ping profile.
pub const PING_EVENTS: [&str; 2] = ["sched:sched_switch", "raw_syscalls:sys_enter"];

/// The threads a ping's round trip runs in, by name: `ping`, the data-plane workers, the idle
/// task (a switch from idle is a CPU waking up) and the softirq threads. Others (etcd,
/// flanneld, iptables runs, kworkers) are background and not counted.
pub fn path_group(comm: &str) -> Option<&'static str> {
    if comm == "ping" {
        Some("ping")
    } else if is_dataplane(comm) {
        Some("data plane")
    } else if comm == "swapper" || comm.starts_with("swapper/") {
        Some("idle")
    } else if comm.starts_with("ksoftirqd/") {
        Some("softirq")
    } else {
        None
    }
}

/// Event counts of one recorded window (`perf script -F comm,event,trace`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WindowCounts {
    /// `"<group> <event>"` → count, for the [`path_group`] threads.
    pub events: BTreeMap<String, u64>,
    /// Echo requests ping sent in the window (its `sendto` syscalls).
    pub pings: u64,
    pub seconds: f64,
}

/// Counts the [`PING_EVENTS`] of the path threads in `perf script -F comm,event,trace`
/// output; `sendto_nr` is this architecture's `sendto` syscall number (ping's send).
pub fn parse_script(text: &str, sendto_nr: i64, seconds: f64) -> WindowCounts {
    let mut c = WindowCounts {
        seconds,
        ..Default::default()
    };
    for line in text.lines() {
        let Some((event, at)) = PING_EVENTS
            .iter()
            .find_map(|e| line.find(&format!(" {e}:")).map(|at| (*e, at)))
        else {
            continue;
        };
        let comm = line[..at].trim();
        let Some(group) = path_group(comm) else {
            continue;
        };
        *c.events.entry(format!("{group} {event}")).or_default() += 1;
        if group == "ping" && event == "raw_syscalls:sys_enter" {
            let rest = &line[at + event.len() + 2..];
            let nr = rest
                .split_whitespace()
                .skip_while(|w| *w != "NR")
                .nth(1)
                .and_then(|n| n.parse::<i64>().ok());
            if nr == Some(sendto_nr) {
                c.pings += 1;
            }
        }
    }
    c
}

/// One profiled ping run: a window while pinging and a quiet one before it.
#[derive(Debug, Clone, Serialize)]
pub struct PingProfile {
    pub during: WindowCounts,
    pub quiet: WindowCounts,
    /// Row key ([`PingProfile::ROWS`]) → events per round trip: (count while pinging − the
    /// quiet rate over the same time) ÷ pings sent in the window.
    pub per_round_trip: BTreeMap<String, f64>,
}

impl PingProfile {
    /// The reported rows: key, label, and the groups summed.
    pub const ROWS: [(
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static str,
    ); 3] = [
        (
            "switches_all",
            "context switches (ping, data plane, idle, softirq threads)",
            &["ping", "data plane", "idle", "softirq"],
            "sched:sched_switch",
        ),
        (
            "switches_dataplane",
            "context switches of data-plane workers",
            &["data plane"],
            "sched:sched_switch",
        ),
        (
            "syscalls_dataplane",
            "syscalls of data-plane workers",
            &["data plane"],
            "raw_syscalls:sys_enter",
        ),
    ];

    pub fn new(during: WindowCounts, quiet: WindowCounts) -> Self {
        let mut per_round_trip = BTreeMap::new();
        if during.pings > 0 && during.seconds > 0.0 && quiet.seconds > 0.0 {
            for (key, _, groups, event) in Self::ROWS {
                let sum = |w: &WindowCounts| -> f64 {
                    groups
                        .iter()
                        .map(|g| w.events.get(&format!("{g} {event}")).copied().unwrap_or(0) as f64)
                        .sum()
                };
                let background = sum(&quiet) * during.seconds / quiet.seconds;
                per_round_trip.insert(
                    key.to_string(),
                    ((sum(&during) - background) / during.pings as f64).max(0.0),
                );
            }
        }
        Self {
            during,
            quiet,
            per_round_trip,
        }
    }
}

/// What `--profile` recorded for one variant (first repeat only).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Profile {
    pub tcp1: Option<TcpProfile>,
    /// The same for 4 parallel streams (where the CPU per GB grows with flows).
    pub tcp4: Option<TcpProfile>,
    pub ping: Option<PingProfile>,
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `perf report --stdio --no-children --sort comm,sym -t '|' -q` of a
    /// 1-stream iperf3 through ours on this testbed (a few lines, plus noise to skip).
    const REPORT: &str = " 22.46% |swapper        |[k] pv_native_safe_halt
 6.15%  |fdp-worker-1   |[k] _copy_to_iter
 5.63%  |iperf3         |[k] _copy_from_iter
 4.28%  |fdp-worker-1   |[k] _copy_from_iter
 2.79%  |fdp-worker-1   |[k] _raw_spin_unlock_irqrestore
 2.68%  |fdp-worker-1   |[.] __memmove_avx_unaligned_erms
 2.25%  |iperf3         |[k] _copy_to_iter
 1.96%  |fdp-worker-1   |[.] flannel_dataplane::packet::checksum_add
 0.90%  |swapper        |[k] handle_softirqs
 0.50%  |iperf3         |[k] tcp_sendmsg_locked
 0.40%  |fdp-worker-0   |[.] flannel_dataplane::worker::uring::run
 0.30%  |kworker/0:1-ev |[k] finish_task_switch.isra.0

# garbage
 n/a    |x|y
";

    #[test]
    fn report_lines_parse() {
        let l = parse_report(REPORT);
        assert_eq!(l.len(), 12);
        assert_eq!(
            l[0],
            ReportLine {
                percent: 22.46,
                comm: "swapper".into(),
                kernel: true,
                symbol: "pv_native_safe_halt".into()
            }
        );
        assert!(!l[5].kernel);
        assert_eq!(l[5].symbol, "__memmove_avx_unaligned_erms");
        assert_eq!(l[11].comm, "kworker/0:1-ev");
    }

    #[test]
    fn samples_fall_in_their_categories() {
        let shares = categorize(&parse_report(REPORT));
        let near = |k: &str, v: f64| {
            assert!((shares[k] - v).abs() < 1e-9, "{k}: {} vs {v}", shares[k]);
        };
        near("idle", 0.2246);
        near("dataplane_copies", 0.0615 + 0.0428);
        near("dataplane_user_copy_csum", 0.0268 + 0.0196);
        near("dataplane_other", 0.0279 + 0.0040);
        near("iperf3_copies", 0.0563 + 0.0225);
        near("iperf3_other", 0.0050);
        near("other", 0.0090 + 0.0030);
        assert_eq!(shares.len(), Category::ALL.len());
    }

    #[test]
    fn cost_per_gb_is_share_times_cpu_time_over_bytes() {
        let lines = parse_report(REPORT);
        // 6 s on 2 CPUs = 12 CPU-seconds; 3 GB moved.
        let p = TcpProfile::new(&lines, 4.0, 3.0, 6.0, 2);
        let copies = p.s_per_gb["dataplane_copies"];
        assert!((copies - (0.0615 + 0.0428) * 12.0 / 3.0).abs() < 1e-9);
        let busy = p.busy_s_per_gb().unwrap();
        assert!((busy - (1.0 - 0.2246) * 12.0 / 3.0).abs() < 1e-9);
        assert_eq!(p.top[0].symbol, "pv_native_safe_halt");
        assert!(p.top.len() <= 15);
        // Nothing moved: no cost per GB rather than infinity.
        let none = TcpProfile::new(&lines, 0.0, 0.0, 6.0, 2);
        assert!(none.s_per_gb.is_empty());
        assert_eq!(none.busy_s_per_gb(), None);
    }

    #[test]
    fn sample_duration_from_the_header() {
        let h = "# time of first sample : 38651.742966\n# time of last sample : 38657.749085\n# sample duration :   6006.119 ms\n";
        assert_eq!(sample_duration_s(h), Some(6.006119));
        assert_eq!(sample_duration_s("# captured on: x\n"), None);
        assert_eq!(sample_duration_s("# sample duration :  0 ms\n"), None);
    }

    #[test]
    fn script_windows_and_round_trip_arithmetic() {
        // `perf script -F comm,event,trace` lines (x86_64: sendto is 44), plus background.
        let text = "            ping raw_syscalls:sys_enter: NR 44 (3, 55f1f91e4b80, 40, 0)
            ping raw_syscalls:sys_enter: NR 47 (3, 7ffe66dea7c0, 0, 0)
            ping     sched:sched_switch: prev_comm=ping prev_pid=9554 ==> next_comm=fdp-worker-0
    fdp-worker-0 raw_syscalls:sys_enter: NR 426 (e, 1, 1, 1, 0, 80)
    fdp-worker-0 raw_syscalls:sys_enter: NR 0 (3, 7fb07c16afd0, 1000a)
    fdp-worker-0     sched:sched_switch: prev_comm=fdp-worker-0 ==> next_comm=ping
         swapper     sched:sched_switch: prev_comm=swapper/0 ==> next_comm=ping
            etcd     sched:sched_switch: prev_comm=etcd ==> next_comm=swapper/1
            etcd raw_syscalls:sys_enter: NR 202 (1, 2, 3)
            ping raw_syscalls:sys_enter: NR 44 (3, 55f1f91e4b80, 40, 0)
";
        let w = parse_script(text, 44, 1.0);
        assert_eq!(w.pings, 2);
        assert_eq!(w.events["ping raw_syscalls:sys_enter"], 3);
        assert_eq!(w.events["data plane raw_syscalls:sys_enter"], 2);
        assert_eq!(w.events["data plane sched:sched_switch"], 1);
        assert_eq!(w.events["idle sched:sched_switch"], 1);
        assert!(
            !w.events.keys().any(|k| k.contains("etcd")),
            "background is not counted"
        );
        // One idle switch per 2 s in the quiet window: 0.5 of it is background here.
        let quiet = WindowCounts {
            events: [("idle sched:sched_switch".to_string(), 1)].into(),
            pings: 0,
            seconds: 2.0,
        };
        let p = PingProfile::new(w.clone(), quiet);
        // all switches: ping 1 + data plane 1 + idle 1 − 0.5 background, over 2 pings.
        assert_eq!(p.per_round_trip["switches_all"], 1.25);
        assert_eq!(p.per_round_trip["switches_dataplane"], 0.5);
        assert_eq!(p.per_round_trip["syscalls_dataplane"], 1.0);
        // No ping in the window: nothing per round trip.
        let none = PingProfile::new(WindowCounts { pings: 0, ..w }, WindowCounts::default());
        assert!(none.per_round_trip.is_empty());
    }
}
