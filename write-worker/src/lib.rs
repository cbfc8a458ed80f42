//! addonreg's write worker.
//!
//! Layout:
//! - `settings`: subcommands, flags and `ADDONREG_*` variables.
//! - `app`: builds a worker from its settings and runs it until stopped.
//! - `broker`: the RabbitMQ session and its reconnection with backoff.
//! - `migrate`: the `migrate` subcommand.

pub mod app;
pub mod broker;
pub mod migrate;
pub mod settings;

pub use app::App;
