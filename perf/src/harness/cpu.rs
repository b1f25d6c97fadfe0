//! CPU time accounting from `/proc` (parsing is pure; the readers are thin).
//!
//! Per process: utime + stime from `/proc/<pid>/stat` (fields 14 and 15, in clock ticks of
//! [`clk_tck`] per second; the values of the thread-group leader cover all its threads). Per
//! thread: the CPU it last ran on (field 39 of `/proc/<pid>/task/<tid>/stat`) and its
//! nanoseconds on a CPU (`schedstat`), for [`super::placement`]. This is
//! the one parser of those files in the workspace (the perf harness, `flannel-scale` and the
//! data plane's namespace tests use it). Whole machine: the first `cpu`
//! line of `/proc/stat`, busy = user + nice + system + irq + softirq + steal; each CPU: the
//! `cpuN` lines, same sum (a test bound by one CPU shows as one CPU near 100 % while the
//! machine-wide figure says there is room).
//!
//! What this misses: kernel work done in softirq context on behalf of a process (e.g. UDP
//! receive processing) is charged to whichever task the CPU was running, not necessarily ours,
//! so "our CPU seconds" is a lower bound; the machine-wide figure catches everything (and
//! everything else that runs, e.g. a build, hence noisy).

use std::path::Path;

/// The command name (field 2) and the fields from 3 (state) on of a `/proc/<pid>/stat` or
/// `/proc/<pid>/task/<tid>/stat` text: field N is `rest[N - 3]`.
fn stat_fields(text: &str) -> Option<(&str, Vec<&str>)> {
    // The command name is in parentheses and may contain spaces or ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?;
    Some((comm, text[close + 1..].split_whitespace().collect()))
}

/// utime + stime in clock ticks from the text of `/proc/<pid>/stat`.
pub fn parse_pid_stat(text: &str) -> Option<u64> {
    let (_, f) = stat_fields(text)?;
    // utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The command name and field 39 (`processor`: the CPU the thread last ran on) from the text
/// of `/proc/<pid>/task/<tid>/stat`.
pub fn parse_task_stat(text: &str) -> Option<(String, usize)> {
    let (comm, f) = stat_fields(text)?;
    Some((comm.to_string(), f.get(36)?.parse().ok()?))
}

/// Nanoseconds on a CPU (the first field) from the text of `/proc/<pid>/task/<tid>/schedstat`.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Machine-wide CPU ticks (all CPUs) from `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    parse_cpu_line(text.lines().find(|l| l.starts_with("cpu "))?)
}

/// Parses the per-CPU lines (`cpu0`, `cpu1`, …) of `/proc/stat`, in the order listed; `None`
/// if one of them is malformed.
pub fn parse_proc_stat_per_cpu(text: &str) -> Option<Vec<CpuTimes>> {
    text.lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .map(parse_cpu_line)
        .collect()
}

/// Busy share of each CPU between two per-CPU readings, in percent (CPUs matched by
/// position; a CPU with no ticks in between counts as 0 %).
pub fn busy_percent(before: &[CpuTimes], after: &[CpuTimes]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a.total.saturating_sub(b.total);
            if total == 0 {
                0.0
            } else {
                100.0 * a.busy.saturating_sub(b.busy) as f64 / total as f64
            }
        })
        .collect()
}

/// One `cpu…` line: busy and total ticks.
fn parse_cpu_line(line: &str) -> Option<CpuTimes> {
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice] (guest is in user).
    if v.len() < 8 {
        return None;
    }
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Some(CpuTimes {
        busy,
        total: busy + v[3] + v[4],
    })
}

/// utime + stime of process `pid` in ticks; `None` when it is gone.
pub fn process_ticks(pid: u32) -> Option<u64> {
    parse_pid_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Machine-wide CPU ticks now.
pub fn system_ticks() -> Option<CpuTimes> {
    parse_proc_stat(&std::fs::read_to_string(Path::new("/proc/stat")).ok()?)
}

/// Each CPU's ticks now.
pub fn per_cpu_ticks() -> Option<Vec<CpuTimes>> {
    parse_proc_stat_per_cpu(&std::fs::read_to_string(Path::new("/proc/stat")).ok()?)
}

/// utime + stime in ticks of process `pid` and of every process below it (for a process that
/// runs the real work in a child, e.g. an `ip netns exec` that forks); processes gone meanwhile
/// count as 0.
pub fn process_tree_ticks(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        total += process_ticks(p).unwrap_or(0);
        if let Ok(ch) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            stack.extend(ch.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
        }
    }
    total
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat` and `/proc/stat`
/// (`sysconf(_SC_CLK_TCK)`, USER_HZ).
pub fn clk_tck() -> f64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        other => panic!("sysconf(_SC_CLK_TCK): {other:?}"),
    }
}

/// CPU seconds from clock ticks (see [`clk_tck`]).
pub fn ticks_to_seconds(ticks: u64) -> f64 {
    ticks as f64 / clk_tck()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_stat_with_a_tricky_name() {
        // Captured from /proc/<pid>/stat, comm altered to contain ") (".
        let text = "4242 (flannel) (x y) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    731 269 0 0 20 0 3 0 123456 1000000 500 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(parse_pid_stat(text), Some(1000));
    }

    #[test]
    fn task_stat_processor_and_schedstat() {
        // Captured from /proc/self/task/<tid>/stat (`cat`), comm altered to contain ") (":
        // field 39 (processor) is 1.
        let text =
            "5495 (fdp) (worker-0) R 5493 5493 4193 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 \
                    2149474 3133440 358 18446744073709551615 94861324210176 94861324230057 \
                    140735739701600 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94861324246064\n";
        assert_eq!(
            parse_task_stat(text),
            Some(("fdp) (worker-0".to_string(), 1))
        );
        assert_eq!(parse_task_stat("12 (x) S 1 2"), None);
        // /proc/<pid>/task/<tid>/schedstat: run ns, wait ns, timeslices.
        assert_eq!(parse_schedstat("1182026 116919 1\n"), Some(1_182_026));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn pid_stat_garbage() {
        assert_eq!(parse_pid_stat(""), None);
        assert_eq!(parse_pid_stat("12 (x) S 1 2"), None);
    }

    #[test]
    fn proc_stat_aggregate_line() {
        let text = "cpu  100 5 50 1000 20 3 7 2 0 0\n\
                    cpu0 50 2 25 500 10 1 3 1 0 0\n\
                    intr 12345\n";
        let t = parse_proc_stat(text).unwrap();
        assert_eq!(t.busy, 100 + 5 + 50 + 3 + 7 + 2);
        assert_eq!(t.total, t.busy + 1000 + 20);
        assert_eq!(parse_proc_stat("cpu0 1 2 3\n"), None);
    }

    #[test]
    fn proc_stat_per_cpu_lines_and_busy_share() {
        let before = "cpu  300 0 100 1600 0 0 0 0 0 0\n\
                      cpu0 200 0 50 750 0 0 0 0 0 0\n\
                      cpu1 100 0 50 850 0 0 0 0 0 0\n\
                      cpufreq 1\n\
                      intr 12345\n";
        let after = "cpu  500 0 200 1700 0 0 0 0 0 0\n\
                     cpu0 350 0 95 755 0 0 0 0 0 0\n\
                     cpu1 150 0 105 945 0 0 0 0 0 0\n";
        let b = parse_proc_stat_per_cpu(before).unwrap();
        let a = parse_proc_stat_per_cpu(after).unwrap();
        assert_eq!(
            b.len(),
            2,
            "the aggregate line and non-numbered cpu* lines are skipped"
        );
        assert_eq!(
            b[0],
            CpuTimes {
                busy: 250,
                total: 1000
            }
        );
        // cpu0: 195 busy of 200 ticks; cpu1: 105 busy of 200.
        assert_eq!(busy_percent(&b, &a), vec![97.5, 52.5]);
        assert_eq!(busy_percent(&b, &b), vec![0.0, 0.0]);
        assert_eq!(parse_proc_stat_per_cpu("cpu0 1 2\n"), None);
    }

    #[test]
    fn live_proc_reads_work() {
        assert!(process_ticks(std::process::id()).is_some());
        assert!(system_ticks().is_some_and(|t| t.total >= t.busy));
        assert!(per_cpu_ticks().is_some_and(|c| !c.is_empty()));
        assert!(clk_tck() > 0.0);
        let own = process_ticks(std::process::id()).unwrap();
        assert!(process_tree_ticks(std::process::id()) >= own);
    }
}
