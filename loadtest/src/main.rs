use std::process::ExitCode;

use clap::{Parser, Subcommand};

use loadtest::{backfill, bench, chaos, freshness, read_bench, reads, write_bench, writes};

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
    WriteBench(write_bench::WriteBenchArgs),
    /// Correctness under load: a mix of single-op and bulk writes, shuffled,
    /// duplicated, with revokes, deletes and poison, then every record,
    /// receipt and dead letter checked against the contract's fold. Exits
    /// non-zero when anything is lost, applied twice or misfiled.
    Writes(writes::WritesArgs),
    /// N records loaded through the real write path (1,000-op registers,
    /// with confirms), timed until every receipt is applied.
    Backfill(backfill::BackfillArgs),
    /// Read throughput and latency: the gateway (one hot key; random keys)
    /// beside a bare warp handler and pgbench, all in the same run.
    ReadBench(read_bench::ReadBenchArgs),
    /// Firefox-shaped reads on a gateway over seeded records: Zipf keys,
    /// unknown keys, bulk lookups, listings; closed loop, then open loop at
    /// shares of that throughput; every answer checked, latency in an
    /// HdrHistogram. Exits non-zero on any wrong or failed answer.
    Reads(reads::ReadsArgs),
    /// The freshness promise, measured: delay from a write's receipt to the
    /// gateway serving it (p50/p99/max), under Firefox-shaped read load.
    Freshness(freshness::FreshnessArgs),
    /// The whole suite, end to end (about 10 minutes): reads, cache sizes,
    /// freshness, write correctness and throughput, backfill, each beside
    /// its baseline measured in the same run (bare warp, nginx, pgbench, raw
    /// RabbitMQ and Postgres). Writes target/loadtest/<timestamp>/ with
    /// report.json, report.md and SVG plots; Ctrl-C keeps a partial report.
    /// Exits non-zero when a correctness check fails.
    Bench(bench::BenchArgs),
    /// Fault injection under steady load, on a stack of its own (Postgres
    /// primary and replica, RabbitMQ node, release gateways and workers):
    /// workers, broker, primary, replica and gateway failures, poison and a
    /// burst, one at a time, each timed to recovery; every write checked
    /// against the contract. Writes target/loadtest/chaos-<timestamp>/.
    /// Exits non-zero when a write is lost, applied twice or misfiled.
    Chaos(chaos::ChaosArgs),
    /// The baseline server: answers one fixed record to every GET.
    BareWarp {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::WriteBench(args) => write_bench::command(args).await,
        Command::Writes(args) => writes::command(args).await,
        Command::Backfill(args) => backfill::command(args).await,
        Command::ReadBench(args) => read_bench::command(args).await,
        Command::Reads(args) => reads::command(args).await,
        Command::Freshness(args) => freshness::command(args).await,
        Command::Bench(args) => bench::command(args).await,
        Command::Chaos(args) => chaos::command(args).await,
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
