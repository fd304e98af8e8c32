//! A hand-written SVG plot: restart latency percentiles against N (both axes logarithmic),
//! with the floor's p50 and p99 as dashed lines.

use super::phases::{ScalePoint, Who, IDLE_VARIANT_CRASHING};
use super::stats::Summary;
use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// The plot of `scale`: holden's churn p50/p99 and idle-variant p99, with the floor loop's
/// figures for the same loads dashed.
pub fn plot(scale: &[ScalePoint]) -> String {
    let churn = |by: Who| move |p: &&ScalePoint| p.by == by && p.crashing == p.n;
    let idle = |by: Who| {
        move |p: &&ScalePoint| {
            p.by == by && p.n >= IDLE_VARIANT_CRASHING && p.crashing == IDLE_VARIANT_CRASHING
        }
    };
    let pts = |f: &dyn Fn(&&ScalePoint) -> bool, pick: fn(&Summary) -> u64| -> Vec<(f64, f64)> {
        scale
            .iter()
            .filter(|p| f(p))
            .filter(|p| pick(&p.latency) > 0)
            .map(|p| (p.n as f64, pick(&p.latency) as f64 / 1000.0))
            .collect()
    };
    let series = [
        Series {
            name: "holden churn p50",
            color: "#1f77b4",
            dashed: false,
            points: pts(&churn(Who::Holden), |s| s.p50_ns),
        },
        Series {
            name: "holden churn p99",
            color: "#d62728",
            dashed: false,
            points: pts(&churn(Who::Holden), |s| s.p99_ns),
        },
        Series {
            name: "floor churn p50",
            color: "#1f77b4",
            dashed: true,
            points: pts(&churn(Who::Floor), |s| s.p50_ns),
        },
        Series {
            name: "floor churn p99",
            color: "#d62728",
            dashed: true,
            points: pts(&churn(Who::Floor), |s| s.p99_ns),
        },
        Series {
            name: "holden 4 crashing p99",
            color: "#2ca02c",
            dashed: false,
            points: pts(&idle(Who::Holden), |s| s.p99_ns),
        },
        Series {
            name: "floor 4 crashing p99",
            color: "#2ca02c",
            dashed: true,
            points: pts(&idle(Who::Floor), |s| s.p99_ns),
        },
    ];
    let n_max = scale.iter().map(|p| p.n).max().unwrap_or(1).max(2) as f64;
    let all: Vec<&Series> = series.iter().collect();
    let ys = all.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (mut y_min, mut y_max) = (f64::MAX, f64::MIN);
    for y in ys {
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if y_min > y_max {
        (y_min, y_max) = (1.0, 10.0);
    }
    let (d_min, d_max) = (
        y_min.log10().floor(),
        y_max.log10().ceil().max(y_min.log10().floor() + 1.0),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |n: f64| LEFT + n.log2() / n_max.log2() * plot_w;
    let y = |us: f64| TOP + plot_h - (us.log10() - d_min) / (d_max - d_min) * plot_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">restart latency against N supervised services</text>"#,
        LEFT + plot_w / 2.0
    );
    // Y grid: decades.
    let mut d = d_min;
    while d <= d_max {
        let yy = y(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#dddddd"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            yy + 4.0,
            fmt_us(10f64.powf(d))
        );
        d += 1.0;
    }
    // X ticks: the measured N.
    let mut ns: Vec<usize> = scale.iter().map(|p| p.n).collect();
    ns.sort_unstable();
    ns.dedup();
    for n in ns {
        let xx = x(n as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#eeeeee"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{n}</text>"#,
            TOP + plot_h + 16.0
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">N (services, log scale)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">restart latency (log scale)</text>"#,
        TOP + plot_h / 2.0
    );
    for (i, ser) in all.iter().enumerate() {
        if ser.points.is_empty() {
            continue;
        }
        let path: Vec<String> = ser
            .points
            .iter()
            .map(|&(n, v)| format!("{:.1},{:.1}", x(n), y(v)))
            .collect();
        let dash = if ser.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            path.join(" "),
            ser.color
        );
        {
            for &(n, v) in &ser.points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                    x(n),
                    y(v),
                    ser.color
                );
            }
        }
        let ly = TOP + 10.0 + i as f64 * 18.0;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/>"#,
            lx + 24.0,
            ser.color
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 30.0,
            ly + 4.0,
            ser.name
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{} s", us / 1_000_000.0)
    } else if us >= 1000.0 {
        format!("{} ms", us / 1000.0)
    } else {
        format!("{us} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_has_every_series_and_is_closed() {
        let point = |n: usize, crashing: usize, by: Who, p50: u64| ScalePoint {
            n,
            crashing,
            by,
            latency: Summary {
                count: 10,
                p50_ns: p50,
                p99_ns: p50 * 3,
                max_ns: p50 * 9,
                mean_ns: p50,
            },
            ..ScalePoint::default()
        };
        let mut scale = Vec::new();
        for by in [Who::Holden, Who::Floor] {
            scale.push(point(1, 1, by, 200_000));
            scale.push(point(4, 4, by, 300_000));
            scale.push(point(64, 64, by, 900_000));
            scale.push(point(64, 4, by, 250_000));
        }
        let svg = plot(&scale);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for name in [
            "holden churn p50",
            "holden churn p99",
            "floor churn p50",
            "floor churn p99",
            "holden 4 crashing p99",
            "floor 4 crashing p99",
        ] {
            assert!(svg.contains(name), "{name}");
        }
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert!(plot(&[]).contains("</svg>"));
    }
}
