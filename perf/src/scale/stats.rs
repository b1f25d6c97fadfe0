//! Latency summaries for the scale run: percentiles and a histogram rendered as SVG. Pure.

use std::time::Duration;

/// p50/p99/max and friends of a set of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(samples: &[Duration]) -> Summary {
    let mut s = samples.to_vec();
    s.sort();
    let total: Duration = s.iter().sum();
    Summary {
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

/// A bar chart of the histogram as a standalone SVG document.
pub fn histogram_svg(title: &str, buckets: &[(u64, usize)]) -> String {
    let (w, h, left, bottom) = (720.0, 320.0, 60.0, 60.0);
    let max = buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
    let bw = (w - left - 20.0) / buckets.len().max(1) as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        w / 2.0,
        xml_escape(title)
    );
    let plot_h = h - bottom - 30.0;
    for (i, (bound, n)) in buckets.iter().enumerate() {
        let bh = plot_h * (*n as f64) / max;
        let x = left + i as f64 * bw;
        let y = h - bottom - bh;
        s += &format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#3b7dd8\"/>\n",
            bw * 0.85
        );
        if *n > 0 {
            s += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n}</text>\n",
                x + bw * 0.42,
                y - 3.0
            );
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" transform=\"rotate(-45 {:.1} {:.1})\">&lt;{}</text>\n",
            x + bw * 0.5,
            h - bottom + 14.0,
            x + bw * 0.5,
            h - bottom + 14.0,
            fmt_us(*bound)
        );
    }
    s += &format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">events</text>\n</svg>\n",
        h - bottom,
        w - 20.0,
        h - bottom,
        h / 2.0,
        h / 2.0
    );
    s
}

fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{}s", us / 1_000_000)
    } else if us >= 1000 {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}µs")
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(ms).collect();
        let s = summarize(&samples);
        assert_eq!(
            (s.min, s.p50, s.p90, s.p99, s.max),
            (ms(1), ms(50), ms(90), ms(99), ms(100))
        );
        assert_eq!(s.mean, Duration::from_micros(50_500));
        assert_eq!(summarize(&[]).p99, Duration::ZERO);
        assert_eq!(percentile(&[ms(7)], 99.0), ms(7));
    }

    #[test]
    fn histogram_buckets_and_svg() {
        let h = histogram(&[
            Duration::from_micros(5),
            Duration::from_micros(100),
            Duration::from_micros(130),
        ]);
        assert_eq!(h.iter().map(|b| b.1).sum::<usize>(), 3);
        assert_eq!(h[0], (8, 1));
        assert!(h.contains(&(128, 1)) && h.contains(&(256, 1)));
        let svg = histogram_svg("a < b", &h);
        assert!(
            svg.starts_with("<svg")
                && svg.contains("a &lt; b")
                && svg.trim_end().ends_with("</svg>")
        );
    }
}
