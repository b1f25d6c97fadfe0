//! The paced UDP search (pure): the highest rate one sender gets through with at most
//! [`CLEAN_LOSS_PCT`] loss.
//!
//! Contract: bisection between a floor and a ceiling (the harness uses [`FLOOR_FRACTION`] and
//! [`CEILING_FACTOR`] × the unpaced test's received rate), a fixed number
//! of probes. Each probe offers the midpoint of the current interval (`iperf3 -u -b <bits/s>`);
//! a clean probe (loss ≤ [`CLEAN_LOSS_PCT`]) raises the lower end, a lossy one lowers the upper
//! end. The result is the highest *received* rate among the clean probes (a sender that cannot
//! reach the offered rate shows as such), or `None` when no probe was clean: the answer is then
//! "below the lowest rate probed", not a number.

use serde::Serialize;

/// Loss at or below which a probe counts as clean (%).
pub const CLEAN_LOSS_PCT: f64 = 0.1;
/// Probes per search.
pub const PROBES: usize = 5;
/// Seconds per probe.
pub const PROBE_SECONDS: u32 = 1;
/// Ceiling = this × the unpaced received rate.
pub const CEILING_FACTOR: f64 = 1.1;
/// Floor = this × the unpaced received rate.
pub const FLOOR_FRACTION: f64 = 0.1;

/// One paced probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    /// Datagrams per second asked of iperf3.
    pub offered_pps: f64,
    /// Datagrams per second the receiver got.
    pub received_pps: f64,
    pub loss_pct: f64,
    pub clean: bool,
}

/// The search state and, once done, its record (serialised in the run's JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UdpSearch {
    /// Payload bytes per datagram.
    pub payload: u32,
    pub floor_pps: f64,
    pub ceiling_pps: f64,
    pub max_probes: usize,
    pub probes: Vec<Probe>,
    /// Highest received rate among the clean probes.
    pub max_clean_pps: Option<f64>,
    /// Current interval: `lo` is clean (or the floor), `hi` lossy (or the ceiling).
    #[serde(skip)]
    lo: f64,
    #[serde(skip)]
    hi: f64,
}

impl UdpSearch {
    /// A search between `floor_pps` and `ceiling_pps` with `max_probes` probes.
    pub fn new(payload: u32, floor_pps: f64, ceiling_pps: f64, max_probes: usize) -> Self {
        Self {
            payload,
            floor_pps,
            ceiling_pps,
            max_probes,
            probes: Vec::new(),
            max_clean_pps: None,
            lo: floor_pps,
            hi: ceiling_pps,
        }
    }

    /// The search the harness runs after an unpaced test that received `unpaced_pps`.
    pub fn after_unpaced(payload: u32, unpaced_pps: f64) -> Self {
        Self::new(
            payload,
            FLOOR_FRACTION * unpaced_pps,
            CEILING_FACTOR * unpaced_pps,
            PROBES,
        )
    }

    /// The rate to probe next; `None` when the search is done.
    pub fn next_rate(&self) -> Option<f64> {
        (self.probes.len() < self.max_probes && self.hi > self.lo && self.lo.is_finite())
            .then(|| (self.lo + self.hi) / 2.0)
    }

    /// Records the outcome of probing `offered_pps`.
    pub fn record(&mut self, offered_pps: f64, received_pps: f64, loss_pct: f64) {
        let clean = loss_pct <= CLEAN_LOSS_PCT;
        if clean {
            self.lo = self.lo.max(offered_pps);
            self.max_clean_pps = Some(self.max_clean_pps.unwrap_or(0.0).max(received_pps));
        } else {
            self.hi = self.hi.min(offered_pps);
        }
        self.probes.push(Probe {
            offered_pps,
            received_pps,
            loss_pct,
            clean,
        });
    }

    /// The lowest rate probed (what "no clean probe" is below).
    pub fn lowest_probe_pps(&self) -> Option<f64> {
        self.probes
            .iter()
            .map(|p| p.offered_pps)
            .min_by(f64::total_cmp)
    }
}

/// `iperf3 -b` for `pps` datagrams of `payload` bytes per second (iperf3 paces payload bits).
pub fn bits_per_second(pps: f64, payload: u32) -> u64 {
    (pps * f64::from(payload) * 8.0).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a path that loses nothing up to `capacity` pps and everything
    /// above it is lossy; the receiver gets what was offered (capped).
    fn run(mut s: UdpSearch, capacity: f64) -> UdpSearch {
        while let Some(r) = s.next_rate() {
            let loss = if r <= capacity {
                0.0
            } else {
                100.0 * (r - capacity) / r
            };
            s.record(r, r.min(capacity), loss);
        }
        s
    }

    #[test]
    fn bisects_from_the_midpoint_with_a_fixed_number_of_probes() {
        // Unpaced: 60 kpps received → floor 6k, ceiling 66k.
        let s = run(UdpSearch::after_unpaced(64, 60_000.0), 39_000.0);
        assert_eq!((s.floor_pps, s.ceiling_pps), (6_000.0, 66_000.0));
        let offered: Vec<f64> = s.probes.iter().map(|p| p.offered_pps).collect();
        // 36k clean, 51k lossy, 43.5k lossy, 39.75k lossy (1.9 %), 37.875k clean.
        assert_eq!(
            offered,
            vec![36_000.0, 51_000.0, 43_500.0, 39_750.0, 37_875.0]
        );
        let clean: Vec<bool> = s.probes.iter().map(|p| p.clean).collect();
        assert_eq!(clean, vec![true, false, false, false, true]);
        assert_eq!(s.max_clean_pps, Some(37_875.0));
        assert_eq!(s.next_rate(), None);
        assert_eq!(s.lowest_probe_pps(), Some(36_000.0));
    }

    #[test]
    fn clean_up_to_the_ceiling_and_nothing_clean() {
        let s = run(UdpSearch::new(1400, 0.0, 100.0, 5), 1e9);
        assert_eq!(s.probes.len(), 5);
        assert!(s.probes.iter().all(|p| p.clean));
        // 50, 75, 87.5, 93.75, 96.875.
        assert_eq!(s.max_clean_pps, Some(96.875));

        let s = run(UdpSearch::new(1400, 10.0, 90.0, 5), 1.0);
        assert_eq!(s.max_clean_pps, None);
        // 50, 30, 20, 15, 12.5: the answer is "below 12.5".
        assert_eq!(s.lowest_probe_pps(), Some(12.5));
    }

    #[test]
    fn loss_threshold_and_received_rate() {
        let mut s = UdpSearch::new(64, 0.0, 100.0, 3);
        // Exactly 0.1 % is clean; the figure is what was received, not what was offered.
        s.record(50.0, 49.95, 0.1);
        assert!(s.probes[0].clean);
        assert_eq!(s.max_clean_pps, Some(49.95));
        s.record(75.0, 74.0, 0.11);
        assert!(!s.probes[1].clean);
        assert_eq!(s.next_rate(), Some(62.5));
        // A clean probe below the best does not lower it.
        s.record(62.5, 40.0, 0.0);
        assert_eq!(s.max_clean_pps, Some(49.95));
        assert_eq!(s.next_rate(), None);
    }

    #[test]
    fn empty_or_broken_intervals_probe_nothing() {
        assert_eq!(UdpSearch::new(64, 10.0, 10.0, 5).next_rate(), None);
        assert_eq!(UdpSearch::after_unpaced(64, 0.0).next_rate(), None);
        assert_eq!(UdpSearch::new(64, 0.0, 10.0, 0).next_rate(), None);
        assert_eq!(UdpSearch::new(64, f64::NAN, 10.0, 5).next_rate(), None);
    }

    #[test]
    fn iperf_bitrate() {
        // 10 kpps of 1400 B = 112 Mbit/s of payload.
        assert_eq!(bits_per_second(10_000.0, 1400), 112_000_000);
        assert_eq!(bits_per_second(36_300.0, 64), 18_585_600);
    }
}
