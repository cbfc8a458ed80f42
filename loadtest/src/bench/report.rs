//! The bench's report: every figure with the machine, versions and commit
//! (`report.json`), and the same as tables with each figure beside its
//! baseline and the ratio (`report.md`).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::Sizes;
use crate::BenchError;
use crate::backfill::Backfilled;
use crate::baseline::QueueRates;
use crate::cache::{CacheMemory, CacheRun};
use crate::freshness::Freshness;
use crate::read_bench::{self, HttpRun};
use crate::reads;
use crate::write_bench::Measured;
use crate::writes::Outcome;

/// Everything one bench run measured so far.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "complete", "interrupted", or "failed: …"; "running" until then.
    pub outcome: String,
    /// When the run started (UTC).
    pub started_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// The machine, as /proc describes it.
    pub machine: String,
    /// Versions of what was measured and of the baselines.
    pub versions: Vec<(String, String)>,
    /// The step sizes.
    pub sizes: SizesRow,
    /// wrk against bare warp, nginx and the gateway (medians of rounds).
    pub reads: Vec<HttpRun>,
    /// pgbench select-by-primary-key, same table, same run.
    pub pgbench_tps: Option<f64>,
    /// Firefox-shaped reads: closed loop, then open loop.
    pub traffic: Vec<TrafficRow>,
    /// (seconds since start, answers/s) through the traffic step.
    pub throughput_over_time: Vec<(f64, f64)>,
    /// The cache sweep.
    pub cache: Vec<CacheRun>,
    /// The gateway's memory with every record cached.
    pub cache_memory: Option<CacheMemory>,
    /// Receipt-to-served delays.
    pub freshness: Option<FreshnessRow>,
    /// The write-path correctness check.
    pub write_check: Option<Outcome>,
    /// Raw quorum queue rates.
    pub queue_baseline: Option<QueueRates>,
    /// Raw Postgres upsert rows/s.
    pub upsert_rows_per_sec: Option<f64>,
    /// Write throughput by message size and worker count.
    pub writes: Vec<Measured>,
    /// Write throughput by worker batch size.
    pub batches: Vec<Measured>,
    /// The backfill.
    pub backfill: Option<Backfilled>,
    /// Each target of issue 7 against what was measured.
    pub targets: Vec<TargetRow>,
    /// Correctness counts that must be 0, with their values.
    pub checks: Vec<(String, u64)>,
}

/// The sizes, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct SizesRow {
    /// Seconds per HTTP measurement.
    pub seconds: u64,
    /// Rounds of the alternated read baselines.
    pub rounds: usize,
    /// Records behind the reads.
    pub read_records: u64,
    /// Records behind the cache sweep.
    pub cache_records: u64,
    /// Records backfilled.
    pub backfill_records: usize,
}

/// One traffic measurement.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficRow {
    /// Offered requests/s (open loop), or `None` (closed loop).
    pub offered: Option<f64>,
    /// Answers/s.
    pub answered: f64,
    /// Latency percentiles in ms: p50, p90, p99, p99.9, max.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Answers that differ from what was written.
    pub wrong: u64,
    /// Requests that got no answer.
    pub failed: u64,
}

impl From<&reads::Measured> for TrafficRow {
    fn from(m: &reads::Measured) -> Self {
        Self {
            offered: m.offered,
            answered: m.rps(),
            p50_ms: m.percentile_ms(0.5),
            p90_ms: m.percentile_ms(0.9),
            p99_ms: m.percentile_ms(0.99),
            p999_ms: m.percentile_ms(0.999),
            max_ms: m.latency_us.max() as f64 / 1000.0,
            wrong: m.wrong,
            failed: m.failed,
        }
    }
}

/// The freshness step.
#[derive(Debug, Clone, Serialize)]
pub struct FreshnessRow {
    /// Samples measured.
    pub samples: u64,
    /// Delay percentiles in ms.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Longest.
    pub max_ms: f64,
    /// Samples never served within the limit.
    pub never_served: usize,
    /// Background reads/s.
    pub reads_per_sec: f64,
    /// Background reads that were wrong or failed.
    pub reads_wrong: u64,
    /// (quantile, delay ms) for the plot.
    pub curve: Vec<(f64, f64)>,
}

impl From<&Freshness> for FreshnessRow {
    fn from(f: &Freshness) -> Self {
        let curve = (0..=100)
            .map(|i| {
                let q = f64::from(i) / 100.0;
                (q, f.percentile_ms(q))
            })
            .collect();
        Self {
            samples: f.delay_us.len(),
            p50_ms: f.percentile_ms(0.5),
            p99_ms: f.percentile_ms(0.99),
            max_ms: f.delay_us.max() as f64 / 1000.0,
            never_served: f.stale,
            reads_per_sec: f.reads.rps(),
            reads_wrong: f.reads.wrong + f.reads.failed,
            curve,
        }
    }
}

/// One target: what was asked, what was measured, whether it was met.
#[derive(Debug, Clone, Serialize)]
pub struct TargetRow {
    /// The target, as issue 7 states it.
    pub target: String,
    /// The figure and its baseline, in words.
    pub measured: String,
    /// The measured value over the baseline (or over the limit).
    pub ratio: f64,
    /// Whether it was met.
    pub met: bool,
}

impl Report {
    /// An empty report for a run of `sizes`, stamped with the machine.
    pub fn new(sizes: &Sizes) -> Self {
        Self {
            outcome: "running".into(),
            started_at: shared::domain::Timestamp::now().to_string(),
            finished_at: None,
            machine: crate::report::machine(),
            versions: versions(),
            sizes: SizesRow {
                seconds: sizes.seconds,
                rounds: sizes.rounds,
                read_records: sizes.read_records,
                cache_records: sizes.cache_records,
                backfill_records: sizes.backfill_records,
            },
            reads: Vec::new(),
            pgbench_tps: None,
            traffic: Vec::new(),
            throughput_over_time: Vec::new(),
            cache: Vec::new(),
            cache_memory: None,
            freshness: None,
            write_check: None,
            queue_baseline: None,
            upsert_rows_per_sec: None,
            writes: Vec::new(),
            batches: Vec::new(),
            backfill: None,
            targets: Vec::new(),
            checks: Vec::new(),
        }
    }

    fn read(&self, name: &str) -> Option<&HttpRun> {
        self.reads.iter().find(|r| r.name == name)
    }

    fn write_run(&self, ops_per_message: usize, workers: usize) -> Option<&Measured> {
        self.writes.iter().find(|m| {
            m.scenario.ops_per_message == ops_per_message && m.scenario.workers == workers
        })
    }

    /// Recomputes the targets and checks from the figures so far.
    pub fn evaluate(&mut self) {
        let mut t = Vec::new();
        let mut at_least = |target: &str, measured: String, value: f64, goal: f64| {
            t.push(TargetRow {
                target: target.into(),
                measured,
                ratio: value / goal,
                met: value >= goal,
            });
        };
        // The gateway as deployed: with its request logs on.
        for (row, how) in [
            (read_bench::GATEWAY_HOT_LOGGED, "as infra/local/up"),
            (read_bench::GATEWAY_HOT_SAMPLED, "as production"),
        ] {
            let hot = self.read(row);
            if let (Some(hot), Some(bare)) = (hot, self.read(read_bench::BARE_WARP)) {
                at_least(
                    &format!("cache-hit lookups {how} ≥ 0.9× bare warp req/s"),
                    format!("{:.0} vs {:.0} req/s", hot.rps, bare.rps),
                    hot.rps / bare.rps,
                    0.9,
                );
                at_least(
                    &format!("cache-hit p99 {how} within 1.2× bare warp's p99"),
                    format!("{:.2} vs {:.2} ms", hot.p99_ms, bare.p99_ms),
                    1.2,
                    hot.p99_ms / bare.p99_ms,
                );
            }
            if let (Some(hot), Some(nginx)) = (hot, self.read(read_bench::NGINX)) {
                at_least(
                    &format!("cache-hit lookups {how} ≥ 1.2× nginx static file req/s"),
                    format!("{:.0} vs {:.0} req/s", hot.rps, nginx.rps),
                    hot.rps / nginx.rps,
                    1.2,
                );
            }
        }
        if let (Some(off), Some(pg)) = (self.read(read_bench::GATEWAY_UNCACHED), self.pgbench_tps) {
            at_least(
                "cache-off lookups ≥ 0.7× pgbench select-by-key TPS",
                format!("{:.0} req/s vs {pg:.0} tps", off.rps),
                off.rps / pg,
                0.7,
            );
        }
        if let Some(bulk) = self.write_run(1_000, 2) {
            at_least(
                "≥ 50,000 ops/s committed in 1000-op messages, 2 workers",
                format!("{:.0} ops/s", bulk.ops_per_sec()),
                bulk.ops_per_sec(),
                50_000.0,
            );
        }
        if let Some(single) = self.write_run(1, 2) {
            at_least(
                "≥ 5,000 single-op messages/s, 2 workers",
                format!("{:.0} msg/s", single.messages_per_sec()),
                single.messages_per_sec(),
                5_000.0,
            );
            if let Some(queue) = self.queue_baseline {
                at_least(
                    "single-op messages ≥ 0.4× the raw quorum queue (consume)",
                    format!(
                        "{:.0} vs {:.0} msg/s",
                        single.messages_per_sec(),
                        queue.consume
                    ),
                    single.messages_per_sec() / queue.consume,
                    0.4,
                );
            }
        }
        if let Some(f) = &self.freshness {
            at_least(
                "freshness p99 < 50 ms",
                format!("{:.2} ms", f.p99_ms),
                50.0,
                f.p99_ms,
            );
            at_least(
                "freshness max < 1 s",
                format!("{:.2} ms", f.max_ms),
                1_000.0,
                f.max_ms,
            );
        }
        if let Some(b) = &self.backfill
            && b.backfill.records >= 1_000_000
        {
            at_least(
                "backfill of 1 M records ≤ 60 s",
                format!("{:.1} s ({:.0} ops/s)", b.seconds, b.ops_per_sec()),
                60.0,
                b.seconds,
            );
        }
        // Every record cached, give or take moka's lazy count.
        if let Some(m) = &self.cache_memory
            && self.sizes.cache_records >= 1_000_000
            && m.entries * 100 >= self.sizes.cache_records * 99
        {
            let mb = m.rss_bytes as f64 / 1e6;
            at_least(
                "gateway RSS ≤ 200 MB with 1 M cached entries",
                format!("{mb:.0} MB ({} entries)", m.entries),
                200.0,
                mb,
            );
        }
        self.targets = t;

        let mut checks = Vec::new();
        if let Some(o) = &self.write_check {
            for (name, n) in o.counts.rows() {
                checks.push((format!("writes: {name}"), n as u64));
            }
        }
        let reads_wrong: u64 = self.traffic.iter().map(|r| r.wrong + r.failed).sum();
        if !self.traffic.is_empty() {
            checks.push(("reads: wrong or failed answers".into(), reads_wrong));
        }
        let cache_wrong: u64 = self.cache.iter().map(|r| r.wrong).sum();
        if !self.cache.is_empty() {
            checks.push(("cache sweep: wrong or failed answers".into(), cache_wrong));
        }
        if let Some(f) = &self.freshness {
            checks.push((
                "freshness: samples never served".into(),
                f.never_served as u64,
            ));
            checks.push(("freshness: wrong or failed reads".into(), f.reads_wrong));
        }
        self.checks = checks;
    }

    /// Whether every correctness count is 0.
    pub fn correct(&self) -> bool {
        self.checks.iter().all(|(_, n)| *n == 0)
    }

    /// Writes `report.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), BenchError> {
        let io = |what: &str| {
            let what = dir.join(what).display().to_string();
            move |e| BenchError::Process(what, e)
        };
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| BenchError::Check(format!("report.json: {e}")))?;
        // Written aside, then renamed: a reader never sees half a report.
        for (name, text) in [("report.json", json), ("report.md", self.markdown())] {
            let aside = dir.join(format!(".{name}.tmp"));
            std::fs::write(&aside, text).map_err(io(name))?;
            std::fs::rename(&aside, dir.join(name)).map_err(io(name))?;
        }
        Ok(())
    }

    /// The report as markdown tables.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# addonreg benchmark report\n");
        let _ = writeln!(md, "- outcome: **{}**", self.outcome);
        let _ = writeln!(md, "- machine: {}", self.machine);
        let _ = writeln!(
            md,
            "- started {}, finished {}",
            self.started_at,
            self.finished_at.as_deref().unwrap_or("-")
        );
        for (what, version) in &self.versions {
            let _ = writeln!(md, "- {what}: {version}");
        }
        self.targets_md(&mut md);
        self.checks_md(&mut md);
        self.reads_md(&mut md);
        self.traffic_md(&mut md);
        self.cache_md(&mut md);
        self.freshness_md(&mut md);
        self.writes_md(&mut md);
        let _ = writeln!(
            md,
            "\n## Plots\n\n![latency against offered rate](latency_vs_rate.svg)\n\
             ![throughput over time](throughput_over_time.svg)\n\
             ![freshness delays](freshness.svg)\n\
             ![write throughput against workers](writes_vs_workers.svg)"
        );
        md
    }

    fn targets_md(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Targets\n\n| target | measured | ratio to goal | met |\n| --- | --- | ---: | --- |"
        );
        for t in &self.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {} |",
                t.target,
                t.measured,
                t.ratio,
                if t.met { "yes" } else { "**no**" }
            );
        }
    }

    fn checks_md(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n## Correctness (all must be 0)\n\n| check | count |\n| --- | ---: |"
        );
        for (name, n) in &self.checks {
            let _ = writeln!(md, "| {name} | {n} |");
        }
    }

    fn reads_md(&self, md: &mut String) {
        if self.read(read_bench::BARE_WARP).is_none() {
            return;
        }
        let pg = self.pgbench_tps.unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "\n## Reads beside the building blocks\n\nwrk, 64 connections, {} s each; bare warp, nginx and the hot key alternate for {} rounds and each row is the median round. pgbench select by primary key (prepared, 16 clients) on the same table: {pg:.0} tps.\n\n{}",
            self.sizes.seconds,
            self.sizes.rounds,
            crate::report::reads_table(&self.reads, pg).trim_end()
        );
    }

    fn traffic_md(&self, md: &mut String) {
        if self.traffic.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "\n## Firefox-shaped reads\n\n{} records, Zipf 1.0 keys, 5% unknown, 2% bulk lookups of 100, 1% listings; 32 connections; every answer checked. Open-loop latency counts from each request's intended send time.\n\n\
             | loop | offered req/s | answered req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | wrong | failed |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            self.sizes.read_records
        );
        for r in &self.traffic {
            let (kind, offered) = r
                .offered
                .map_or(("closed", "-".to_string()), |o| ("open", format!("{o:.0}")));
            let _ = writeln!(
                md,
                "| {kind} | {offered} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
                r.answered, r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms, r.wrong, r.failed
            );
        }
    }

    fn cache_md(&self, md: &mut String) {
        if self.cache.is_empty() {
            return;
        }
        let off = self
            .cache
            .iter()
            .find(|c| c.cache_entries == 0)
            .map_or(f64::NAN, |c| c.rps);
        let _ = writeln!(
            md,
            "\n## Cache size\n\nThe same Firefox-shaped reads (closed loop) over {} records.\n\n\
             | cache entries | req/s | p50 ms | p99 ms | hit ratio | vs cache off | wrong |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            self.sizes.cache_records
        );
        for c in &self.cache {
            let size = if c.cache_entries == 0 {
                "off".to_string()
            } else {
                c.cache_entries.to_string()
            };
            let _ = writeln!(
                md,
                "| {size} | {:.0} | {:.2} | {:.2} | {:.1}% | {:.2}x | {} |",
                c.rps,
                c.p50_ms,
                c.p99_ms,
                c.hit_ratio * 100.0,
                c.rps / off,
                c.wrong
            );
        }
        if let Some(m) = &self.cache_memory {
            let _ = writeln!(
                md,
                "\nEvery record cached (one lookup each, {:.1} s): {} entries; the gateway's RSS went from {:.0} MB to {:.0} MB ({:.0} bytes an entry).",
                m.fill_seconds,
                m.entries,
                m.rss_before_bytes as f64 / 1e6,
                m.rss_bytes as f64 / 1e6,
                m.rss_bytes.saturating_sub(m.rss_before_bytes) as f64 / m.entries.max(1) as f64
            );
        }
    }

    fn freshness_md(&self, md: &mut String) {
        let Some(f) = &self.freshness else { return };
        let _ = writeln!(
            md,
            "\n## Freshness\n\nDelay from a write's receipt on the primary to the gateway serving the new value, while Firefox-shaped reads run.\n\n\
             | samples | p50 ms | p99 ms | max ms | never served | background reads/s | wrong reads |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n\
             | {} | {:.2} | {:.2} | {:.2} | {} | {:.0} | {} |",
            f.samples, f.p50_ms, f.p99_ms, f.max_ms, f.never_served, f.reads_per_sec, f.reads_wrong
        );
    }

    fn writes_md(&self, md: &mut String) {
        if let Some(o) = &self.write_check {
            let _ = writeln!(
                md,
                "\n## Writes: correctness\n\n{} valid writes ({} ops; {} published twice) and {} poison messages, 2 workers: {:.0} messages/s end to end; every record, receipt and dead letter checked against the contract's fold (counts above).",
                o.writes,
                o.ops,
                o.duplicates,
                o.poison,
                o.published as f64 / o.seconds
            );
        }
        let (Some(queue), Some(upsert)) = (self.queue_baseline, self.upsert_rows_per_sec) else {
            return;
        };
        let _ = writeln!(
            md,
            "\n## Writes: throughput\n\nBaselines in the same run: raw quorum queue (300-byte persistent messages) publish {:.0} msg/s with confirms, consume {:.0} msg/s; Postgres unnest upsert (500 rows a statement, 2 clients) {upsert:.0} rows/s.\n\n\
             | ops/message | workers | batch (messages) | messages | seconds | ops/s | messages/s | vs baseline |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            queue.publish, queue.consume
        );
        for m in self.writes.iter().chain(&self.batches) {
            let s = m.scenario;
            let ratio = if s.ops_per_message == 1 {
                format!("{:.2}x raw consume", m.messages_per_sec() / queue.consume)
            } else {
                format!("{:.2}x raw upsert", m.ops_per_sec() / upsert)
            };
            let batch = s
                .batch_max_messages
                .map_or_else(|| "500 (default)".to_string(), |b| b.to_string());
            let _ = writeln!(
                md,
                "| {} | {} | {batch} | {} | {:.2} | {:.0} | {:.0} | {ratio} |",
                s.ops_per_message,
                s.workers,
                s.messages,
                m.seconds,
                m.ops_per_sec(),
                m.messages_per_sec()
            );
        }
        let _ = writeln!(md, "\n{}", self.scaling_verdict(queue, upsert));
        if let Some(b) = &self.backfill {
            let _ = writeln!(
                md,
                "\n## Backfill\n\n{} records in {}-op messages through RabbitMQ with confirms, {} workers: publish {:.1} s, {:.1} s to the last applied receipt, {:.0} ops/s ({:.2}x raw upsert); {} records found.",
                b.backfill.records,
                b.backfill.ops_per_message,
                b.backfill.workers,
                b.publish_seconds,
                b.seconds,
                b.ops_per_sec(),
                b.ops_per_sec() / upsert,
                b.records_found
            );
        }
    }

    /// Whether throughput grows with workers, and if not, what limits it.
    fn scaling_verdict(&self, queue: QueueRates, upsert: f64) -> String {
        let mut lines = Vec::new();
        for (ops, what, baseline, unit) in [
            (1, "single-op", queue.consume, "raw queue consume"),
            (1_000, "1000-op", upsert, "raw upsert"),
        ] {
            let mut runs: Vec<&Measured> = self
                .writes
                .iter()
                .filter(|m| m.scenario.ops_per_message == ops)
                .collect();
            runs.sort_by_key(|m| m.scenario.workers);
            let (Some(first), Some(last)) = (runs.first(), runs.last()) else {
                continue;
            };
            let rate = |m: &Measured| {
                if ops == 1 {
                    m.messages_per_sec()
                } else {
                    m.ops_per_sec()
                }
            };
            let best = runs
                .iter()
                .copied()
                .max_by(|a, b| rate(a).total_cmp(&rate(b)))
                .unwrap_or(first);
            let share = rate(best) / baseline;
            let limit = if share >= 0.8 {
                format!("it is at {share:.2}x the {unit}, so that is the limit")
            } else {
                format!(
                    "it peaks at {share:.2}x the {unit}: on {} the workers, Postgres and RabbitMQ share the CPU, which is the limit",
                    self.machine
                )
            };
            lines.push(format!(
                "- {what}: {:.0} → {:.0} from {} to {} worker(s), best with {}; {limit}.",
                rate(first),
                rate(last),
                first.scenario.workers,
                last.scenario.workers,
                best.scenario.workers
            ));
        }
        lines.join("\n")
    }
}

/// Versions of addonreg and of each building block, as their tools print them.
fn versions() -> Vec<(String, String)> {
    let first_line = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| "not found".into())
    };
    let commit = first_line("git", &["rev-parse", "HEAD"]);
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    vec![
        (
            "addonreg commit".into(),
            format!(
                "{commit}{}",
                if dirty { " (with local changes)" } else { "" }
            ),
        ),
        ("loadtest".into(), env!("CARGO_PKG_VERSION").into()),
        ("kernel".into(), first_line("uname", &["-sr"])),
        (
            "PostgreSQL (client)".into(),
            first_line("psql", &["--version"]),
        ),
        ("RabbitMQ".into(), first_line("rabbitmqctl", &["version"])),
        ("nginx".into(), first_line("nginx", &["-v"])),
        ("wrk".into(), first_line("wrk", &["-v"])),
        ("pgbench".into(), first_line("pgbench", &["--version"])),
    ]
}
