//! addonreg's load generator and benchmarks.
//!
//! Layout:
//! - `env`: what a benchmark runs in: a scratch database and broker prefix of
//!   its own, and real addonreg processes started from release binaries.
//! - `baseline`: what the building blocks alone do in the same run (raw
//!   quorum-queue publish and consume; a set-based upsert through sqlx).
//! - `bench`: `loadtest bench`, the whole suite and its report (`bench::report`,
//!   `bench::plots`).
//! - `write_bench`: `loadtest write-bench`: a backlog of AMO-shaped writes
//!   drained by N workers, timed until every receipt exists.
//! - `publish`: publishing as AMO does (persistent, confirms), paced or
//!   not, with a progress bar.
//! - `mix`: what `loadtest writes` publishes: single-op and bulk writes over
//!   shared pairs, shuffled, duplicated, with poison mixed in.
//! - `writes`: `loadtest writes`: publishes the mix to a scratch or running
//!   stack and checks records, receipts and dead letters against the fold.
//! - `backfill`: `loadtest backfill`: N records through the real write path, timed.
//! - `read_bench`: `loadtest read-bench`: the gateway beside a bare warp
//!   handler (wrk) and pgbench's select-by-primary-key.
//! - `freshness`: `loadtest freshness`: the delay from a write's receipt to
//!   the gateway serving it, under read load.
//! - `reads`: `loadtest reads`: Firefox-shaped read traffic (Zipf keys, 404s,
//!   bulk lookups, listings), closed or open loop, every answer checked.
//! - `cache`: the cache sweep of `loadtest bench` (hit ratio and RSS per size).
//! - `chaos`: `loadtest chaos`: faults held under load, then every write checked.
//! - `report`: the summary tables the single commands print.
//!
//! Every run targets loopback only, is bounded in messages and time, and
//! cleans up what it created.

pub mod backfill;
pub mod baseline;
pub mod bench;
pub mod cache;
pub mod chaos;
pub mod env;
pub mod freshness;
pub mod mix;
pub mod publish;
pub mod read_bench;
pub mod reads;
pub mod report;
pub mod write_bench;
pub mod writes;

/// Why a benchmark could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Postgres failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// RabbitMQ failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// A process could not be started.
    #[error("process {0}: {1}")]
    Process(String, std::io::Error),
    /// A bound was reached before the work was done.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A target outside loopback, or arguments that don't fit together.
    #[error("refused: {0}")]
    Refused(String),
    /// Ctrl-C stopped the run.
    #[error("interrupted")]
    Interrupted,
    /// The work finished wrong.
    #[error("check failed: {0}")]
    Check(String),
}
