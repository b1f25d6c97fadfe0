//! Where the threads of a test ran (the pure core, unit-tested, and a thin `/proc` sampler).
//!
//! While a test runs, a [`Sampler`] thread reads every [`SAMPLE_EVERY`] for each watched
//! process ([`Watch`]) and each of its threads `/proc/<pid>/task/<tid>/stat` (the name, and
//! field 39 `processor`: the CPU the thread last ran on) and `/proc/<pid>/task/<tid>/schedstat`
//! (first field: nanoseconds on a CPU). [`attribute`] turns these [`Snapshot`]s into one
//! [`ThreadPlacement`] per label: CPU seconds per CPU and migrations.
//!
//! Contract of [`attribute`]:
//! - a thread's first sighting is its baseline (run time before it is not counted; a thread born
//!   during the test loses at most one interval);
//! - each later interval's run-time delta goes to the CPU the thread was seen on at the end of
//!   that interval (the CPU it last ran on; a thread that moved within an interval has the part
//!   before the move charged to the new CPU too: shares are exact only at the sampling grain);
//! - a migration is a change of that CPU between two consecutive sightings (moves and returns
//!   within one interval are not seen);
//! - threads with the same label are summed (e.g. all threads of one iperf3 process);
//! - labels marked `always` (the iperf3 processes, the data planes' `fdp-worker-N`) are always
//!   reported; others only if they used more than [`MIN_SHARE`] of the sampled wall time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cpu::{parse_schedstat, parse_task_stat};

/// Sampling interval.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Threads not marked `always` are reported only above this share of the wall time.
pub const MIN_SHARE: f64 = 0.01;
/// Name prefix of the data plane's worker threads.
pub const WORKER_PREFIX: &str = "fdp-worker-";

/// One thread at one sampling instant.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadSnap {
    pub tid: u32,
    /// What the report calls it (threads with the same label are summed).
    pub label: String,
    /// The thread's own name (`comm`).
    pub comm: String,
    /// Reported even when it hardly ran.
    pub always: bool,
    /// The CPU it last ran on.
    pub cpu: usize,
    /// Nanoseconds on a CPU since the thread started.
    pub run_ns: u64,
}

/// All watched threads at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Seconds since sampling started.
    pub at_s: f64,
    pub threads: Vec<ThreadSnap>,
}

/// Where one label's threads ran during a test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadPlacement {
    pub label: String,
    /// Thread names seen under this label.
    pub comms: Vec<String>,
    /// CPU seconds per CPU (index = CPU number).
    pub cpu_s: Vec<f64>,
    /// Changes of CPU between consecutive sightings, summed over the label's threads.
    pub migrations: u32,
}

impl ThreadPlacement {
    pub fn total_s(&self) -> f64 {
        self.cpu_s.iter().sum()
    }
}

/// The placement record of one test.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Placement {
    /// Time between the first and the last snapshot.
    pub wall_s: f64,
    pub snapshots: usize,
    pub interval_ms: u64,
    /// In the order the labels were first seen.
    pub threads: Vec<ThreadPlacement>,
}

impl Placement {
    pub fn get(&self, label: &str) -> Option<&ThreadPlacement> {
        self.threads.iter().find(|t| t.label == label)
    }

    /// Threads whose label starts with `prefix` (e.g. `h1 ` for host 1's data plane).
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a ThreadPlacement> {
        self.threads
            .iter()
            .filter(move |t| t.label.starts_with(prefix))
    }
}

/// Turns snapshots into per-label CPU time per CPU and migrations (see the module docs).
pub fn attribute(snaps: &[Snapshot], interval: Duration) -> Placement {
    struct Acc {
        comms: Vec<String>,
        always: bool,
        cpu_ns: BTreeMap<usize, u64>,
        migrations: u32,
    }
    let mut order: Vec<String> = Vec::new();
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    // tid → (cpu, run_ns) at its last sighting.
    let mut last: BTreeMap<u32, (usize, u64)> = BTreeMap::new();
    let mut ncpu = 0;
    for snap in snaps {
        for t in &snap.threads {
            ncpu = ncpu.max(t.cpu + 1);
            let a = acc.entry(t.label.clone()).or_insert_with(|| {
                order.push(t.label.clone());
                Acc {
                    comms: Vec::new(),
                    always: false,
                    cpu_ns: BTreeMap::new(),
                    migrations: 0,
                }
            });
            a.always |= t.always;
            if !a.comms.contains(&t.comm) {
                a.comms.push(t.comm.clone());
            }
            if let Some(&(cpu, ns)) = last.get(&t.tid) {
                *a.cpu_ns.entry(t.cpu).or_default() += t.run_ns.saturating_sub(ns);
                if cpu != t.cpu {
                    a.migrations += 1;
                }
            }
            last.insert(t.tid, (t.cpu, t.run_ns));
        }
    }
    let wall_s = match (snaps.first(), snaps.last()) {
        (Some(a), Some(b)) => (b.at_s - a.at_s).max(0.0),
        _ => 0.0,
    };
    let threads = order
        .into_iter()
        .filter_map(|label| {
            let a = acc.remove(&label)?;
            let mut cpu_s = vec![0.0; ncpu];
            for (c, ns) in &a.cpu_ns {
                cpu_s[*c] = *ns as f64 / 1e9;
            }
            let p = ThreadPlacement {
                label,
                comms: a.comms,
                cpu_s,
                migrations: a.migrations,
            };
            (a.always || p.total_s() > MIN_SHARE * wall_s).then_some(p)
        })
        .collect();
    Placement {
        wall_s,
        snapshots: snaps.len(),
        interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        threads,
    }
}

/// A process to watch.
#[derive(Debug, Clone)]
pub struct Watch {
    pub pid: u32,
    /// The label (`iperf3 client`), or with `per_thread` the prefix of each thread's label
    /// (`h1` → `h1 fdp-worker-0`).
    pub name: String,
    /// One label per thread name (a data plane) instead of one for the whole process.
    pub per_thread: bool,
}

impl Watch {
    fn label(&self, comm: &str) -> (String, bool) {
        if self.per_thread {
            (
                format!("{} {comm}", self.name),
                comm.starts_with(WORKER_PREFIX),
            )
        } else {
            (self.name.clone(), true)
        }
    }
}

/// Reads every thread of the watched processes now (threads that vanish meanwhile are left
/// out).
pub fn read_snapshot(watch: &[Watch], at_s: f64) -> Snapshot {
    let mut threads = Vec::new();
    for w in watch {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", w.pid)) else {
            continue;
        };
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let base = e.path();
            let stat = std::fs::read_to_string(base.join("stat"))
                .ok()
                .and_then(|t| parse_task_stat(&t));
            let run = std::fs::read_to_string(base.join("schedstat"))
                .ok()
                .and_then(|t| parse_schedstat(&t));
            if let (Some((comm, cpu)), Some(run_ns)) = (stat, run) {
                let (label, always) = w.label(&comm);
                threads.push(ThreadSnap {
                    tid,
                    label,
                    comm,
                    always,
                    cpu,
                    run_ns,
                });
            }
        }
    }
    Snapshot { at_s, threads }
}

/// A thread taking [`read_snapshot`]s every [`SAMPLE_EVERY`] until [`Sampler::finish`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Snapshot>>,
}

impl Sampler {
    pub fn start(watch: Vec<Watch>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut snaps = Vec::new();
            loop {
                let done = flag.load(Ordering::Relaxed);
                snaps.push(read_snapshot(&watch, t0.elapsed().as_secs_f64()));
                if done {
                    return snaps;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Self { stop, handle }
    }

    /// Takes a last snapshot, stops and returns the placement record.
    pub fn finish(self) -> Placement {
        self.stop.store(true, Ordering::Relaxed);
        let snaps = self.handle.join().unwrap_or_default();
        attribute(&snaps, SAMPLE_EVERY)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A thread sighting: `iperf3 …` and `… fdp-worker-N` labels are `always`; comm is the
    /// label's last word.
    pub(crate) fn t(tid: u32, label: &str, cpu: usize, run_ms: u64) -> ThreadSnap {
        ThreadSnap {
            tid,
            label: label.into(),
            comm: label.rsplit(' ').next().unwrap_or(label).into(),
            always: label.starts_with("iperf3") || label.contains(WORKER_PREFIX),
            cpu,
            run_ns: run_ms * 1_000_000,
        }
    }

    pub(crate) fn snap(at_s: f64, threads: Vec<ThreadSnap>) -> Snapshot {
        Snapshot { at_s, threads }
    }

    #[test]
    fn deltas_go_to_the_cpu_seen_at_the_end_of_each_interval() {
        // The client runs 40 ms per 50 ms interval; it moves from CPU 0 to CPU 1 in the third
        // interval and back in the fourth. Its run time before the first snapshot (500 ms)
        // is not counted.
        let snaps = vec![
            snap(0.00, vec![t(10, "iperf3 client", 0, 500)]),
            snap(0.05, vec![t(10, "iperf3 client", 0, 540)]),
            snap(0.10, vec![t(10, "iperf3 client", 0, 580)]),
            snap(0.15, vec![t(10, "iperf3 client", 1, 620)]),
            snap(0.20, vec![t(10, "iperf3 client", 0, 660)]),
        ];
        let p = attribute(&snaps, Duration::from_millis(50));
        assert_eq!(p.snapshots, 5);
        assert_eq!(p.interval_ms, 50);
        assert!((p.wall_s - 0.2).abs() < 1e-12);
        let c = p.get("iperf3 client").unwrap();
        assert_eq!(c.cpu_s.len(), 2);
        assert!((c.cpu_s[0] - 0.12).abs() < 1e-12, "{c:?}");
        assert!((c.cpu_s[1] - 0.04).abs() < 1e-12, "{c:?}");
        assert!((c.total_s() - 0.16).abs() < 1e-12);
        assert_eq!(c.migrations, 2);
        assert_eq!(c.comms, vec!["client".to_string()]);
    }

    #[test]
    fn threads_of_one_label_are_summed_and_late_threads_start_at_their_first_sighting() {
        // Two iperf3 client threads (one born at 0.05 s with 30 ms already run), two workers
        // of host 1 on different CPUs, one tokio thread that hardly ran and one that did.
        let snaps = vec![
            snap(
                0.0,
                vec![
                    t(10, "iperf3 client", 0, 0),
                    t(20, "h1 fdp-worker-0", 1, 1000),
                    t(21, "h1 fdp-worker-1", 0, 1000),
                    t(22, "h1 tokio-rt", 0, 50),
                    t(23, "h1 flannel-dataplane", 0, 7),
                ],
            ),
            snap(
                0.05,
                vec![
                    t(10, "iperf3 client", 0, 40),
                    t(11, "iperf3 client", 1, 30),
                    t(20, "h1 fdp-worker-0", 1, 1045),
                    t(21, "h1 fdp-worker-1", 0, 1000),
                    t(22, "h1 tokio-rt", 1, 52),
                    t(23, "h1 flannel-dataplane", 0, 7),
                ],
            ),
            snap(
                0.10,
                vec![
                    t(10, "iperf3 client", 0, 80),
                    t(11, "iperf3 client", 1, 60),
                    t(20, "h1 fdp-worker-0", 1, 1090),
                    // Worker 1 gone (e.g. read raced with exit): no more deltas for it.
                    t(22, "h1 tokio-rt", 1, 52),
                    t(23, "h1 flannel-dataplane", 0, 7),
                ],
            ),
        ];
        let p = attribute(&snaps, Duration::from_millis(50));
        let labels: Vec<&str> = p.threads.iter().map(|t| t.label.as_str()).collect();
        // tokio-rt: 2 ms of 100 ms (> 1 %) stays; the idle main thread (0 s) is dropped;
        // idle workers are always kept.
        assert_eq!(
            labels,
            vec![
                "iperf3 client",
                "h1 fdp-worker-0",
                "h1 fdp-worker-1",
                "h1 tokio-rt"
            ]
        );
        let c = p.get("iperf3 client").unwrap();
        // Thread 10: 80 ms on CPU 0; thread 11: 30 ms on CPU 1 (its first 30 ms are baseline).
        assert!((c.cpu_s[0] - 0.08).abs() < 1e-12 && (c.cpu_s[1] - 0.03).abs() < 1e-12);
        assert_eq!(c.migrations, 0);
        let w0 = p.get("h1 fdp-worker-0").unwrap();
        assert_eq!(w0.cpu_s, vec![0.0, 0.09]);
        assert_eq!(p.get("h1 fdp-worker-1").unwrap().total_s(), 0.0);
        let rt = p.get("h1 tokio-rt").unwrap();
        assert_eq!(rt.migrations, 1);
        assert!((rt.cpu_s[1] - 0.002).abs() < 1e-12);
        assert_eq!(p.with_prefix("h1 ").count(), 3);
    }

    #[test]
    fn nothing_sampled() {
        let p = attribute(&[], SAMPLE_EVERY);
        assert_eq!((p.wall_s, p.snapshots, p.threads.len()), (0.0, 0, 0));
        // One snapshot: baselines only.
        let p = attribute(
            &[snap(0.0, vec![t(1, "iperf3 server", 1, 9)])],
            SAMPLE_EVERY,
        );
        assert_eq!(p.get("iperf3 server").unwrap().cpu_s, vec![0.0, 0.0]);
    }

    #[test]
    fn labels_of_watched_processes() {
        let dp = Watch {
            pid: 1,
            name: "h2".into(),
            per_thread: true,
        };
        assert_eq!(
            dp.label("fdp-worker-3"),
            ("h2 fdp-worker-3".to_string(), true)
        );
        assert_eq!(dp.label("tokio-rt"), ("h2 tokio-rt".to_string(), false));
        let client = Watch {
            pid: 1,
            name: "iperf3 client".into(),
            per_thread: false,
        };
        assert_eq!(client.label("ip"), ("iperf3 client".to_string(), true));
    }

    #[test]
    fn sampler_sees_its_own_process() {
        let s = Sampler::start(vec![Watch {
            pid: std::process::id(),
            name: "me".into(),
            per_thread: true,
        }]);
        // Burn a little CPU so something is measured.
        let end = Instant::now() + Duration::from_millis(120);
        let mut x = 0u64;
        while Instant::now() < end {
            x = x.wrapping_add(1);
        }
        std::hint::black_box(x);
        let p = s.finish();
        assert!(p.snapshots >= 2, "{p:?}");
        assert!(
            p.threads.iter().map(ThreadPlacement::total_s).sum::<f64>() > 0.05,
            "{p:?}"
        );
    }
}
