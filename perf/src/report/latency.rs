//! Latency figures of a set of durations (pure): count, min, nearest-rank percentiles, max,
//! mean, and a histogram over power-of-two microsecond buckets.
//!
//! In JSON a [`LatencySummary`] is `{count, min_ms, p50_ms, p90_ms, p99_ms, max_ms, mean_ms}`.

use std::time::Duration;

use serde::{Serialize, Serializer};

/// p50/p99/max and friends of a set of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySummary {
    pub count: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises `samples`; all zero when there are none.
pub fn summarize(samples: &[Duration]) -> LatencySummary {
    let mut s = samples.to_vec();
    s.sort();
    let total: Duration = s.iter().sum();
    LatencySummary {
        count: s.len(),
        min: s.first().copied().unwrap_or_default(),
        p50: percentile(&s, 50.0),
        p90: percentile(&s, 90.0),
        p99: percentile(&s, 99.0),
        max: s.last().copied().unwrap_or_default(),
        mean: if s.is_empty() {
            Duration::ZERO
        } else {
            total / s.len() as u32
        },
    }
}

/// Log-spaced buckets (powers of two of microseconds): (upper bound in µs, count).
pub fn histogram(samples: &[Duration]) -> Vec<(u64, usize)> {
    let mut buckets: Vec<(u64, usize)> = Vec::new();
    let max_us = samples
        .iter()
        .map(|d| d.as_micros() as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut bound = 8u64;
    while bound < max_us * 2 {
        buckets.push((bound, 0));
        bound *= 2;
    }
    if buckets.is_empty() {
        buckets.push((bound, 0));
    }
    for d in samples {
        let us = d.as_micros() as u64;
        let i = buckets
            .iter()
            .position(|(b, _)| us < *b)
            .unwrap_or(buckets.len() - 1);
        buckets[i].1 += 1;
    }
    buckets
}

/// The JSON form of a [`LatencySummary`]: milliseconds.
#[derive(Serialize)]
struct LatencyMs {
    count: usize,
    min_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

impl Serialize for LatencySummary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        LatencyMs {
            count: self.count,
            min_ms: ms(self.min),
            p50_ms: ms(self.p50),
            p90_ms: ms(self.p90),
            p99_ms: ms(self.p99),
            max_ms: ms(self.max),
            mean_ms: ms(self.mean),
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(ms_).collect();
        let s = summarize(&samples);
        assert_eq!(
            (s.min, s.p50, s.p90, s.p99, s.max),
            (ms_(1), ms_(50), ms_(90), ms_(99), ms_(100))
        );
        assert_eq!(s.mean, Duration::from_micros(50_500));
        assert_eq!(summarize(&[]).p99, Duration::ZERO);
        assert_eq!(percentile(&[ms_(7)], 99.0), ms_(7));
    }

    #[test]
    fn histogram_buckets() {
        let h = histogram(&[
            Duration::from_micros(5),
            Duration::from_micros(100),
            Duration::from_micros(130),
        ]);
        assert_eq!(h.iter().map(|b| b.1).sum::<usize>(), 3);
        assert_eq!(h[0], (8, 1));
        assert!(h.contains(&(128, 1)) && h.contains(&(256, 1)));
    }

    #[test]
    fn json_is_in_milliseconds() {
        let s = summarize(&[ms_(2), ms_(4)]);
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["count"], 2);
        assert_eq!(j["min_ms"], 2.0);
        assert_eq!(j["max_ms"], 4.0);
        assert_eq!(j["mean_ms"], 3.0);
        assert_eq!(j.as_object().unwrap().len(), 7);
    }
}
