//! Parsing iputils `ping` output (pure). Tested on captured output of iputils 20221126.
//!
//! Per-reply lines (`64 bytes from A: icmp_seq=1 ttl=62 time=0.052 ms`) give every RTT, from
//! which the median comes; the summary lines give transmitted/received and ping's own average
//! (`rtt min/avg/max/mdev = 0.026/1.349/13.145/3.931 ms`). With every reply lost there is no
//! `rtt` line: the result has no RTTs and `avg_ms` is `None`.

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::report::summary::summarize;

/// One ping run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PingResult {
    pub transmitted: u64,
    pub received: u64,
    /// Every reply's RTT in ms, in arrival order.
    pub rtts_ms: Vec<f64>,
    /// ping's own average (from the `rtt min/avg/max/mdev` line).
    pub avg_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl PingResult {
    /// Median of the per-reply RTTs.
    pub fn median_ms(&self) -> Option<f64> {
        summarize(&self.rtts_ms).map(|s| s.median)
    }
    pub fn loss_percent(&self) -> f64 {
        if self.transmitted == 0 {
            return 100.0;
        }
        (self.transmitted.saturating_sub(self.received)) as f64 * 100.0 / self.transmitted as f64
    }
}

/// Parses the whole stdout of one `ping` run.
pub fn parse(text: &str) -> Result<PingResult> {
    let mut rtts = Vec::new();
    let mut counts = None;
    let mut rtt_line = None;
    for line in text.lines() {
        if line.contains(" bytes from ") {
            if let Some(t) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("time="))
                .and_then(|t| t.parse::<f64>().ok())
            {
                rtts.push(t);
            }
        } else if line.contains("packets transmitted") {
            let mut nums = line.split(',').map(|part| {
                part.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
            });
            if let (Some(Some(tx)), Some(Some(rx))) = (nums.next(), nums.next()) {
                counts = Some((tx, rx));
            }
        } else if let Some(rest) = line
            .strip_prefix("rtt min/avg/max/mdev = ")
            .or_else(|| line.strip_prefix("round-trip min/avg/max = "))
        {
            let vals: Vec<f64> = rest
                .split_whitespace()
                .next()
                .unwrap_or("")
                .split('/')
                .filter_map(|v| v.parse().ok())
                .collect();
            if vals.len() >= 3 {
                rtt_line = Some((vals[0], vals[1], vals[2]));
            }
        }
    }
    let (transmitted, received) =
        counts.ok_or_else(|| anyhow!("no ping statistics in output:\n{text}"))?;
    Ok(PingResult {
        transmitted,
        received,
        rtts_ms: rtts,
        avg_ms: rtt_line.map(|r| r.1),
        min_ms: rtt_line.map(|r| r.0),
        max_ms: rtt_line.map(|r| r.2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_replies() {
        let r = parse(include_str!("testdata/ping_ok.txt")).unwrap();
        assert_eq!((r.transmitted, r.received), (10, 10));
        assert_eq!(r.rtts_ms.len(), 10);
        assert_eq!(r.rtts_ms[0], 13.1);
        assert_eq!(r.avg_ms, Some(1.349));
        assert_eq!(r.min_ms, Some(0.026));
        assert_eq!(r.max_ms, Some(13.145));
        // The cold first reply (ARP) barely moves the median, unlike the average.
        assert_eq!(r.median_ms(), Some(0.0295));
        assert_eq!(r.loss_percent(), 0.0);
    }

    #[test]
    fn some_lost() {
        let r = parse(include_str!("testdata/ping_loss.txt")).unwrap();
        assert_eq!((r.transmitted, r.received), (3, 2));
        assert_eq!(r.rtts_ms, vec![0.210, 0.190]);
        assert_eq!(r.median_ms(), Some(0.2));
        assert_eq!(r.avg_ms, Some(0.2));
        assert!((r.loss_percent() - 33.333).abs() < 0.01);
    }

    #[test]
    fn all_lost_has_no_rtt() {
        let r = parse(include_str!("testdata/ping_all_lost.txt")).unwrap();
        assert_eq!((r.transmitted, r.received), (3, 0));
        assert!(r.rtts_ms.is_empty());
        assert_eq!(r.avg_ms, None);
        assert_eq!(r.median_ms(), None);
        assert_eq!(r.loss_percent(), 100.0);
    }

    #[test]
    fn no_statistics_is_an_error() {
        assert!(parse("ping: connect: Network is unreachable\n").is_err());
        assert!(parse("").is_err());
    }
}
