//! A hand-written SVG bar chart of TCP throughput per variant (pure, no plotting crates):
//! two bars per variant (1 stream, 4 streams) at the median, a whisker from min to max, one dot
//! per repeat over the bar (spread evenly across it in repeat order, so equal values stay
//! visible), the median printed above each bar. Unavailable or unmeasured variants keep their
//! slot, labelled.

use std::fmt::Write as _;

use super::metric::{MetricKey, Streams};
use super::model::Run;
use crate::report::markdown::num;
use crate::report::summary::Summary;
use crate::report::svg::escape;

const W: f64 = 760.0;
const H: f64 = 400.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 64.0;
const SERIES: [(MetricKey, &str, &str); 2] = [
    (MetricKey::TcpGbps(Streams::One), "TCP 1 stream", "#4e79a7"),
    (
        MetricKey::TcpGbps(Streams::Four),
        "TCP 4 streams",
        "#f28e2b",
    ),
];

/// The smallest 1/2/5 × 10^k at or above `v` (axis maximum); 1 for nothing.
pub fn nice_ceil(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * p)
}

/// Renders the chart.
pub fn render(run: &Run) -> String {
    let stat = |vi: usize, key: MetricKey| -> Option<Summary> {
        let v = &run.variants[vi];
        v.unavailable
            .is_none()
            .then(|| v.summary.get(key.as_str()).copied())
            .flatten()
            .filter(|s| s.median.is_finite())
    };
    let n = run.variants.len().max(1);
    let top_value = (0..run.variants.len())
        .flat_map(|i| SERIES.iter().filter_map(move |(k, _, _)| stat(i, *k)))
        .map(|s| if s.max.is_finite() { s.max } else { s.median })
        .fold(0.0, f64::max);
    let ymax = nice_ceil(top_value);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h * (1.0 - (v / ymax).clamp(0.0, 1.0));
    let group_w = plot_w / n as f64;
    let bar_w = (group_w * 0.32).min(60.0);

    let mut s = crate::report::svg::begin(
        W,
        H,
        12,
        "TCP throughput (iperf3, container to container; bare: host to host), Gbit/s",
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="40" text-anchor="middle" fill="#555">{} · bars: median of {} repeat{}, whiskers min–max, dots: each repeat · {}</text>"##,
        W / 2.0,
        escape(&run.started_utc),
        run.repeats,
        if run.repeats == 1 { "" } else { "s" },
        escape(&format!(
            "kernel {}, {} CPUs",
            run.machine.kernel, run.machine.nproc
        )),
    );
    // Grid and y axis.
    for i in 0..=5 {
        let v = ymax * f64::from(i) / 5.0;
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                num(v)
            }
        );
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">Gbit/s</text>"#,
        TOP + plot_h / 2.0
    );
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        TOP + plot_h,
        W - RIGHT,
        TOP + plot_h
    );
    // Bars.
    for (vi, v) in run.variants.iter().enumerate() {
        let cx = LEFT + group_w * (vi as f64 + 0.5);
        let mut any = false;
        for (si, (key, series, color)) in SERIES.iter().enumerate() {
            let x = cx - bar_w + bar_w * si as f64;
            let Some(st) = stat(vi, *key) else { continue };
            any = true;
            let (top, base) = (y(st.median), y(0.0));
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}: {} {} Gbit/s</title></rect>"#,
                bar_w - 2.0,
                (base - top).max(0.0),
                escape(&v.label),
                series,
                num(st.median)
            );
            let wx = x + (bar_w - 2.0) / 2.0;
            if st.n > 1 && st.max > st.min && st.max.is_finite() {
                let (y0, y1) = (y(st.min), y(st.max));
                let _ = writeln!(
                    s,
                    r##"<path d="M{wx:.1} {y0:.1}V{y1:.1}M{:.1} {y0:.1}h8M{:.1} {y1:.1}h8" stroke="#222" fill="none"/>"##,
                    wx - 4.0,
                    wx - 4.0
                );
            }
            // One dot per repeat, spread across the bar in repeat order.
            let values: Vec<(usize, f64)> = v
                .samples
                .iter()
                .filter_map(|x| x.metrics.get(key.as_str()).map(|m| (x.repeat, *m)))
                .filter(|(_, m)| m.is_finite())
                .collect();
            let spread = (bar_w - 2.0) * 0.6;
            for (i, (rep, val)) in values.iter().enumerate() {
                let dx = if values.len() > 1 {
                    spread * (i as f64 / (values.len() - 1) as f64 - 0.5)
                } else {
                    0.0
                };
                let _ = writeln!(
                    s,
                    r##"<circle class="repeat" cx="{:.1}" cy="{:.1}" r="2.8" fill="white" stroke="#222" stroke-width="1.2"><title>{}: {} repeat {rep}: {} Gbit/s</title></circle>"##,
                    wx + dx,
                    y(*val),
                    escape(&v.label),
                    series,
                    num(*val)
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{wx:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
                y(if st.n > 1 && st.max.is_finite() {
                    st.max
                } else {
                    st.median
                }) - 4.0,
                num(st.median)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + plot_h + 18.0,
            escape(&v.label)
        );
        if !any {
            let why = if v.unavailable.is_some() {
                "unavailable"
            } else {
                "not measured"
            };
            let _ = writeln!(
                s,
                r##"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="#999">{why}</text>"##,
                TOP + plot_h - 8.0
            );
        }
    }
    // Legend.
    let ly = H - 22.0;
    for (si, (_, series, color)) in SERIES.iter().enumerate() {
        let lx = LEFT + 10.0 + 140.0 * si as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{ly:.1}">{series}</text>"#,
            ly - 10.0,
            lx + 18.0
        );
    }
    let lx = LEFT + 10.0 + 140.0 * SERIES.len() as f64;
    let _ = writeln!(
        s,
        r##"<circle cx="{:.1}" cy="{:.1}" r="2.8" fill="white" stroke="#222" stroke-width="1.2"/><text x="{:.1}" y="{ly:.1}">one repeat (bar: median, whisker: min–max)</text>"##,
        lx + 6.0,
        ly - 4.0,
        lx + 18.0
    );
    s.push_str(crate::report::svg::END);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::markdown::tests::sample_run;

    #[test]
    fn axis_maximum() {
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(0.7), 1.0);
        assert_eq!(nice_ceil(1.0), 1.0);
        assert_eq!(nice_ceil(1.1), 2.0);
        assert_eq!(nice_ceil(12.0), 20.0);
        assert_eq!(nice_ceil(35.0), 50.0);
        assert_eq!(nice_ceil(51.0), 100.0);
        assert_eq!(nice_ceil(f64::INFINITY), 1.0);
    }

    #[test]
    fn chart_has_bars_whiskers_labels_and_is_balanced() {
        let svg = render(&sample_run());
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>\n"));
        // ours: 2 bars; VXLAN and bare: 1 bar each (no 4-stream value); unavailable: none.
        assert_eq!(
            svg.matches("<rect x=").count(),
            4 + 2,
            "bars + legend swatches"
        );
        // Whisker only where min < max (ours TCP 1 stream: 10–12).
        assert_eq!(svg.matches("<path ").count(), 1);
        assert!(svg.contains("<title>ours: TCP 1 stream 11.0 Gbit/s</title>"));
        assert!(svg.contains(">ours --no-offload</text>"));
        assert!(svg.contains(">unavailable</text>"));
        assert!(svg.contains(">kernel VXLAN</text>"));
        // Axis tops out at 50 (bare's 40).
        assert!(svg.contains(">50</text>"));
        // Every opened element is closed (rough well-formedness check).
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert_eq!(svg.matches("</rect>").count(), 4, "bars carry a <title>");
        assert_eq!(
            svg.matches("<circle").count(),
            svg.matches("</circle>").count() + 1
        );
    }

    #[test]
    fn one_dot_per_repeat() {
        let run = sample_run();
        let svg = render(&run);
        // ours: 2 repeats × (TCP 1 + TCP 4); VXLAN and bare: 1 repeat of TCP 1; the
        // unavailable variant none.
        let expected: usize = run
            .variants
            .iter()
            .flat_map(|v| &v.samples)
            .map(|x| {
                SERIES
                    .iter()
                    .filter(|(k, _, _)| x.metrics.contains_key(k.as_str()))
                    .count()
            })
            .sum();
        assert_eq!(expected, 6);
        assert_eq!(svg.matches(r#"<circle class="repeat""#).count(), expected);
        assert!(svg.contains("<title>ours: TCP 1 stream repeat 1: 10.0 Gbit/s</title>"));
        assert!(svg.contains("<title>ours: TCP 1 stream repeat 2: 12.0 Gbit/s</title>"));
        // The two dots of one bar sit at different x, at the repeats' heights.
        let dots: Vec<&str> = svg
            .lines()
            .filter(|l| l.contains("ours: TCP 1 stream repeat"))
            .collect();
        assert_eq!(dots.len(), 2);
        assert_ne!(
            dots[0].split("cy=").next(),
            dots[1].split("cy=").next(),
            "jittered"
        );
        assert!(svg.contains("one repeat (bar: median, whisker: min–max)"));
    }
}
