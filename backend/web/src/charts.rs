//! Usage charts drawn on the server as SVG, with axes and units, so they
//! need no script and print as they look.

use std::fmt::Write;

use chrono::{DateTime, Utc};

/// One series to draw.
pub struct Series<'a> {
    /// Chart title, e.g. "Memory".
    pub title: &'a str,
    /// What the line measures, with its unit, e.g. "memory in use, in bytes".
    pub measures: &'a str,
    /// Formats a value for the axis, e.g. as MiB.
    pub unit: fn(u64) -> String,
    /// (time, value) points in time order.
    pub points: Vec<(DateTime<Utc>, u64)>,
    /// A limit drawn as a dashed line, if any.
    pub limit: Option<u64>,
}

// Drawn narrow enough that the labels stay readable on a phone (the SVG
// scales to the width it is given).
const W: i64 = 480;
const H: i64 = 200;
const LEFT: i64 = 70;
const RIGHT: i64 = 12;
const TOP: i64 = 16;
const BOTTOM: i64 = 28;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A chart as a figure: its title, what it measures and a legend of its
/// lines (the solid line the use, the dashed one the limit) above the SVG.
pub fn figure(series: &Series<'_>, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let limit = match series.limit {
        Some(l) => format!(
            r#"<span class="key limit" aria-hidden="true"></span> the limit, {} (the jail is held to it)"#,
            esc(&(series.unit)(l))
        ),
        None => String::new(),
    };
    format!(
        r#"<figure class="chart-figure"><figcaption><strong>{title}</strong><span class="legend"><span class="key use" aria-hidden="true"></span> {measures}{sep}{limit}</span></figcaption>{svg}</figure>"#,
        title = esc(series.title),
        measures = esc(series.measures),
        sep = if limit.is_empty() { "" } else { "; " },
        svg = line_chart(series, from, to),
    )
}

/// Renders `series` over the window `[from, to]` as an SVG element.
pub fn line_chart(series: &Series<'_>, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let span = (to - from).num_seconds().max(1);
    let max_value = series
        .points
        .iter()
        .map(|p| p.1)
        .chain(series.limit)
        .max()
        .unwrap_or(0)
        .max(1);
    // Round the top of the axis up to a readable step.
    let top = nice_ceiling(max_value);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x = |t: DateTime<Utc>| LEFT + (t - from).num_seconds().clamp(0, span) * plot_w / span;
    let y = |v: u64| {
        let v = i64::try_from(v.min(top)).unwrap_or(i64::MAX);
        let top = i64::try_from(top).unwrap_or(i64::MAX);
        TOP + plot_h
            - i64::try_from(i128::from(v) * i128::from(plot_h) / i128::from(top)).unwrap_or(0)
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{t}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title>"#,
        t = esc(series.title)
    );
    // Horizontal grid and value labels.
    for i in 0..=4u64 {
        let v = top / 4 * i;
        let yy = y(v);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" y1="{yy}" x2="{}" y2="{yy}"/><text class="axis" x="{}" y="{}" text-anchor="end">{}</text>"#,
            W - RIGHT,
            LEFT - 6,
            yy + 4,
            esc(&(series.unit)(v))
        );
    }
    // Time labels at the ends and the middle.
    let fmt = if span <= 7200 {
        "%H:%M"
    } else if span <= 3 * 86400 {
        "%d %H:%M"
    } else {
        "%b %d"
    };
    for (i, anchor) in [(0i64, "start"), (1, "middle"), (2, "end")] {
        let t = from + chrono::Duration::seconds(span * i / 2);
        let _ = write!(
            svg,
            r#"<text class="axis" x="{}" y="{}" text-anchor="{anchor}">{} UTC</text>"#,
            x(t),
            H - 8,
            t.format(fmt)
        );
    }
    let _ = write!(
        svg,
        r#"<line class="axis-line" x1="{LEFT}" y1="{}" x2="{}" y2="{}"/>"#,
        TOP + plot_h,
        W - RIGHT,
        TOP + plot_h
    );
    if let Some(limit) = series.limit {
        let yy = y(limit);
        let _ = write!(
            svg,
            r#"<line class="limit" x1="{LEFT}" y1="{yy}" x2="{}" y2="{yy}"><title>limit {}</title></line>"#,
            W - RIGHT,
            esc(&(series.unit)(limit))
        );
    }
    if series.points.is_empty() {
        let _ = write!(
            svg,
            r#"<text class="empty" x="{}" y="{}" text-anchor="middle">no data yet</text>"#,
            LEFT + plot_w / 2,
            TOP + plot_h / 2
        );
    } else {
        let points: Vec<(i64, i64)> = series.points.iter().map(|(t, v)| (x(*t), y(*v))).collect();
        svg.push_str(r#"<polyline class="series" points=""#);
        for (i, (px, py)) in drawn(&points).into_iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            let _ = write!(svg, "{sep}{px},{py}");
        }
        svg.push_str(r#""/>"#);
    }
    svg.push_str("</svg>");
    svg
}

/// The points of a line that change what is drawn: a point repeating the
/// one before it, or inside a horizontal run (the same height before and
/// after), adds nothing to the picture. Idle jails draw long flat runs.
fn drawn(points: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut distinct = points.to_vec();
    distinct.dedup();
    let keep = |i: usize| {
        let flat_before = i > 0 && distinct[i - 1].1 == distinct[i].1;
        let flat_after = distinct.get(i + 1).is_some_and(|a| a.1 == distinct[i].1);
        !(flat_before && flat_after)
    };
    (0..distinct.len())
        .filter(|&i| keep(i))
        .map(|i| distinct[i])
        .collect()
}

/// The smallest 1/2/5 × 10^n at or above `v`.
fn nice_ceiling(v: u64) -> u64 {
    let mut base = 1u64;
    loop {
        for m in [1u64, 2, 5] {
            let c = base.saturating_mul(m);
            if c >= v {
                return c;
            }
        }
        if base > u64::MAX / 10 {
            return u64::MAX;
        }
        base *= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_axes_units_limit_and_line() {
        let now = Utc::now();
        let s = Series {
            title: "Memory <used>",
            measures: "memory in use, in bytes",
            unit: crate::format::bytes,
            points: vec![
                (now - chrono::Duration::minutes(30), 100 << 20),
                (now, 200 << 20),
            ],
            limit: Some(256 << 20),
        };
        let svg = line_chart(&s, now - chrono::Duration::hours(1), now);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("Memory &lt;used&gt;"), "title is escaped");
        assert!(svg.contains("MiB"), "axis has units");
        assert!(svg.contains("class=\"limit\""));
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("UTC"));
    }

    #[test]
    fn a_figure_has_its_title_what_it_measures_and_a_legend() {
        let now = Utc::now();
        let with_limit = Series {
            title: "Memory",
            measures: "memory in use",
            unit: crate::format::bytes,
            points: vec![(now, 1 << 20)],
            limit: Some(64 << 20),
        };
        let f = figure(&with_limit, now - chrono::Duration::hours(1), now);
        assert!(f.contains("<figcaption><strong>Memory</strong>"), "{f}");
        assert!(f.contains("memory in use; "), "{f}");
        assert!(
            f.contains("the limit, 64 MiB (the jail is held to it)"),
            "{f}"
        );
        let without = Series {
            limit: None,
            ..with_limit
        };
        let f = figure(&without, now - chrono::Duration::hours(1), now);
        assert!(!f.contains("the limit"), "{f}");
    }

    #[test]
    fn empty_chart_says_so() {
        let now = Utc::now();
        let s = Series {
            title: "CPU",
            measures: "CPU in use",
            unit: crate::format::cpu,
            points: vec![],
            limit: None,
        };
        assert!(line_chart(&s, now - chrono::Duration::hours(1), now).contains("no data yet"));
    }

    #[test]
    fn flat_runs_and_repeats_draw_only_their_ends() {
        let pts = [
            (0, 5),
            (1, 5),
            (2, 5),
            (2, 5),
            (3, 9),
            (4, 9),
            (5, 9),
            (6, 1),
        ];
        assert_eq!(drawn(&pts), [(0, 5), (2, 5), (3, 9), (5, 9), (6, 1)]);
        assert_eq!(drawn(&[(0, 1)]), [(0, 1)]);
        assert!(drawn(&[]).is_empty());
    }

    #[test]
    fn ceilings_are_round() {
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(130), 200);
        assert_eq!(nice_ceiling(400), 500);
    }
}
