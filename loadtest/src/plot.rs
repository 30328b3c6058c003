//! Latency distributions as SVG: one line per phase, latency against percentile on the usual
//! HDR scale (50%, 90%, 99%, 99.9%, 99.99% evenly spaced), so the tail is as visible as the
//! median.

use std::fmt::Write;

use crate::report::Summary;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 48.0;
const COLOURS: [&str; 8] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// `-log10(1 - q)`: 0 at 0%, 1 at 90%, 2 at 99%, …
fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-4).log10()
}

pub fn latency_svg(title: &str, summaries: &[Summary]) -> String {
    let top_ms =
        summaries.iter().flat_map(|s| s.curve.iter().map(|p| p.1)).fold(0.0f64, f64::max).max(0.1) * 1.1;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |q: f64| LEFT + nines(q) / 4.0 * plot_w;
    let y = |ms: f64| TOP + plot_h - ms / top_ms * plot_h;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(out, "<rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"white\"/>");
    let _ = writeln!(out, "<text x=\"{LEFT}\" y=\"22\" font-size=\"14\">{}</text>", escape(title));
    for (label, q) in [("0%", 0.0), ("90%", 0.9), ("99%", 0.99), ("99.9%", 0.999), ("99.99%", 0.9999)] {
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" y1=\"{TOP}\" x2=\"{0:.1}\" y2=\"{1:.1}\" stroke=\"#ddd\"/><text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\">{label}</text>",
            x(q),
            TOP + plot_h,
            TOP + plot_h + 16.0
        );
    }
    for i in 0..=4 {
        let ms = top_ms * i as f64 / 4.0;
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"#eee\"/><text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\">{ms:.1}</text>",
            y(ms),
            LEFT + plot_w,
            LEFT - 6.0,
            y(ms) + 4.0
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text><text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">latency (ms)</text>",
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for (i, s) in summaries.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> =
            s.curve.iter().map(|&(q, ms)| format!("{:.1},{:.1}", x(q), y(ms))).collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
            points.join(" "),
            escape(&s.label)
        );
        let ly = TOP + 14.0 + i as f64 * 18.0;
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{2:.1}\" y2=\"{1:.1}\" stroke=\"{colour}\" stroke-width=\"3\"/><text x=\"{3:.1}\" y=\"{4:.1}\">{5}</text>",
            WIDTH - RIGHT + 12.0,
            ly,
            WIDTH - RIGHT + 32.0,
            WIDTH - RIGHT + 38.0,
            ly + 4.0,
            escape(&s.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_phase_on_the_nines_scale() {
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        let summary = |label: &str| Summary {
            label: label.into(),
            rate: 1.0,
            sent: 1,
            achieved_rate: 1.0,
            seconds: 1.0,
            latency_ms: Default::default(),
            ok_latency_ms: Default::default(),
            refused_latency_ms: Default::default(),
            statuses: Default::default(),
            degraded: Default::default(),
            versions: Default::default(),
            errors: 0,
            refusals_without_retry_after: 0,
            curve: vec![(0.0, 1.0), (0.99, 3.0)],
        };
        let svg = latency_svg("a <b>", &[summary("steady"), summary("swap & roll")]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("swap &amp; roll"));
    }
}
