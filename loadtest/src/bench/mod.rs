//! `loadtest bench`: the whole suite, end to end, each figure beside the
//! baseline measured in the same run, with the correctness checks on. Every
//! step adds to one [`Report`], written to disk after each step, so that an
//! interrupted run still leaves (and prints) what it measured.

mod plots;
mod report;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use report::{Report, TargetRow, TrafficRow};

use crate::backfill::{self, Backfill};
use crate::cache::{self, CacheSweep};
use crate::env::Target;
use crate::freshness::{self, FreshnessRun};
use crate::mix::{MixSettings, Plan};
use crate::read_bench::{self, ReadBench};
use crate::reads::{self, ReadsRun, Shape};
use crate::write_bench::{self, Scenario};
use crate::writes::{self, Bounds};
use crate::{BenchError, baseline};
use shared::domain::Timestamp;

/// How big each step is: [`Sizes::full`] for a release, [`Sizes::smoke`] for
/// the test suite (seconds, not minutes; the ratios mean little there).
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Seconds of each HTTP measurement.
    pub seconds: u64,
    /// Alternated rounds of bare warp, nginx and the hot key.
    pub rounds: usize,
    /// Records behind the read benchmarks.
    pub read_records: u64,
    /// Records behind the cache sweep (its largest cache holds them all).
    pub cache_records: u64,
    /// Cache sizes of the sweep (0: off).
    pub cache_sizes: Vec<u64>,
    /// Sampled writes of the freshness step.
    pub freshness_samples: usize,
    /// Background reads/s during the freshness step.
    pub freshness_read_rate: f64,
    /// Distinct valid writes of the correctness check.
    pub check_writes: usize,
    /// Single-op messages of each write-throughput scenario.
    pub single_messages: usize,
    /// 1000-op messages of each write-throughput scenario.
    pub bulk_messages: usize,
    /// Worker counts of the write sweep.
    pub workers: Vec<usize>,
    /// Worker batch sizes (messages a transaction) of the batch sweep.
    pub batch_sizes: Vec<usize>,
    /// Records of the backfill.
    pub backfill_records: usize,
}

impl Sizes {
    /// The release run: about ten minutes on a 2-core machine.
    pub fn full() -> Self {
        Self {
            seconds: 8,
            rounds: 3,
            read_records: 100_000,
            cache_records: 1_000_000,
            cache_sizes: vec![0, 1_000, 100_000, 1_000_000],
            freshness_samples: 200,
            freshness_read_rate: 2_000.0,
            check_writes: 20_000,
            single_messages: 20_000,
            bulk_messages: 100,
            workers: vec![1, 2, 4],
            batch_sizes: vec![1, 50, 500],
            backfill_records: 1_000_000,
        }
    }

    /// The test suite's run: every step, a few seconds each.
    pub fn smoke() -> Self {
        Self {
            seconds: 1,
            rounds: 1,
            read_records: 2_000,
            cache_records: 5_000,
            cache_sizes: vec![0, 100, 5_000],
            freshness_samples: 10,
            freshness_read_rate: 200.0,
            check_writes: 500,
            single_messages: 500,
            bulk_messages: 5,
            workers: vec![1, 2],
            batch_sizes: vec![1, 500],
            backfill_records: 5_000,
        }
    }
}

/// Where the run's report goes, and the shared state that an interrupt reads.
pub struct Run {
    /// `target/loadtest/<timestamp>/`.
    pub dir: PathBuf,
    report: Mutex<Report>,
}

impl Run {
    /// A run writing to `dir` (created).
    pub fn new(dir: PathBuf, sizes: &Sizes) -> Result<Arc<Self>, BenchError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::Process(format!("create {}", dir.display()), e))?;
        Ok(Arc::new(Self {
            dir,
            report: Mutex::new(Report::new(sizes)),
        }))
    }

    fn update(&self, change: impl FnOnce(&mut Report)) -> Result<(), BenchError> {
        let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut report);
        report.evaluate();
        report.write(&self.dir)
    }

    /// The report as it stands, ends it as `outcome` and writes it once more.
    pub fn finish(&self, outcome: &str) -> Result<Report, BenchError> {
        let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        report.outcome = outcome.to_string();
        report.finished_at = Some(Timestamp::now().to_string());
        report.evaluate();
        report.write(&self.dir)?;
        plots::draw(&report, &self.dir)?;
        Ok(report.clone())
    }
}

/// Runs every step in order; the report grows after each.
pub async fn run(target: &Target, sizes: &Sizes, run: &Run) -> Result<(), BenchError> {
    step("reads against bare warp, nginx and pgbench");
    let bench = ReadBench {
        records: sizes.read_records as usize,
        connections: 64,
        seconds: sizes.seconds,
        rounds: sizes.rounds,
    };
    let (runs, pgbench) = read_bench::run(target, bench).await?;
    run.update(|r| {
        r.reads = runs;
        r.pgbench_tps = Some(pgbench);
    })?;

    step("Firefox-shaped reads: closed loop, then open loop at shares of it");
    let (rows, over_time) = firefox_reads(target, sizes).await?;
    run.update(|r| {
        r.traffic = rows;
        r.throughput_over_time = over_time;
    })?;

    step("cache sizes, and memory with every record cached");
    let sweep = CacheSweep {
        records: sizes.cache_records,
        sizes: sizes.cache_sizes.clone(),
        shape: firefox_shape(sizes, sizes.cache_records, None),
    };
    let (cache_runs, memory) = cache::run(target, sweep).await?;
    run.update(|r| {
        r.cache = cache_runs;
        r.cache_memory = memory;
    })?;

    step("freshness under read load");
    let fresh = freshness::run(
        target,
        FreshnessRun {
            samples: sizes.freshness_samples,
            records: sizes.read_records,
            reads: Shape {
                connections: 16,
                rewritten: freshness::REWRITTEN,
                ..firefox_shape(sizes, sizes.read_records, Some(sizes.freshness_read_rate))
            },
        },
    )
    .await?;
    run.update(|r| r.freshness = Some(report::FreshnessRow::from(&fresh)))?;

    step("writes: the contract's fold over a shuffled, duplicated, poisoned mix");
    let plan = Plan::new(
        MixSettings {
            messages: sizes.check_writes,
            bulk_share: 0.005,
            bulk_ops: 1_000,
            duplicate_share: 0.05,
            revoke_share: 0.1,
            delete_share: 0.05,
            poison: 100,
            seed: 0xbe7c,
        },
        Timestamp::now(),
    )?;
    let bounds = Bounds {
        rate: None,
        max: Duration::from_secs(180),
    };
    let outcome = writes::run_scratch(target, 2, &plan, 0xbe7c, bounds).await?;
    run.update(|r| r.write_check = Some(outcome))?;

    step("raw RabbitMQ quorum queue and Postgres upsert");
    let queue = baseline::quorum_queue(target, sizes.single_messages).await?;
    let upsert = baseline::upsert_rows_per_sec(target, sizes.bulk_messages * 1_000).await?;
    run.update(|r| {
        r.queue_baseline = Some(queue);
        r.upsert_rows_per_sec = Some(upsert);
    })?;

    step("write throughput by worker count and message size");
    let limit = Duration::from_secs(300);
    for (ops_per_message, messages) in [(1, sizes.single_messages), (1_000, sizes.bulk_messages)] {
        for &workers in &sizes.workers {
            let scenario = Scenario {
                ops_per_message,
                messages,
                workers,
                batch_max_messages: None,
            };
            let measured = write_bench::run(target, scenario, limit).await?;
            run.update(|r| r.writes.push(measured))?;
        }
    }
    step("write throughput by worker batch size (single-op messages, 2 workers)");
    for &batch in &sizes.batch_sizes {
        let scenario = Scenario {
            ops_per_message: 1,
            messages: sizes.single_messages / 2,
            workers: 2,
            batch_max_messages: Some(batch),
        };
        let measured = write_bench::run(target, scenario, limit).await?;
        run.update(|r| r.batches.push(measured))?;
    }

    step("backfill through the real write path");
    let backfilled = backfill::run(
        target,
        Backfill {
            records: sizes.backfill_records,
            ops_per_message: 1_000,
            workers: 2,
            max: Duration::from_secs(300),
        },
    )
    .await?;
    run.update(|r| r.backfill = Some(backfilled))?;
    Ok(())
}

fn step(what: &str) {
    eprintln!("bench: {what}");
}

/// Firefox-shaped reads: Zipf keys, 5% unknown, 2% bulk, 1% listings.
fn firefox_shape(sizes: &Sizes, records: u64, rate: Option<f64>) -> Shape {
    Shape {
        connections: 32,
        duration: Duration::from_secs(sizes.seconds),
        max_requests: 50_000_000,
        rate,
        zipf: 1.0,
        records,
        unknown_share: 0.05,
        bulk_share: 0.02,
        listing_share: 0.01,
        rewritten: 0,
    }
}

/// The `reads` step, with answers/s sampled every half second.
async fn firefox_reads(
    target: &Target,
    sizes: &Sizes,
) -> Result<(Vec<TrafficRow>, Vec<(f64, f64)>), BenchError> {
    let answered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (answered, done) = (answered.clone(), done.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut points = Vec::new();
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.tick().await;
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let now = answered.load(Ordering::Relaxed);
                points.push((started.elapsed().as_secs_f64(), (now - last) as f64 * 2.0));
                last = now;
            }
            points
        })
    };
    let runs = reads::run(
        target,
        ReadsRun {
            shape: firefox_shape(sizes, sizes.read_records, None),
            open_loop_shares: &[0.25, 0.5, 0.75, 0.9, 1.1],
            cache_entries: 1_000_000,
            seed: 0x5eed,
            answered,
        },
    )
    .await;
    done.store(true, Ordering::Relaxed);
    let points = sampler
        .await
        .map_err(|e| BenchError::Check(format!("throughput sampler: {e}")))?;
    Ok((runs?.iter().map(TrafficRow::from).collect(), points))
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub target: crate::env::TargetArgs,
    /// Every step at a few seconds (the test suite's size): checks
    /// correctness and the report, not speed.
    #[arg(long)]
    pub smoke: bool,
    /// Report directory; target/loadtest/<UTC timestamp> when absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub async fn command(args: BenchArgs) -> Result<(), BenchError> {
    crate::env::require_loopback("--amqp-url", &args.target.amqp_url)?;
    crate::env::require_loopback("--admin-url", &args.target.admin_url)?;
    let sizes = if args.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    let dir = args.out.unwrap_or_else(|| {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        PathBuf::from("target/loadtest").join(stamp)
    });
    let target = args.target.target();
    let run = Run::new(dir, &sizes)?;
    eprintln!("bench: report in {}", run.dir.display());
    let outcome = tokio::select! {
        result = self::run(&target, &sizes, &run) => result,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    // An interrupted step left its scratch database and broker names.
    if let Err(e) = crate::env::drop_leftovers(&target).await {
        eprintln!("bench: cleaning up after the interrupted step: {e}");
    }
    let label = match &outcome {
        Ok(()) => "complete".to_string(),
        Err(BenchError::Interrupted) => "interrupted (partial report)".to_string(),
        Err(e) => format!("failed: {e}"),
    };
    let report = run.finish(&label)?;
    println!("{}", report.markdown());
    eprintln!("bench: report in {}", run.dir.display());
    outcome?;
    if !report.correct() {
        return Err(BenchError::Check(
            "a correctness count is not 0 (see the report)".into(),
        ));
    }
    Ok(())
}
