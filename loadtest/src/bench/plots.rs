//! The report's plots, as SVG: latency against offered rate, throughput over
//! time, freshness delays, write throughput against workers.

use std::path::Path;

use plotters::prelude::*;

use super::Report;
use crate::BenchError;

/// One named line of (x, y) points.
struct Series<'a> {
    name: &'a str,
    points: Vec<(f64, f64)>,
}

/// Draws every plot the report has figures for into `dir`.
pub fn draw(report: &Report, dir: &Path) -> Result<(), BenchError> {
    let open: Vec<_> = report
        .traffic
        .iter()
        .filter_map(|r| r.offered.map(|o| (o, r)))
        .collect();
    if !open.is_empty() {
        let line = |name, pick: fn(&super::TrafficRow) -> f64| Series {
            name,
            points: open.iter().map(|(o, r)| (*o, pick(r))).collect(),
        };
        chart(
            &dir.join("latency_vs_rate.svg"),
            "Read latency against offered rate (open loop)",
            ("offered requests/s", "latency ms"),
            &[
                line("p50", |r| r.p50_ms),
                line("p99", |r| r.p99_ms),
                line("p99.9", |r| r.p999_ms),
            ],
            true,
        )?;
    }
    if !report.throughput_over_time.is_empty() {
        chart(
            &dir.join("throughput_over_time.svg"),
            "Answers per second: warm-up, closed loop, then each open-loop rate",
            ("seconds", "answers/s"),
            &[Series {
                name: "answers/s",
                points: report.throughput_over_time.clone(),
            }],
            false,
        )?;
    }
    if let Some(f) = &report.freshness {
        chart(
            &dir.join("freshness.svg"),
            "Freshness: receipt to served, by percentile",
            ("percentile", "delay ms"),
            &[Series {
                name: "delay",
                points: f.curve.iter().map(|(q, ms)| (q * 100.0, *ms)).collect(),
            }],
            false,
        )?;
    }
    let by_workers = |ops: usize, name| Series {
        name,
        points: report
            .writes
            .iter()
            .filter(|m| m.scenario.ops_per_message == ops)
            .map(|m| (m.scenario.workers as f64, m.ops_per_sec()))
            .collect(),
    };
    let writes = [
        by_workers(1, "single-op messages (ops/s)"),
        by_workers(1_000, "1000-op messages (ops/s)"),
    ];
    if writes.iter().any(|s| !s.points.is_empty()) {
        chart(
            &dir.join("writes_vs_workers.svg"),
            "Write throughput against worker count",
            ("workers", "ops committed/s"),
            &writes,
            false,
        )?;
    }
    Ok(())
}

fn chart(
    path: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series],
    log_y: bool,
) -> Result<(), BenchError> {
    let failed = |e: &dyn std::fmt::Display| BenchError::Check(format!("{}: {e}", path.display()));
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.0).fold(0.0, f64::max).max(1.0) * 1.05;
    let x_min = points().map(|p| p.0).fold(f64::INFINITY, f64::min).min(0.0);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max).max(0.001) * 1.1;
    let y_min = points()
        .map(|p| p.1)
        .filter(|y| *y > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(y_max / 10.0)
        * 0.8;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70);
    let colors = [&BLUE, &RED, &GREEN, &MAGENTA];
    macro_rules! plot {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .draw()
                .map_err(|e| failed(&e))?;
            for (s, color) in series.iter().zip(colors.iter().cycle()) {
                let color = **color;
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| failed(&e))?
                    .label(s.name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| failed(&e))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| failed(&e))?;
        }};
    }
    if log_y {
        plot!(
            builder
                .build_cartesian_2d(x_min..x_max, (y_min..y_max).log_scale())
                .map_err(|e| failed(&e))?
        );
    } else {
        plot!(
            builder
                .build_cartesian_2d(x_min..x_max, 0.0..y_max)
                .map_err(|e| failed(&e))?
        );
    }
    root.present().map_err(|e| failed(&e))
}
