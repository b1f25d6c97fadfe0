//! The progress line a long phase of the scale run prints every few seconds (pure).

use std::time::Duration;

/// A progress line for a long phase: `label: done/total (pct), rate/s, ~time left`.
pub fn progress_line(label: &str, done: usize, total: usize, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let pct = if total > 0 {
        100.0 * done as f64 / total as f64
    } else {
        100.0
    };
    let left = if rate > 0.0 {
        format!("~{:.0} s left", total.saturating_sub(done) as f64 / rate)
    } else {
        "time left unknown".to_string()
    };
    format!("  {label}: {done}/{total} ({pct:.1}%), {rate:.0}/s, {left}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_name_done_total_rate_and_time_left() {
        assert_eq!(
            progress_line("acquire", 2500, 10000, Duration::from_secs(5)),
            "  acquire: 2500/10000 (25.0%), 500/s, ~15 s left"
        );
        assert!(progress_line("x", 0, 10, Duration::ZERO).ends_with("time left unknown"));
    }
}
