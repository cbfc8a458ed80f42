use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use loadtest::env::Target;
use loadtest::writes::{self, Scenario};
use loadtest::{baseline, report};

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
}

#[derive(Debug, clap::Args)]
struct WriteBench {
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
    let Command::WriteBench(args) = Cli::parse().command;
    let target = Target {
        admin_url: args.admin_url,
        amqp_url: args.amqp_url,
        bin_dir: args.bin_dir,
    };
    let limit = Duration::from_secs(args.limit_secs);
    let run = async {
        let queue = baseline::quorum_queue(&target, args.single_messages).await?;
        let upsert =
            baseline::upsert_rows_per_sec(&target, args.bulk_messages * args.bulk_ops).await?;
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
        Ok::<_, loadtest::BenchError>(())
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
