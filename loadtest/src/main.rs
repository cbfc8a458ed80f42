use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use loadtest::env::Target;
use loadtest::writes::{self, Scenario};
use loadtest::{baseline, reads, report};

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
    /// Read throughput and latency: the gateway (one hot key; random keys)
    /// beside a bare warp handler and pgbench, all in the same run.
    ReadBench(ReadBenchArgs),
    /// The baseline server: answers one fixed record to every GET.
    BareWarp {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
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

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::WriteBench(args) => write_bench(args).await,
        Command::ReadBench(args) => read_bench(args).await,
        Command::BareWarp { listen } => {
            reads::serve_bare_warp(listen).await;
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

async fn read_bench(args: ReadBenchArgs) -> Result<(), loadtest::BenchError> {
    let target = args.target.target();
    let bench = reads::ReadBench {
        records: args.records,
        connections: args.connections,
        seconds: args.seconds,
        rounds: args.rounds.max(1),
    };
    let (runs, pgbench) = reads::run(&target, bench).await?;
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
            };
            eprintln!("running {ops_per_message}-op messages x{messages}, {workers} worker(s)");
            runs.push(writes::run(&target, scenario, limit).await?);
        }
    }
    report::print_writes(queue, upsert, &runs);
    Ok(())
}
