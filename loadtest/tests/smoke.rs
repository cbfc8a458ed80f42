//! The load generator's own promise, at smoke size: `loadtest writes`,
//! `backfill`, `reads` and `freshness` run against real (debug) workers and
//! gateways in scratch stacks, exit 0, and report every correctness count as 0.

use std::path::PathBuf;
use std::process::Command;

use harness::process::debug_bin_dir;

/// Runs `loadtest` with `args`; returns its stdout once it exited 0.
fn loadtest(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .expect("run loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadtest {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// The count printed in the summary row `| {name} | {n} |`.
fn count(stdout: &str, name: &str) -> u64 {
    let prefix = format!("| {name} | ");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row {name:?} in:\n{stdout}"));
    line[prefix.len()..]
        .trim_end_matches(" |")
        .parse()
        .unwrap_or_else(|_| panic!("row {line:?}"))
}

#[test]
fn writes_under_load_lose_nothing_apply_nothing_twice_and_dead_letter_only_poison() {
    let bin_dir = debug_bin_dir();
    let stdout = loadtest(&[
        "writes",
        "--messages",
        "300",
        "--poison",
        "20",
        "--workers",
        "2",
        "--max-seconds",
        "45",
        "--bin-dir",
        bin_dir.to_str().expect("UTF-8 path"),
    ]);
    for name in [
        "lost",
        "duplicated effects",
        "wrongly dead-lettered",
        "poison not dead-lettered",
        "records differing from the fold",
        "receipts wrong",
    ] {
        assert_eq!(count(&stdout, name), 0, "{name}:\n{stdout}");
    }
    assert_eq!(count(&stdout, "valid writes"), 300);
    assert_eq!(count(&stdout, "poison messages"), 20);
    assert!(count(&stdout, "writes published twice") > 0);
}

#[test]
fn backfill_loads_every_record() {
    let bin_dir = debug_bin_dir();
    let stdout = loadtest(&[
        "backfill",
        "--records",
        "5000",
        "--max-seconds",
        "45",
        "--bin-dir",
        bin_dir.to_str().expect("UTF-8 path"),
    ]);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| 5000 |"))
        .unwrap_or_else(|| panic!("no result row in:\n{stdout}"));
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!(cells.last(), Some(&"5000"), "records found: {row}");
}

#[test]
fn reads_get_the_seeded_answers_closed_and_open_loop() {
    let bin_dir = debug_bin_dir();
    // Exits non-zero on any wrong or failed answer.
    let stdout = loadtest(&[
        "reads",
        "--records",
        "2000",
        "--seconds",
        "1",
        "--connections",
        "4",
        "--bin-dir",
        bin_dir.to_str().expect("UTF-8 path"),
    ]);
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| closed |") || l.starts_with("| open |"))
        .collect();
    assert_eq!(
        rows.len(),
        5,
        "closed loop and four open-loop rates:\n{stdout}"
    );
    for row in rows {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(
            &cells[cells.len() - 2..],
            ["0", "0"],
            "wrong, failed: {row}"
        );
        assert!(cells[2].parse::<f64>().expect("req/s") > 0.0, "{row}");
    }
}

#[test]
fn freshness_is_measured_for_every_sample() {
    let bin_dir = debug_bin_dir();
    // Debug binaries on a busy machine: the 1 s promise itself is the
    // gateway's tests' to keep; here the tool must measure every sample.
    let stdout = loadtest(&[
        "freshness",
        "--samples",
        "20",
        "--records",
        "2000",
        "--connections",
        "4",
        "--read-rate",
        "200",
        "--max-delay-ms",
        "5000",
        "--bin-dir",
        bin_dir.to_str().expect("UTF-8 path"),
    ]);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| 20 |"))
        .unwrap_or_else(|| panic!("no result row in:\n{stdout}"));
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!(cells[4], "0", "never served: {row}");
    assert_eq!(cells[7], "0", "wrong reads: {row}");
}

/// A scratch report directory, removed at the end of the test.
struct ReportDir(PathBuf);

impl ReportDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("addonreg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    fn report(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.0.join("report.json")).expect("report.json");
        serde_json::from_str(&text).expect("report.json is JSON")
    }
}

impl Drop for ReportDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn bench_runs_every_step_and_writes_the_three_kinds_of_report() {
    let bin_dir = debug_bin_dir();
    let out = ReportDir::new("bench-smoke");
    let stdout = loadtest(&[
        "bench",
        "--smoke",
        "--out",
        out.0.to_str().expect("UTF-8 path"),
        "--bin-dir",
        bin_dir.to_str().expect("UTF-8 path"),
    ]);
    let report = out.report();
    assert_eq!(report["outcome"], "complete", "{stdout}");
    let checks = report["checks"].as_array().expect("checks");
    assert!(checks.len() >= 9, "every check counted: {checks:?}");
    for check in checks {
        assert_eq!(check[1], 0, "{check}");
    }
    let names: Vec<&str> = report["reads"]
        .as_array()
        .expect("reads")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "bare warp, fixed body",
            "nginx, static file",
            "gateway, cache hits (one hot key), logs off",
            "gateway, cache hits, as infra/local/up (every request logged to a file)",
            "gateway, cache hits, as the production overlay (10% of requests logged)",
            "gateway, random keys (cache on)",
            "gateway, cache off, random keys"
        ]
    );
    assert!(report["pgbench_tps"].as_f64().expect("pgbench") > 0.0);
    assert_eq!(report["traffic"].as_array().expect("traffic").len(), 6);
    assert!(
        !report["throughput_over_time"]
            .as_array()
            .expect("series")
            .is_empty()
    );
    let cache = report["cache"].as_array().expect("cache");
    assert_eq!(cache.len(), 3, "off, 100, 5000 entries");
    assert_eq!(cache[0]["hit_ratio"], 0.0, "the cache off hits nothing");
    assert_eq!(
        report["cache_memory"]["entries"], 5000,
        "every record cached"
    );
    assert!(report["cache_memory"]["rss_bytes"].as_u64().expect("rss") > 0);
    assert_eq!(report["freshness"]["samples"], 10);
    assert_eq!(report["writes"].as_array().expect("writes").len(), 4);
    assert_eq!(report["batches"].as_array().expect("batches").len(), 2);
    assert_eq!(report["backfill"]["records_found"], 5000);
    assert!(report["queue_baseline"]["consume"].as_f64().expect("queue") > 0.0);
    assert!(
        report["targets"].as_array().expect("targets").len() >= 8,
        "each target measured: {}",
        report["targets"]
    );
    let markdown = std::fs::read_to_string(out.0.join("report.md")).expect("report.md");
    for heading in [
        "## Targets",
        "## Correctness",
        "## Reads beside",
        "## Cache size",
        "## Freshness",
        "## Writes: throughput",
        "## Backfill",
    ] {
        assert!(markdown.contains(heading), "{heading} in report.md");
    }
    assert!(stdout.contains("## Targets"), "the report is printed too");
    for plot in [
        "latency_vs_rate",
        "throughput_over_time",
        "freshness",
        "writes_vs_workers",
    ] {
        let svg = std::fs::read_to_string(out.0.join(format!("{plot}.svg"))).expect(plot);
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{plot}.svg draws lines"
        );
    }
}

#[test]
fn an_interrupted_bench_keeps_a_partial_report() {
    let bin_dir = debug_bin_dir();
    let out = ReportDir::new("bench-interrupted");
    let child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["bench", "--smoke", "--out"])
        .arg(&out.0)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start loadtest bench");
    // Interrupt once the first step is in the report.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !out.0.join("report.json").exists()
        || out.report()["reads"].as_array().is_none_or(Vec::is_empty)
    {
        assert!(std::time::Instant::now() < deadline, "no first step");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(interrupted.success());
    let exit = child.wait_with_output().expect("wait for loadtest");
    assert!(!exit.status.success(), "an interrupted run does not pass");
    let report = out.report();
    assert_eq!(report["outcome"], "interrupted (partial report)");
    assert_eq!(
        report["reads"].as_array().expect("reads").len(),
        7,
        "the finished step is kept"
    );
    assert!(report["backfill"].is_null(), "later steps never ran");
    let stdout = String::from_utf8_lossy(&exit.stdout);
    assert!(
        stdout.contains("interrupted (partial report)"),
        "printed: {stdout}"
    );
}
