//! addonreg's write worker.
//!
//! Layout:
//! - `settings`: subcommands, flags and `ADDONREG_*` variables.
//! - `app`: builds a worker from its settings and runs it until stopped.
//! - `broker`: the RabbitMQ session (a consuming and a publishing connection)
//!   and its reconnection with backoff.
//! - `consumer`: batches from the writes queue, acknowledged after processing.
//! - `batch`: one batch parsed, committed, dead-lettered and announced.
//! - `store`: the transaction that folds ops into records and keeps receipts.
//! - `history`: the ops kept with each record.
//! - `faults`: which commit failures are retried and which refuse a write.
//! - `publisher`: dead letters and invalidation events, with confirms.
//! - `janitor`: purges old receipts and tombstones, one worker at a time.
//! - `metrics`: every metric the worker exports.
//! - `dockerflow`: `/__heartbeat__` (a wedged consumer loop fails it) and `/__version__`.
//! - `migrate`: the `migrate` subcommand.
//! - `dlq`: the `dlq` subcommands: list, show, replay and purge dead letters.
//! - `intake`: the `intake` subcommand, AMO's writes over HTTP (`intake/mod.rs`).

pub mod app;
pub mod batch;
pub mod broker;
pub mod consumer;
pub mod dlq;
pub mod dockerflow;
pub mod faults;
pub mod history;
pub mod intake;
pub mod janitor;
pub mod metrics;
pub mod migrate;
pub mod publisher;
pub mod settings;
pub mod store;

pub use app::App;
