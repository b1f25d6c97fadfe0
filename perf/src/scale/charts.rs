//! The scale run's charts as standalone SVG documents (pure): the latency histogram of
//! [`crate::report::latency::histogram`] as bars, and total acquisition time and acquire p99
//! against the cluster size.

/// A bar chart of the histogram as a standalone SVG document.
pub fn histogram_svg(title: &str, buckets: &[(u64, usize)]) -> String {
    let (w, h, left, bottom) = (720.0, 320.0, 60.0, 60.0);
    let max = buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64;
    let bw = (w - left - 20.0) / buckets.len().max(1) as f64;
    let mut s = svg_start(w, h, title);
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

/// One point of the scaling chart: cluster size, total acquisition time, acquire p99.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalePoint {
    pub hosts: usize,
    pub total_s: f64,
    pub p99_ms: f64,
}

/// One panel of [`scaling_svg`]: label, left edge, value, dashed reference line (y at x = 0
/// and at x = max).
type Panel<'a> = (
    &'a str,
    f64,
    &'a dyn Fn(&ScalePoint) -> f64,
    Option<(f64, f64)>,
);

/// Two panels in one SVG: total acquisition time vs N (with the line through the origin and
/// the smallest run, i.e. what linear growth would give) and acquire p99 vs N (with `p99_target_ms`).
pub fn scaling_svg(title: &str, points: &[ScalePoint], p99_target_ms: f64) -> String {
    let (w, h) = (820.0, 360.0);
    let mut s = svg_start(w, h, title);
    let max_n = points.iter().map(|p| p.hosts).max().unwrap_or(1).max(1) as f64;
    let linear = points
        .iter()
        .min_by_key(|p| p.hosts)
        .filter(|p| p.hosts > 0)
        .map(|p| p.total_s / p.hosts as f64);
    let total = |p: &ScalePoint| p.total_s;
    let p99 = |p: &ScalePoint| p.p99_ms;
    let panels: [Panel; 2] = [
        (
            "total acquisition time (s)",
            20.0,
            &total,
            linear.map(|k| (0.0, k * max_n)),
        ),
        (
            "acquire p99 (ms)",
            420.0,
            &p99,
            Some((p99_target_ms, p99_target_ms)),
        ),
    ];
    for (label, x0, value, reference) in panels {
        let (left, top, pw, ph) = (x0 + 50.0, 40.0, 320.0, 260.0);
        let mut max_y = points.iter().map(&value).fold(0.0f64, f64::max);
        if let Some((a, b)) = reference {
            max_y = max_y.max(a).max(b);
        }
        let max_y = if max_y > 0.0 { max_y * 1.1 } else { 1.0 };
        let px = |n: f64| left + pw * n / max_n;
        let py = |v: f64| top + ph - ph * v / max_y;
        s += &format!(
            "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
             <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">hosts (N)</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1}</text>\n",
            top + ph,
            left + pw,
            top + ph,
            top + ph,
            left + pw / 2.0,
            top - 6.0,
            left + pw / 2.0,
            top + ph + 30.0,
            left - 4.0,
            top + 4.0,
            max_y
        );
        if let Some((a, b)) = reference {
            s += &format!(
                "<line x1=\"{}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\n",
                px(0.0),
                py(a),
                px(max_n),
                py(b)
            );
        }
        let mut sorted: Vec<&ScalePoint> = points.iter().collect();
        sorted.sort_by_key(|p| p.hosts);
        let path: Vec<String> = sorted
            .iter()
            .map(|p| format!("{:.1},{:.1}", px(p.hosts as f64), py(value(p))))
            .collect();
        s += &format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#3b7dd8\" stroke-width=\"2\"/>\n",
            path.join(" ")
        );
        for p in sorted {
            let (x, y) = (px(p.hosts as f64), py(value(p)));
            s += &format!(
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"#3b7dd8\"/>\n\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.1}</text>\n\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
                y - 8.0,
                value(p),
                top + ph + 14.0,
                p.hosts
            );
        }
    }
    s + crate::report::svg::END
}

/// An SVG document's opening: size, white background, centred title.
fn svg_start(w: f64, h: f64, title: &str) -> String {
    crate::report::svg::begin(w, h, 11, title)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_and_scaling_charts() {
        let svg = histogram_svg("a < b", &[(8, 1), (16, 0), (128, 2)]);
        let chart = scaling_svg(
            "n & p",
            &[
                ScalePoint {
                    hosts: 5000,
                    total_s: 5.0,
                    p99_ms: 20.0,
                },
                ScalePoint {
                    hosts: 65536,
                    total_s: 70.0,
                    p99_ms: 40.0,
                },
            ],
            100.0,
        );
        assert!(
            chart.contains("n &amp; p") && chart.contains("65536") && chart.ends_with("</svg>\n")
        );
        assert_eq!(
            chart.matches("<circle").count(),
            4,
            "two points in each panel"
        );
        assert!(
            svg.starts_with("<svg")
                && svg.contains("a &lt; b")
                && svg.trim_end().ends_with("</svg>")
        );
    }
}
