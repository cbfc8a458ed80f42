//! The chaos run's report: a markdown table (printed, and in `table.md`),
//! `report.json`, and the soak's plot (`soak.svg`: RSS and open files of
//! every process, database connections and queue depth over time).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::prelude::*;

use super::ChaosReport;
use super::faults::{ScenarioResult, SoakSample};
use crate::BenchError;

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// The table, in markdown.
pub fn table(report: &ChaosReport) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| scenario | writes sent | lost | applied twice | valid dead-lettered | reads ok % during fault | read p99 ms during fault | recovery s | freshness p99 / max during fault ms | stale during fault | freshness p99 after ms | poison missed | records ≠ fold | unexpected exits |"
    );
    let _ = writeln!(
        t,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &report.scenarios {
        if let Some(error) = &r.error {
            let _ = writeln!(
                t,
                "| {} | failed: {} | | | | | | | | | | | | |",
                r.scenario,
                error.replace('|', "/")
            );
            continue;
        }
        let c = &r.counts;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            c.writes_sent,
            c.lost,
            c.applied_twice,
            c.valid_dead_lettered,
            opt(r.reads_ok_pct, 2),
            opt(r.read_p99_ms, 1),
            match r.recovery_s {
                Some(s) => format!("{s:.2}"),
                // The soak injects no fault: nothing to recover from.
                None if r.scenario == "soak" => "-".to_string(),
                None => "never".to_string(),
            },
            match (r.during_p99_ms, r.during_max_ms) {
                (Some(p99), Some(max)) => format!("{p99:.1} / {max:.1}"),
                _ => "-".to_string(),
            },
            match (r.during_samples, r.promised_during) {
                (0, _) => "-".to_string(),
                (_, true) => format!("{} of {}", r.during_missed, r.during_samples),
                // Measured, not promised: a silent partition.
                (_, false) => format!("({} of {})", r.during_missed, r.during_samples),
            },
            opt(r.freshness_p99_ms, 1),
            c.poison_missed,
            c.records_differing,
            r.unexpected_exits.len()
        );
    }
    t
}

fn notes(report: &ChaosReport) -> String {
    let mut t = String::new();
    for r in &report.scenarios {
        let mut lines = r.notes.clone();
        if r.restore_s > 0.0 {
            lines.push(format!("lifting the fault took {:.2} s", r.restore_s));
        }
        if let Some(p99) = r.calm_read_p99_ms {
            lines.push(format!("read p99 before the fault {p99:.1} ms"));
        }
        if r.reads_failed + r.reads_wrong > 0 {
            lines.push(format!(
                "reads during the fault: {} answered, {} wrong, {} without answer{}",
                r.reads,
                r.reads_wrong,
                r.reads_failed,
                r.first_wrong_read
                    .as_ref()
                    .map_or_else(String::new, |w| format!(" (first wrong: {w})"))
            ));
        }
        if r.republished > 0 {
            lines.push(format!(
                "{} publishes made again after the broker did not confirm them",
                r.republished
            ));
        }
        if r.counts.poison_sent > 0 {
            lines.push(format!("{} poison messages sent", r.counts.poison_sent));
        }
        if r.counts.unconfirmed > 0 {
            lines.push(format!(
                "{} messages never confirmed by the broker",
                r.counts.unconfirmed
            ));
        }
        if r.freshness_missed > 0 {
            lines.push(format!(
                "{} of {} freshness samples never served within 5 s",
                r.freshness_missed, r.freshness_samples
            ));
        }
        lines.extend(r.unexpected_exits.iter().cloned());
        if !lines.is_empty() {
            let _ = writeln!(t, "- {}: {}", r.scenario, lines.join("; "));
        }
    }
    for repair in &report.repairs {
        let _ = writeln!(t, "- repaired {repair}");
    }
    t
}

/// The soak summary: per series, first, after warm-up, last and max, and
/// whether it stayed flat (last ≤ 1.2 × after warm-up).
pub fn soak_table(samples: &[SoakSample]) -> String {
    let mut t = String::new();
    if samples.len() < 2 {
        return t;
    }
    let _ = writeln!(
        t,
        "| series | first | after warm-up | last | max | flat |\n| --- | ---: | ---: | ---: | ---: | --- |"
    );
    // Warm-up: the first third of the soak, at most two minutes (the
    // gateways' caches fill for about a minute and a half at 500 reads/s).
    let total = samples.last().map_or(0.0, |s| s.t_s);
    let warm = (total / 3.0).min(120.0);
    let warm_index = samples.iter().position(|s| s.t_s >= warm).unwrap_or(0);
    for (name, values) in series(samples) {
        let present: Vec<f64> = values.iter().flatten().copied().collect();
        if present.is_empty() {
            continue;
        }
        let first = present[0];
        let after = values[warm_index..]
            .iter()
            .flatten()
            .next()
            .copied()
            .unwrap_or(first);
        let last = *present.last().unwrap_or(&first);
        let max = present.iter().copied().fold(f64::MIN, f64::max);
        let flat = last <= after * 1.2 || (name.starts_with("queue") && last <= 1_000.0);
        let _ = writeln!(
            t,
            "| {name} | {first:.0} | {after:.0} | {last:.0} | {max:.0} | {} |",
            if flat { "yes" } else { "NO" }
        );
    }
    t
}

/// Every series of the soak by name (`rss MiB worker-1`, …), one value (or
/// none) per sample.
fn series(samples: &[SoakSample]) -> BTreeMap<String, Vec<Option<f64>>> {
    let mut all: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
    let n = samples.len();
    for (i, s) in samples.iter().enumerate() {
        let mut put = |name: String, v: Option<f64>| {
            all.entry(name).or_insert_with(|| vec![None; n])[i] = v;
        };
        for (p, kib) in &s.rss_kib {
            put(format!("rss MiB {p}"), Some(*kib as f64 / 1024.0));
        }
        for (p, fds) in &s.fds {
            put(format!("open files {p}"), Some(*fds as f64));
        }
        put(
            "db connections".into(),
            (s.db_connections >= 0).then_some(s.db_connections as f64),
        );
        put("queue depth".into(), s.queue_depth.map(f64::from));
    }
    all
}

/// Draws the soak's series in four panels.
fn plot(samples: &[SoakSample], path: &std::path::Path) -> Result<(), BenchError> {
    let fail = |e: String| BenchError::Check(format!("plot: {e}"));
    let root = SVGBackend::new(path, (1000, 1200)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let panels = root.split_evenly((4, 1));
    let all = series(samples);
    let t_max = samples.last().map_or(1.0, |s| s.t_s.max(1.0));
    let groups = [
        ("RSS (MiB)", "rss MiB "),
        ("open files", "open files "),
        ("database connections (primary)", "db connections"),
        ("writes queue depth", "queue depth"),
    ];
    for (panel, (title, prefix)) in panels.iter().zip(groups) {
        let chosen: Vec<(&String, &Vec<Option<f64>>)> =
            all.iter().filter(|(k, _)| k.starts_with(prefix)).collect();
        let y_max = chosen
            .iter()
            .flat_map(|(_, v)| v.iter().flatten())
            .copied()
            .fold(1.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(|e| fail(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        for (i, (name, values)) in chosen.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = samples
                .iter()
                .zip(values.iter())
                .filter_map(|(s, v)| v.map(|v| (s.t_s, v)))
                .collect();
            let label = name.trim_start_matches(prefix).to_string();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| fail(e.to_string()))?
                .label(if label.is_empty() {
                    name.to_string()
                } else {
                    label
                })
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(e.to_string()))?;
    }
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

fn header(report: &ChaosReport) -> String {
    format!(
        "machine: {}\nrun {} (seed {}): {}{}\n",
        report.machine,
        report.started_at,
        report.seed,
        report.settings,
        if report.interrupted {
            "\nINTERRUPTED: partial results"
        } else {
            ""
        }
    )
}

/// Everything printed: the header, the table, the notes, the soak summary.
pub fn render(report: &ChaosReport) -> String {
    let mut t = header(report);
    t.push('\n');
    t.push_str(&table(report));
    t.push_str(
        "\n(\"during fault\": from the injection until recovery; recovery: from the fault lifted until a new write's receipt exists and gateway-1 serves it; freshness: receipt → served, sampled after recovery)\n",
    );
    let n = notes(report);
    if !n.is_empty() {
        t.push('\n');
        t.push_str(&n);
    }
    let soak = soak_table(&report.soak);
    if !soak.is_empty() {
        t.push_str("\nsoak (sampled every 5 s):\n\n");
        t.push_str(&soak);
    }
    t
}

/// Prints the report.
pub fn print(report: &ChaosReport) {
    println!("{}", render(report));
    println!("report: {}", report.dir.display());
}

/// One line on stderr as each scenario ends.
pub fn print_row_progress(r: &ScenarioResult) {
    let c = &r.counts;
    eprintln!(
        "chaos: {} done: {} writes, lost {}, twice {}, valid dead {}, reads ok {} %, recovery {} s",
        r.scenario,
        c.writes_sent,
        c.lost,
        c.applied_twice,
        c.valid_dead_lettered,
        opt(r.reads_ok_pct, 2),
        opt(r.recovery_s, 2)
    );
}

/// Writes `table.md`, `report.json` and, after a soak, `soak.svg`.
pub fn write(report: &ChaosReport) -> Result<(), BenchError> {
    let io = |what: &str, e: std::io::Error| BenchError::Process(what.to_string(), e);
    std::fs::write(report.dir.join("table.md"), render(report)).map_err(|e| io("table.md", e))?;
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| BenchError::Check(format!("report.json: {e}")))?;
    std::fs::write(report.dir.join("report.json"), json).map_err(|e| io("report.json", e))?;
    if report.soak.len() >= 2 {
        plot(&report.soak, &report.dir.join("soak.svg"))?;
    }
    Ok(())
}
