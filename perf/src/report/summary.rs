//! Median, min and max of repeated samples (pure).
//!
//! The machines this runs on are noisy, so every figure in a report is the median of N repeats
//! with the range beside it. NaN samples are ignored; infinities (e.g. a max/min ratio with an
//! idle worker) are kept and sort last.

use serde::Serialize;

/// The summary of one metric over the repeats of one variant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples (NaN excluded).
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Summarises `values`; `None` when there is no (non-NaN) value. The median of an even count
/// is the mean of the two middle values.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        let (a, b) = (v[n / 2 - 1], v[n / 2]);
        if a.is_infinite() || b.is_infinite() {
            b
        } else {
            (a + b) / 2.0
        }
    };
    Some(Summary {
        n,
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// The max/min ratio of per-worker counts: 1.0 is a perfect spread, infinity means at least one
/// worker saw nothing. `None` for fewer than two workers or when all are zero.
pub fn spread(counts: &[u64]) -> Option<f64> {
    if counts.len() < 2 {
        return None;
    }
    let max = *counts.iter().max()?;
    let min = *counts.iter().min()?;
    if max == 0 {
        return None;
    }
    Some(if min == 0 {
        f64::INFINITY
    } else {
        max as f64 / min as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_count_takes_the_middle() {
        let s = summarize(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            s,
            Summary {
                n: 3,
                median: 3.0,
                min: 1.0,
                max: 5.0
            }
        );
    }

    #[test]
    fn even_count_averages_the_two_middle_values() {
        let s = summarize(&[4.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(s.median, 3.0);
        assert_eq!((s.min, s.max, s.n), (1.0, 10.0, 4));
    }

    #[test]
    fn single_value_and_empty() {
        let s = summarize(&[2.5]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 2.5, 2.5));
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[f64::NAN]).is_none());
    }

    #[test]
    fn nan_is_ignored_and_infinity_kept() {
        let s = summarize(&[1.0, f64::NAN, f64::INFINITY]).unwrap();
        assert_eq!(s.n, 2);
        assert_eq!(s.min, 1.0);
        assert!(s.max.is_infinite());
        assert!(s.median.is_infinite());
        let s = summarize(&[1.0, 2.0, f64::INFINITY]).unwrap();
        assert_eq!(s.median, 2.0);
    }

    #[test]
    fn worker_spread() {
        assert_eq!(spread(&[100, 50]), Some(2.0));
        assert_eq!(spread(&[100, 100]), Some(1.0));
        assert_eq!(spread(&[7, 0]), Some(f64::INFINITY));
        assert_eq!(spread(&[0, 0]), None);
        assert_eq!(spread(&[5]), None);
    }
}
