//! The load generator's own promise, at smoke size: `loadtest writes`,
//! `backfill`, `reads` and `freshness` run against real (debug) workers and
//! gateways in scratch stacks, exit 0, and report every correctness count as 0.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's debug directory, with `write-worker` and `api-gateway`
/// built in it (once, as api-gateway's tests do, when missing).
fn debug_bin_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace.join("target"));
    let dir = target.join("debug");
    for bin in ["write-worker", "api-gateway"] {
        if dir.join(bin).exists() {
            continue;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--quiet", "-p", bin, "--bin", bin])
            .current_dir(&workspace)
            .status()
            .expect("run cargo build");
        assert!(built.success(), "build {bin}");
    }
    dir
}

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
