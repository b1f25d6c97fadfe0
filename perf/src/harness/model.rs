//! What one harness run produces (pure): the variants, the metrics, every raw sample, their
//! summaries, and the machine it ran on. Serialised as-is to `perf/results/<stamp>.json`
//! (non-finite numbers, e.g. an infinite worker spread, become `null` there).

use std::collections::BTreeMap;

use serde::Serialize;

use super::iperf::{TcpResult, UdpResult};
use super::ping::PingResult;
use super::placement::Placement;
use super::profile::Profile;
use super::udpsearch::UdpSearch;
use crate::report::summary::{summarize, Summary};

/// One whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub started_utc: String,
    pub finished_utc: String,
    /// The command line that produced this run.
    pub command: String,
    pub quick: bool,
    pub repeats: usize,
    /// Duration of each iperf3 test.
    pub test_seconds: u32,
    pub ping_count: u32,
    pub machine: Machine,
    /// One memcpy of a GB on this machine, for the design's floor ([`super::floor`]).
    pub copy_cost: Option<super::floor::CopyCost>,
    pub testbed: Testbed,
    pub variants: Vec<VariantResult>,
}

/// Where the run happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub git_commit: String,
    /// Uncommitted changes in the work tree when the run started.
    pub git_dirty: Option<bool>,
    pub iperf3: String,
    /// `/proc/loadavg` at start and end: a hint of how noisy the machine was.
    pub loadavg_start: String,
    pub loadavg_end: String,
}

/// The testbed's shape.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Testbed {
    pub underlay_mtu: u32,
    /// Overlay MTU of ours (underlay − 28).
    pub ours_mtu: u32,
    /// Overlay MTU of the VXLAN variant (underlay − 50).
    pub vxlan_mtu: u32,
    /// Data-plane workers per host (the ours variants).
    pub workers: Option<usize>,
    /// How each variant is wired, in words (also printed in the Markdown).
    pub notes: Vec<String>,
}

/// One variant's samples and summaries.
#[derive(Debug, Clone, Serialize)]
pub struct VariantResult {
    /// Stable id: `ours`, `ours-express`, `ours-no-offload`, `ours-no-io-uring`, `ours-tun-readiness`, `ours-flow-steering`, `vxlan`, `bare`.
    pub id: String,
    /// Column header.
    pub label: String,
    pub description: String,
    /// Why this variant was not measured (e.g. the binary lacks the flag).
    pub unavailable: Option<String>,
    pub samples: Vec<Sample>,
    /// Metric key → summary over the samples.
    pub summary: BTreeMap<String, Summary>,
}

impl VariantResult {
    pub fn new(id: &str, label: &str, description: &str) -> Self {
        Self {
            id: id.into(),
            label: label.into(),
            description: description.into(),
            unavailable: None,
            samples: Vec::new(),
            summary: BTreeMap::new(),
        }
    }

    /// A variant with one sample per repeat holding the given metric values (`values[i].1[r]`
    /// is repeat r + 1's value of metric `values[i].0`), summarised (tests).
    #[cfg(test)]
    pub(crate) fn from_repeats(
        id: &str,
        label: &str,
        description: &str,
        values: &[(&str, &[f64])],
    ) -> Self {
        let mut v = Self::new(id, label, description);
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
        v.summarize();
        v
    }

    /// Recomputes `summary` from the samples.
    pub fn summarize(&mut self) {
        let mut by_key: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for s in &self.samples {
            for (k, v) in &s.metrics {
                by_key.entry(k).or_default().push(*v);
            }
        }
        self.summary = by_key
            .into_iter()
            .filter_map(|(k, v)| summarize(&v).map(|s| (k.to_string(), s)))
            .collect();
    }

    pub fn median(&self, key: impl AsRef<str>) -> Option<f64> {
        self.summary.get(key.as_ref()).map(|s| s.median)
    }

    pub fn errors(&self) -> impl Iterator<Item = (usize, &str)> {
        self.samples
            .iter()
            .flat_map(|s| s.errors.iter().map(move |e| (s.repeat, e.as_str())))
    }
}

/// One repeat of one variant: every raw measurement and the metrics derived from them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// 1-based.
    pub repeat: usize,
    /// Metric key → value (see [`MetricKey`](super::metric::MetricKey)).
    pub metrics: BTreeMap<String, f64>,
    pub tcp: Vec<TcpSample>,
    /// The unpaced UDP tests (`-b 0`).
    pub udp: Vec<UdpResult>,
    /// Where their lost datagrams went (ours and VXLAN).
    pub udp_loss: Vec<super::udploss::UdpLoss>,
    /// The paced searches for the highest clean rate (first `--udp-search-repeats` repeats).
    pub udp_search: Vec<UdpSearch>,
    pub ping: Option<PingResult>,
    /// Per-worker counter deltas during the 4-stream TCP test (ours only).
    pub workers: Vec<WorkerDeltas>,
    /// `--profile` (first repeat of ours, VXLAN and bare).
    pub profile: Option<Profile>,
    pub errors: Vec<String>,
}

/// One TCP test with the CPU time it cost.
#[derive(Debug, Clone, Serialize)]
pub struct TcpSample {
    #[serde(flatten)]
    pub iperf: TcpResult,
    /// flanneld + flannel-dataplane on both hosts, utime + stime (ours only).
    pub our_cpu_s: Option<f64>,
    /// All CPUs of the machine, busy time.
    pub machine_cpu_s: Option<f64>,
    /// Each CPU's busy share during the test, in CPU order (%).
    pub cpu_busy_pct: Vec<f64>,
    /// Where the iperf3 processes and the data planes' threads ran.
    pub placement: Option<Placement>,
}

/// One host's per-worker counter deltas.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerDeltas {
    /// 1-based host index in the testbed.
    pub host: usize,
    /// `sender` (iperf3 client side) or `receiver`.
    pub role: String,
    /// Counter name → delta per worker.
    pub counters: BTreeMap<String, Vec<u64>>,
}

impl Run {
    pub fn variant(&self, id: &str) -> Option<&VariantResult> {
        self.variants.iter().find(|v| v.id == id)
    }
}

/// Civil UTC date and time of a Unix time: (year, month, day, hour, minute, second).
pub fn utc_parts(unix_secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (unix_secs / 86_400) as i64;
    let sod = unix_secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (sod / 3600) as u32,
        (sod % 3600 / 60) as u32,
        (sod % 60) as u32,
    )
}

/// `2026-11-27T19:05:00Z`.
pub fn iso_utc(unix_secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(unix_secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `20261127T190500Z` (file names).
pub fn file_stamp(unix_secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(unix_secs);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        // `date -u -d @1795805980` (the captured iperf3 sample's timestamp).
        assert_eq!(iso_utc(1_795_805_980), "2026-11-27T18:59:40Z");
        assert_eq!(file_stamp(1_795_805_980), "20261127T185940Z");
        assert_eq!(iso_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso_utc(1_709_251_199), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn variant_summaries_come_from_samples() {
        let mut v = VariantResult::new("ours", "ours", "");
        for (i, x) in [3.0, 1.0, 2.0].into_iter().enumerate() {
            let mut s = Sample {
                repeat: i + 1,
                ..Default::default()
            };
            s.metrics.insert("tcp1_gbps".into(), x);
            if i == 0 {
                s.errors.push("ping failed".into());
            }
            v.samples.push(s);
        }
        v.summarize();
        let s = v.summary["tcp1_gbps"];
        assert_eq!((s.n, s.median, s.min, s.max), (3, 2.0, 1.0, 3.0));
        assert_eq!(v.median("tcp1_gbps"), Some(2.0));
        assert_eq!(v.median("rtt_median_ms"), None);
        assert_eq!(v.errors().collect::<Vec<_>>(), vec![(1, "ping failed")]);
    }

    #[test]
    fn infinity_serialises_as_null() {
        let mut s = Sample::default();
        s.metrics.insert("rx_worker_spread".into(), f64::INFINITY);
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"rx_worker_spread\":null"), "{j}");
    }
}
