use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use loadtest::backfill::{self, Backfill};
use loadtest::env::{Target, require_loopback};
use loadtest::mix::{MixSettings, Plan};
use loadtest::write_bench::{self, Scenario};
use loadtest::writes::{self, Bounds};
use loadtest::{BenchError, baseline, bench, read_bench, report};
use shared::domain::Timestamp;
use shared::settings::Prefix;

/// addonreg's load generator and benchmarks. Targets loopback only; every run
/// is bounded and cleans up after itself.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write throughput: backlogs of single-op and bulk writes drained by 1
    /// and 2 workers, beside raw RabbitMQ and Postgres baselines.
    WriteBench(WriteBench),
    /// Correctness under load: a mix of single-op and bulk writes, shuffled,
    /// duplicated, with revokes, deletes and poison, then every record,
    /// receipt and dead letter checked against the contract's fold. Exits
    /// non-zero when anything is lost, applied twice or misfiled.
    Writes(WritesArgs),
    /// N records loaded through the real write path (1,000-op registers,
    /// with confirms), timed until every receipt is applied.
    Backfill(BackfillArgs),
    /// Read throughput and latency: the gateway (one hot key; random keys)
    /// beside a bare warp handler and pgbench, all in the same run.
    ReadBench(ReadBenchArgs),
    /// Firefox-shaped reads on a gateway over seeded records: Zipf keys,
    /// unknown keys, bulk lookups, listings; closed loop, then open loop at
    /// shares of that throughput; every answer checked, latency in an
    /// HdrHistogram. Exits non-zero on any wrong or failed answer.
    Reads(ReadsArgs),
    /// The freshness promise, measured: delay from a write's receipt to the
    /// gateway serving it (p50/p99/max), under Firefox-shaped read load.
    Freshness(FreshnessArgs),
    /// The whole suite, end to end (about 10 minutes): reads, cache sizes,
    /// freshness, write correctness and throughput, backfill, each beside
    /// its baseline measured in the same run (bare warp, nginx, pgbench, raw
    /// RabbitMQ and Postgres). Writes target/loadtest/<timestamp>/ with
    /// report.json, report.md and SVG plots; Ctrl-C keeps a partial report.
    /// Exits non-zero when a correctness check fails.
    Bench(BenchArgs),
    /// Fault injection under steady load, on a stack of its own (Postgres
    /// primary and replica, RabbitMQ node, release gateways and workers):
    /// workers, broker, primary, replica and gateway failures, poison and a
    /// burst, one at a time, each timed to recovery; every write checked
    /// against the contract. Writes target/loadtest/chaos-<timestamp>/.
    /// Exits non-zero when a write is lost, applied twice or misfiled.
    Chaos(loadtest::chaos::ChaosArgs),
    /// The baseline server: answers one fixed record to every GET.
    BareWarp {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Every step at a few seconds (the test suite's size): checks
    /// correctness and the report, not speed.
    #[arg(long)]
    smoke: bool,
    /// Report directory; target/loadtest/<UTC timestamp> when absent.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ReadBenchArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Records seeded.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds of bare warp then gateway (hot key), alternated so that both
    /// see the same machine; each row is the round with the median req/s.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// Where a benchmark puts its scratch databases, broker names and binaries.
#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// Superuser URL of the Postgres that holds the scratch databases.
    #[arg(
        long,
        env = "ADDONREG_TEST_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    admin_url: String,
    /// The broker.
    #[arg(
        long,
        env = "ADDONREG_TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Where the release binaries are (`cargo build --release`).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
}

impl TargetArgs {
    fn target(self) -> Target {
        Target {
            admin_url: self.admin_url,
            amqp_url: self.amqp_url,
            bin_dir: self.bin_dir,
        }
    }
}

#[derive(Debug, clap::Args)]
struct WriteBench {
    #[command(flatten)]
    target: TargetArgs,
    /// Single-op messages per scenario.
    #[arg(long, default_value_t = 20_000)]
    single_messages: usize,
    /// Bulk messages per scenario.
    #[arg(long, default_value_t = 100)]
    bulk_messages: usize,
    /// Ops in each bulk message.
    #[arg(long, default_value_t = 1_000)]
    bulk_ops: usize,
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Longest a scenario may take to drain, in seconds.
    #[arg(long, default_value_t = 300)]
    limit_secs: u64,
}

#[derive(Debug, clap::Args)]
struct WritesArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Workers started on the scratch stack (not with --database-url).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Check a running stack instead of a scratch one: its database URL as
    /// the owner or an admin (receipts and records are only read). Needs
    /// --prefix, and an --amqp-url that may publish to `<prefix>.writes`
    /// and read `<prefix>.writes.dead` (e.g. a worker's).
    #[arg(long, requires = "prefix")]
    database_url: Option<String>,
    /// The running stack's prefix (with --database-url).
    #[arg(long, requires = "database_url")]
    prefix: Option<String>,
    /// Distinct valid writes published.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Share of the writes that carry --bulk-ops ops (at least one if > 0).
    #[arg(long, default_value_t = 0.005)]
    bulk_share: f64,
    /// Ops in a bulk write.
    #[arg(long, default_value_t = 1_000)]
    bulk_ops: usize,
    /// Share of the writes published twice (same id and body).
    #[arg(long, default_value_t = 0.05)]
    duplicate_share: f64,
    /// Share of ops that revoke.
    #[arg(long, default_value_t = 0.1)]
    revoke_share: f64,
    /// Share of ops that delete.
    #[arg(long, default_value_t = 0.05)]
    delete_share: f64,
    /// Invalid messages mixed in; each must be dead-lettered with its reason.
    #[arg(long, default_value_t = 100)]
    poison: usize,
    /// Messages per second; as fast as confirms allow when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Longest the run may take, publishing and waiting together.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Seed of the mix (printed with the results); random when absent.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct BackfillArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Records loaded (one register op each).
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Ops per message.
    #[arg(long, default_value_t = 1_000)]
    ops_per_message: usize,
    /// Workers started.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Longest the load may take.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
}

#[derive(Debug, clap::Args)]
struct ReadsArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Records seeded.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds per measurement (closed loop, then each open-loop rate).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Most requests per measurement.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
    /// Zipf exponent of key popularity (0: uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Share of single lookups for never-written keys (404).
    #[arg(long, default_value_t = 0.05)]
    unknown_share: f64,
    /// Share of requests that are bulk lookups of 100 items.
    #[arg(long, default_value_t = 0.02)]
    bulk_share: f64,
    /// Share of requests that are listings.
    #[arg(long, default_value_t = 0.01)]
    listing_share: f64,
    /// Gateway cache entries (0: cache off).
    #[arg(long, default_value_t = 1_000_000)]
    cache_entries: u64,
}

#[derive(Debug, clap::Args)]
struct FreshnessArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Sampled writes.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Records seeded.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Background read connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Background reads per second (open loop).
    #[arg(long, default_value_t = 5_000.0)]
    read_rate: f64,
    /// Longest delay that still passes, in ms (the contract's promise: 1 s).
    #[arg(long, default_value_t = 1_000)]
    max_delay_ms: u64,
}

async fn freshness(args: FreshnessArgs) -> Result<(), loadtest::BenchError> {
    let target = args.target.target();
    let reads = loadtest::reads::Shape {
        connections: args.connections.max(1),
        duration: Duration::from_secs(600),
        max_requests: u64::MAX,
        rate: Some(args.read_rate),
        zipf: 1.0,
        records: args.records,
        unknown_share: 0.05,
        bulk_share: 0.02,
        listing_share: 0.01,
        rewritten: loadtest::freshness::REWRITTEN,
    };
    let run = loadtest::freshness::FreshnessRun {
        samples: args.samples.max(1),
        records: args.records,
        reads,
    };
    let measured = loadtest::freshness::run(&target, run).await?;
    report::print_freshness(&measured);
    let bad = measured.stale as u64 + measured.reads.wrong + measured.reads.failed;
    if bad > 0 || measured.delay_us.max() >= args.max_delay_ms * 1000 {
        return Err(loadtest::BenchError::Check(format!(
            "{} samples never served, {} wrong or failed reads, max delay {} ms (limit {} ms)",
            measured.stale,
            measured.reads.wrong + measured.reads.failed,
            measured.delay_us.max() / 1000,
            args.max_delay_ms
        )));
    }
    Ok(())
}

async fn reads_check(args: ReadsArgs) -> Result<(), loadtest::BenchError> {
    let target = args.target.target();
    let shape = loadtest::reads::Shape {
        connections: args.connections.max(1),
        duration: Duration::from_secs(args.seconds),
        max_requests: args.max_requests,
        rate: None,
        zipf: args.zipf,
        records: args.records,
        unknown_share: args.unknown_share,
        bulk_share: args.bulk_share,
        listing_share: args.listing_share,
        rewritten: 0,
    };
    let run = loadtest::reads::ReadsRun {
        shape,
        open_loop_shares: &[0.25, 0.5, 0.75, 0.9],
        cache_entries: args.cache_entries,
        seed: 0x5eed,
        answered: Default::default(),
    };
    let runs = loadtest::reads::run(&target, run).await?;
    report::print_traffic(&runs);
    let wrong: u64 = runs.iter().map(|r| r.wrong + r.failed).sum();
    if wrong > 0 {
        let first = runs.iter().find_map(|r| r.first_wrong.clone());
        return Err(loadtest::BenchError::Check(format!(
            "{wrong} wrong or failed answers; first: {}",
            first.unwrap_or_else(|| "a connection failed".into())
        )));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::WriteBench(args) => write_bench(args).await,
        Command::Writes(args) => writes_check(args).await,
        Command::Backfill(args) => backfill(args).await,
        Command::ReadBench(args) => read_bench(args).await,
        Command::Reads(args) => reads_check(args).await,
        Command::Freshness(args) => freshness(args).await,
        Command::Bench(args) => bench(args).await,
        Command::Chaos(args) => loadtest::chaos::command(args).await,
        Command::BareWarp { listen } => {
            read_bench::serve_bare_warp(listen).await;
            Ok(())
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: BenchArgs) -> Result<(), BenchError> {
    require_loopback("--amqp-url", &args.target.amqp_url)?;
    require_loopback("--admin-url", &args.target.admin_url)?;
    let sizes = if args.smoke {
        bench::Sizes::smoke()
    } else {
        bench::Sizes::full()
    };
    let dir = args.out.unwrap_or_else(|| {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        PathBuf::from("target/loadtest").join(stamp)
    });
    let target = args.target.target();
    let run = bench::Run::new(dir, &sizes)?;
    eprintln!("bench: report in {}", run.dir.display());
    let outcome = tokio::select! {
        result = bench::run(&target, &sizes, &run) => result,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    // An interrupted step left its scratch database and broker names.
    if let Err(e) = loadtest::env::drop_leftovers(&target).await {
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

async fn read_bench(args: ReadBenchArgs) -> Result<(), loadtest::BenchError> {
    let target = args.target.target();
    let bench = read_bench::ReadBench {
        records: args.records,
        connections: args.connections,
        seconds: args.seconds,
        rounds: args.rounds.max(1),
    };
    let (runs, pgbench) = read_bench::run(&target, bench).await?;
    report::print_reads(&runs, pgbench);
    Ok(())
}

async fn write_bench(args: WriteBench) -> Result<(), loadtest::BenchError> {
    let target = args.target.target();
    let limit = Duration::from_secs(args.limit_secs);
    let queue = baseline::quorum_queue(&target, args.single_messages).await?;
    let upsert = baseline::upsert_rows_per_sec(&target, args.bulk_messages * args.bulk_ops).await?;
    let mut runs = Vec::new();
    for (ops_per_message, messages) in [
        (1, args.single_messages),
        (args.bulk_ops, args.bulk_messages),
    ] {
        for &workers in &args.workers {
            let scenario = Scenario {
                ops_per_message,
                messages,
                workers,
                batch_max_messages: None,
            };
            eprintln!("running {ops_per_message}-op messages x{messages}, {workers} worker(s)");
            runs.push(write_bench::run(&target, scenario, limit).await?);
        }
    }
    report::print_writes(queue, upsert, &runs);
    Ok(())
}

async fn writes_check(args: WritesArgs) -> Result<(), BenchError> {
    let shares = [
        args.bulk_share,
        args.duplicate_share,
        args.revoke_share,
        args.delete_share,
    ];
    if shares.iter().any(|s| !(0.0..=1.0).contains(s))
        || args.revoke_share + args.delete_share > 1.0
    {
        return Err(BenchError::Refused(
            "shares are between 0 and 1, and --revoke-share + --delete-share at most 1".into(),
        ));
    }
    if args.messages == 0 || !(1..=shared::write::MAX_OPS).contains(&args.bulk_ops) {
        return Err(BenchError::Refused(
            "--messages at least 1, --bulk-ops 1 to 10000".into(),
        ));
    }
    require_loopback("--amqp-url", &args.target.amqp_url)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let settings = MixSettings {
        messages: args.messages,
        bulk_share: args.bulk_share,
        bulk_ops: args.bulk_ops,
        duplicate_share: args.duplicate_share,
        revoke_share: args.revoke_share,
        delete_share: args.delete_share,
        poison: args.poison,
        seed,
    };
    let bounds = Bounds {
        rate: args.rate,
        max: Duration::from_secs(args.max_seconds),
    };
    let plan = Plan::new(settings, Timestamp::now())?;
    eprintln!(
        "run {} (seed {seed}): {} writes ({} ops), {} published twice, {} poison",
        plan.run,
        plan.writes.len(),
        plan.ops(),
        plan.duplicates(),
        plan.poison.len()
    );
    let outcome = match (&args.database_url, &args.prefix) {
        (Some(database_url), Some(prefix)) => {
            require_loopback("--database-url", database_url)?;
            let prefix: Prefix = prefix
                .parse()
                .map_err(|e: String| BenchError::Refused(format!("--prefix: {e}")))?;
            writes::run_existing(
                database_url,
                &args.target.amqp_url,
                &prefix,
                &plan,
                seed,
                bounds,
            )
            .await?
        }
        _ => {
            require_loopback("--admin-url", &args.target.admin_url)?;
            let target = args.target.target();
            writes::run_scratch(&target, args.workers, &plan, seed, bounds).await?
        }
    };
    report::print_check(&outcome);
    if outcome.counts.any() {
        return Err(BenchError::Check(
            "the stack broke the contract (see the counts above)".into(),
        ));
    }
    if outcome.timed_out {
        return Err(BenchError::Timeout(format!(
            "not every receipt arrived within {} s",
            args.max_seconds
        )));
    }
    Ok(())
}

async fn backfill(args: BackfillArgs) -> Result<(), BenchError> {
    require_loopback("--amqp-url", &args.target.amqp_url)?;
    require_loopback("--admin-url", &args.target.admin_url)?;
    if !(1..=shared::write::MAX_OPS).contains(&args.ops_per_message) {
        return Err(BenchError::Refused("--ops-per-message 1 to 10000".into()));
    }
    let target = args.target.target();
    let shape = Backfill {
        records: args.records,
        ops_per_message: args.ops_per_message,
        workers: args.workers,
        max: Duration::from_secs(args.max_seconds),
    };
    eprintln!(
        "backfill: {} records in {}-op messages, {} worker(s)",
        shape.records, shape.ops_per_message, shape.workers
    );
    let done = backfill::run(&target, shape).await?;
    report::print_backfill(&done);
    Ok(())
}
