//! The SVG chart of a run, written as plain strings (no plotting crate).
//!
//! Three stacked panels: the latency-percentile curve on a "nines" axis
//! (0 %, 90 %, 99 %, 99.9 %, 99.99 % equally spaced), latency over time (p50,
//! p99 and max per second, log scale) with the warm-up greyed and swap windows
//! marked, and the achieved request rate per second. Latency axes are
//! logarithmic because tails are orders of magnitude above medians.
//!
//! Why not a plotting crate: plotters' SVG backend lays out text through a
//! font backend (font-kit, i.e. the system's fontconfig and freetype, by
//! default; or ab_glyph with a font file the repository would ship), and the
//! nines axis would still be a custom coordinate and label formatter. Plain
//! SVG strings leave fonts to the viewer and need no system libraries.

use std::fmt::Write as _;

use crate::report::{CurvePoint, Report, format_micros};

const WIDTH: f64 = 980.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = WIDTH - 170.0;
const COLOR_P50: &str = "#1f77b4";
const COLOR_P99: &str = "#ff7f0e";
const COLOR_MAX: &str = "#7f7f7f";
const COLOR_SWAP: &str = "#d62728";
const COLOR_OUTSIDE: &str = "#2ca02c";

/// A vertical band of the chart with a log-scaled latency axis.
struct LogAxis {
    top: f64,
    bottom: f64,
    lowest_decade: i32,
    highest_decade: i32,
}

impl LogAxis {
    fn spanning(values: impl Iterator<Item = u64>, top: f64, bottom: f64) -> LogAxis {
        let (mut lowest, mut highest) = (u64::MAX, 0u64);
        for value in values.filter(|value| *value > 0) {
            lowest = lowest.min(value);
            highest = highest.max(value);
        }
        if highest == 0 {
            (lowest, highest) = (1, 10);
        }
        let lowest_decade = (lowest as f64).log10().floor() as i32;
        let mut highest_decade = (highest as f64).log10().ceil() as i32;
        if highest_decade <= lowest_decade {
            highest_decade = lowest_decade + 1;
        }
        LogAxis {
            top,
            bottom,
            lowest_decade,
            highest_decade,
        }
    }

    fn y(&self, micros: u64) -> f64 {
        let decades = f64::from(self.highest_decade - self.lowest_decade);
        let position = ((micros.max(1) as f64).log10() - f64::from(self.lowest_decade)) / decades;
        self.bottom - position.clamp(0.0, 1.0) * (self.bottom - self.top)
    }

    /// Grid lines at 1, 2 and 5 of each decade; labels on 1 and, for narrow
    /// ranges, on 2 and 5 too.
    fn draw(&self, svg: &mut String) {
        let narrow = self.highest_decade - self.lowest_decade <= 2;
        for decade in self.lowest_decade..=self.highest_decade {
            for multiple in [1u64, 2, 5] {
                let micros = 10u64.pow(decade.max(0) as u32) * multiple;
                if decade == self.highest_decade && multiple > 1 {
                    continue;
                }
                let y = self.y(micros);
                let major = multiple == 1;
                let _ = writeln!(
                    svg,
                    r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="{}" stroke-width="1"/>"##,
                    if major { "#d0d0d0" } else { "#eeeeee" }
                );
                if major || narrow {
                    let _ = writeln!(
                        svg,
                        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
                        LEFT - 6.0,
                        y + 4.0,
                        format_micros(micros)
                    );
                }
            }
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn polyline(svg: &mut String, points: &[(f64, f64)], color: &str, width: f64, dashed: bool) {
    if points.is_empty() {
        return;
    }
    let mut coordinates = String::with_capacity(points.len() * 14);
    for (x, y) in points {
        let _ = write!(coordinates, "{x:.1},{y:.1} ");
    }
    let _ = writeln!(
        svg,
        r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="{width}" stroke-linejoin="round"{}/>"##,
        coordinates.trim_end(),
        if dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        }
    );
}

fn legend(svg: &mut String, top: f64, entries: &[(&str, &str, bool)]) {
    for (index, (label, color, dashed)) in entries.iter().enumerate() {
        let y = top + 18.0 * index as f64;
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="2.5"{}/><text x="{:.1}" y="{:.1}" class="tick">{}</text>"##,
            RIGHT + 14.0,
            RIGHT + 38.0,
            if *dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            },
            RIGHT + 44.0,
            y + 4.0,
            escape(label)
        );
    }
}

fn nines_x(percentile: f64) -> f64 {
    let nines = (-(1.0 - percentile / 100.0).max(1e-4).log10()).clamp(0.0, 4.0);
    LEFT + nines / 4.0 * (RIGHT - LEFT)
}

fn curve_points(curve: &[CurvePoint], axis: &LogAxis) -> Vec<(f64, f64)> {
    curve
        .iter()
        .map(|point| (nines_x(point.percentile), axis.y(point.latency_us)))
        .collect()
}

pub fn render(report: &Report) -> String {
    let mut svg = String::with_capacity(64 * 1024);
    let height = 1010.0;
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif">
<style>.tick{{font-size:11px;fill:#444}} .title{{font-size:17px;font-weight:bold}} .sub{{font-size:12px;fill:#333}} .panel{{font-size:13px;font-weight:bold;fill:#222}}</style>
<rect width="100%" height="100%" fill="white"/>"##
    );
    let mode = match report.offered_rps {
        Some(rps) => format!("open loop at {rps} req/s, latency from intended send time"),
        None => "closed loop, service time".to_owned(),
    };
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="26" class="title">{} — {} on {}</text>"##,
        escape(&report.workload),
        escape(&report.target),
        escape(&report.addr)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="46" class="sub">{}</text>"##,
        escape(&format!(
            "{mode}; {} connections × {} in flight; {} s measured after {} s warm-up",
            report.connections,
            report.concurrency_per_connection,
            report.duration_seconds,
            report.warmup_seconds
        ))
    );
    let mut summary = format!("achieved {:.0} req/s", report.achieved_rps);
    if report.user_lookups_per_second > 0.0 && report.workload == "batch" {
        let _ = write!(
            summary,
            " ({:.0} user lookups/s)",
            report.user_lookups_per_second
        );
    }
    let _ = write!(
        summary,
        "; p50 {} · p90 {} · p99 {} · p99.9 {} · p99.99 {} · max {}; errors {}",
        format_micros(report.latency.p50_us),
        format_micros(report.latency.p90_us),
        format_micros(report.latency.p99_us),
        format_micros(report.latency.p999_us),
        format_micros(report.latency.p9999_us),
        format_micros(report.latency.max_us),
        report.errors
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="64" class="sub">{}</text>"##,
        escape(&summary)
    );

    percentile_panel(&mut svg, report, 100.0, 400.0);
    timeline_panel(&mut svg, report, 460.0, 790.0);
    rate_panel(&mut svg, report, 850.0, 970.0);
    svg.push_str("</svg>\n");
    svg
}

fn percentile_panel(svg: &mut String, report: &Report, top: f64, bottom: f64) {
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{:.1}" class="panel">Latency by percentile (measured window)</text>"##,
        top - 12.0
    );
    let swap_curves = report
        .swap_split
        .as_ref()
        .filter(|split| split.during_swaps.count > 0);
    let all_values = report
        .percentile_curve
        .iter()
        .chain(
            swap_curves
                .iter()
                .flat_map(|split| split.during_swaps_curve.iter()),
        )
        .map(|point| point.latency_us)
        .chain([report.latency.max_us]);
    let axis = LogAxis::spanning(all_values, top, bottom);
    axis.draw(svg);
    for (nines, label) in [
        (0, "0%"),
        (1, "90%"),
        (2, "99%"),
        (3, "99.9%"),
        (4, "99.99%"),
    ] {
        let x = LEFT + f64::from(nines) / 4.0 * (RIGHT - LEFT);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#e4e4e4"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" class="tick">{label}</text>"##,
            bottom + 16.0
        );
    }
    let x50 = nines_x(50.0);
    let _ = writeln!(
        svg,
        r##"<line x1="{x50:.1}" y1="{top}" x2="{x50:.1}" y2="{bottom}" stroke="#e4e4e4" stroke-dasharray="3 3"/><text x="{x50:.1}" y="{:.1}" text-anchor="middle" class="tick">50%</text>"##,
        bottom + 16.0
    );
    let mut entries = vec![("all requests", COLOR_P50, false)];
    polyline(
        svg,
        &curve_points(&report.percentile_curve, &axis),
        COLOR_P50,
        2.5,
        false,
    );
    if let Some(split) = swap_curves {
        polyline(
            svg,
            &curve_points(&split.during_swaps_curve, &axis),
            COLOR_SWAP,
            2.0,
            true,
        );
        polyline(
            svg,
            &curve_points(&split.outside_swaps_curve, &axis),
            COLOR_OUTSIDE,
            2.0,
            true,
        );
        entries.push(("during swaps", COLOR_SWAP, true));
        entries.push(("outside swaps", COLOR_OUTSIDE, true));
    }
    // Label the headline percentiles on the curve.
    for (percentile, micros) in [
        (50.0, report.latency.p50_us),
        (99.0, report.latency.p99_us),
        (99.9, report.latency.p999_us),
    ] {
        if report.latency.count == 0 {
            break;
        }
        let (x, y) = (nines_x(percentile), axis.y(micros));
        let _ = writeln!(
            svg,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{COLOR_P50}"/><text x="{:.1}" y="{:.1}" class="tick">{}</text>"##,
            x + 6.0,
            y - 6.0,
            format_micros(micros)
        );
    }
    legend(svg, top + 10.0, &entries);
}

fn time_x(second: f64, total_seconds: f64) -> f64 {
    LEFT + (second / total_seconds).clamp(0.0, 1.0) * (RIGHT - LEFT)
}

/// Warm-up shading, swap bands and the seconds axis, shared by the time panels.
fn time_background(svg: &mut String, report: &Report, top: f64, bottom: f64, labels: bool) {
    let total_seconds = (report.warmup_seconds + report.duration_seconds).max(1) as f64;
    if report.warmup_seconds > 0 {
        let x_end = time_x(report.warmup_seconds as f64, total_seconds);
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{top}" width="{:.1}" height="{:.1}" fill="#f2f2f2"/>"##,
            x_end - LEFT,
            bottom - top
        );
        if labels {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" class="tick">warm-up</text>"##,
                LEFT + 4.0,
                top + 14.0
            );
        }
    }
    let window = report
        .swap_split
        .as_ref()
        .map(|split| split.window_after_push_seconds)
        .unwrap_or(0.0);
    for swap in &report.swaps {
        let x_start = time_x(swap.started_at_seconds, total_seconds);
        let x_end = time_x(swap.finished_at_seconds + window, total_seconds);
        let _ = writeln!(
            svg,
            r##"<rect x="{x_start:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="{COLOR_SWAP}" fill-opacity="0.10"/><line x1="{x_start:.1}" y1="{top}" x2="{x_start:.1}" y2="{bottom}" stroke="{COLOR_SWAP}" stroke-width="1.5"/>"##,
            (x_end - x_start).max(1.0),
            bottom - top
        );
        if labels {
            let label = match &swap.error {
                Some(_) => "swap FAILED".to_owned(),
                None if swap.unchanged => format!("{} (no-op)", swap.version),
                None => format!("swap {}", swap.version),
            };
            // Near the right edge the label goes left of the line, inside the plot.
            let (label_x, anchor) = if x_start > RIGHT - 90.0 {
                (x_start - 3.0, "end")
            } else {
                (x_start + 3.0, "start")
            };
            let _ = writeln!(
                svg,
                r##"<text x="{label_x:.1}" y="{:.1}" text-anchor="{anchor}" class="tick" style="fill:{COLOR_SWAP}">{}</text>"##,
                top + 28.0,
                escape(&label)
            );
        }
    }
    let step = ((total_seconds / 12.0).ceil() as u64).max(1);
    let step = [1u64, 2, 5, 10, 15, 30, 60, 120, 300, 600]
        .into_iter()
        .find(|candidate| *candidate >= step)
        .unwrap_or(step);
    let mut second = 0;
    while second as f64 <= total_seconds {
        let x = time_x(second as f64, total_seconds);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" class="tick">{second}s</text>"##,
            bottom + 4.0,
            bottom + 16.0
        );
        second += step;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top}" width="{:.1}" height="{:.1}" fill="none" stroke="#bbb"/>"##,
        RIGHT - LEFT,
        bottom - top
    );
}

fn timeline_panel(svg: &mut String, report: &Report, top: f64, bottom: f64) {
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{:.1}" class="panel">Latency over time (per second, by completion)</text>"##,
        top - 12.0
    );
    let total_seconds = (report.warmup_seconds + report.duration_seconds).max(1) as f64;
    time_background(svg, report, top, bottom, true);
    let served = report
        .timeline
        .iter()
        .filter(|point| point.requests > point.errors);
    let axis = LogAxis::spanning(
        served
            .clone()
            .flat_map(|point| [point.p50_us, point.p99_us, point.max_us]),
        top,
        bottom,
    );
    axis.draw(svg);
    // A point sits at the middle of the second it covers.
    let series = |pick: fn(&crate::report::TimelinePoint) -> u64| -> Vec<(f64, f64)> {
        served
            .clone()
            .map(|point| {
                (
                    time_x(point.second as f64 - 0.5, total_seconds),
                    axis.y(pick(point)),
                )
            })
            .collect()
    };
    polyline(svg, &series(|point| point.max_us), COLOR_MAX, 1.2, false);
    polyline(svg, &series(|point| point.p99_us), COLOR_P99, 2.0, false);
    polyline(svg, &series(|point| point.p50_us), COLOR_P50, 2.0, false);
    for point in report.timeline.iter().filter(|point| point.errors > 0) {
        let x = time_x(point.second as f64 - 0.5, total_seconds);
        let _ = writeln!(
            svg,
            r##"<circle cx="{x:.1}" cy="{:.1}" r="4" fill="{COLOR_SWAP}"><title>{} errors</title></circle>"##,
            top + 6.0,
            point.errors
        );
    }
    let mut entries = vec![
        ("p50", COLOR_P50, false),
        ("p99", COLOR_P99, false),
        ("max", COLOR_MAX, false),
    ];
    if !report.swaps.is_empty() {
        entries.push(("swap window", COLOR_SWAP, false));
    }
    if report.timeline.iter().any(|point| point.errors > 0) {
        entries.push(("● errors", COLOR_SWAP, false));
    }
    legend(svg, top + 10.0, &entries);
}

fn rate_panel(svg: &mut String, report: &Report, top: f64, bottom: f64) {
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{:.1}" class="panel">Completed requests per second</text>"##,
        top - 12.0
    );
    let total_seconds = (report.warmup_seconds + report.duration_seconds).max(1) as f64;
    time_background(svg, report, top, bottom, false);
    let highest = report
        .timeline
        .iter()
        .map(|point| point.requests)
        .chain(report.offered_rps)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let y = |rate: f64| bottom - rate / highest * (bottom - top);
    let bar_width = ((RIGHT - LEFT) / total_seconds - 1.0).max(1.0);
    for point in &report.timeline {
        let x = time_x(point.second as f64 - 1.0, total_seconds);
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{bar_width:.1}" height="{:.1}" fill="{COLOR_P50}" fill-opacity="0.55"/>"##,
            x + 0.5,
            y(point.requests as f64),
            bottom - y(point.requests as f64)
        );
        if point.errors > 0 {
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="{bar_width:.1}" height="{:.1}" fill="{COLOR_SWAP}"/>"##,
                x + 0.5,
                y(point.errors as f64),
                bottom - y(point.errors as f64)
            );
        }
    }
    if let Some(offered) = report.offered_rps {
        let y_offered = y(offered as f64);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y_offered:.1}" x2="{RIGHT}" y2="{y_offered:.1}" stroke="#333" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" class="tick">offered {offered}/s</text>"##,
            RIGHT + 6.0,
            y_offered + 4.0
        );
    }
    for fraction in [0.0, 0.5, 1.0] {
        let rate = highest / 1.1 * fraction;
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{:.0}</text>"##,
            LEFT - 6.0,
            y(rate) + 4.0,
            rate
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Percentiles, SwapEvent, TimelinePoint, new_histogram, percentile_curve};

    fn sample_report() -> Report {
        let mut histogram = new_histogram();
        for micros in 1..=10_000u64 {
            histogram.saturating_record(micros);
        }
        Report {
            workload: "lookup".to_owned(),
            target: "grpc".to_owned(),
            addr: "http://127.0.0.1:7400".to_owned(),
            mode: "open".to_owned(),
            offered_rps: Some(1_000),
            run_started_at_unix_seconds: 0.0,
            warmup_seconds: 1,
            duration_seconds: 3,
            connections: 1,
            concurrency_per_connection: 4,
            requests: 3_000,
            achieved_rps: 1_000.0,
            user_lookups_per_second: 1_000.0,
            impressions_per_second: 0.0,
            fleet_lag: None,
            errors: 1,
            errors_by_code: Default::default(),
            first_error: None,
            latency: Percentiles::of(&histogram),
            service_time: Percentiles::of(&histogram),
            swaps: vec![SwapEvent {
                started_at_seconds: 2.0,
                finished_at_seconds: 2.5,
                pack_file: "a<b>.segpack".to_owned(),
                version: "v2".to_owned(),
                generation: 3,
                unchanged: false,
                error: None,
            }],
            swap_split: None,
            generations_seen: Some((2, 3)),
            redis_used_memory_bytes: None,
            generator_cpu_cores: None,
            server_cpu_seconds: None,
            server_cpu_us_per_request: None,
            machine_cpu: None,
            timeline: (1..=4)
                .map(|second| TimelinePoint {
                    second,
                    measured: second > 1,
                    requests: 1_000,
                    errors: u64::from(second == 3),
                    p50_us: 50,
                    p99_us: 900,
                    max_us: 4_000,
                })
                .collect(),
            percentile_curve: percentile_curve(&histogram),
            slowest_requests: Vec::new(),
        }
    }

    #[test]
    fn renders_a_complete_svg_with_swaps_marked() {
        let svg = render(&sample_report());
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("swap v2"));
        assert!(svg.contains("warm-up"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn empty_run_still_renders() {
        let mut report = sample_report();
        report.timeline.clear();
        report.percentile_curve.clear();
        report.latency = Percentiles::default();
        let svg = render(&report);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN"));
    }
}
