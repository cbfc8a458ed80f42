//! addonreg's load generator and benchmarks.
//!
//! Layout:
//! - `env`: what a benchmark runs in: a scratch database and broker prefix of
//!   its own, and real addonreg processes started from release binaries.
//! - `baseline`: what the building blocks alone do in the same run (raw
//!   quorum-queue publish and consume; a set-based upsert through sqlx).
//! - `writes`: the write-path benchmark: a backlog of AMO-shaped writes
//!   drained by N workers, timed until every receipt exists.
//! - `reads`: the read benchmark: the gateway beside a bare warp handler
//!   (wrk) and pgbench's select-by-primary-key.
//! - `report`: the summary tables.
//!
//! Every run targets loopback only, is bounded in messages and time, and
//! cleans up what it created.

pub mod baseline;
pub mod env;
pub mod reads;
pub mod report;
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
    /// The work finished wrong.
    #[error("check failed: {0}")]
    Check(String),
}
