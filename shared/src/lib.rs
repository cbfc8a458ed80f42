//! What the gateway and the workers share.
//!
//! Layout:
//! - `domain`: add-on ids, digests, versions, write ids, timestamps — parsed once.
//! - `write`: AMO's write messages, their validation and rejection reasons.
//! - `record`: records and the fold that computes one from its ops.
//! - `compaction`: the ops a pair keeps and the contract's per-pair compaction.
//! - `receipt`: what became of each write.
//! - `event`: invalidation events and WAL positions.
//! - `settings`: settings shared by the processes (flags and `ADDONREG_*`).
//! - `db`: Postgres pools and the embedded migrations.
//! - `topology`: the RabbitMQ names and their declaration.
//! - `broker`: the broker's node URLs, and connecting with jittered backoff.
//! - `telemetry`: MozLog JSON logs.
//! - `sentry`: error reporting (errors and panics to Sentry, when configured).
//! - `admin`: the metrics listener.
//! - `lifecycle`: the stop signal.
//! - `version`: what `/__version__` answers.

pub mod admin;
pub mod broker;
pub mod compaction;
pub mod db;
pub mod domain;
pub mod event;
pub mod lifecycle;
pub mod receipt;
pub mod record;
pub mod sentry;
pub mod settings;
pub mod telemetry;
pub mod topology;
pub mod version;
pub mod write;
