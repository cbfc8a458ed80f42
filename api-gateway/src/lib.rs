//! addonreg's read gateway.
//!
//! Layout:
//! - `settings`: flags and `ADDONREG_*` variables.
//! - `app`: builds the gateway from its settings and runs it until stopped.
//! - `replicas`: one pool per read replica and their health.
//! - `dockerflow`: `/__lbheartbeat__`, `/__heartbeat__`, `/__version__`.
//! - `errors`: the one mapping of failures to HTTP answers.

pub mod app;
pub mod dockerflow;
pub mod errors;
pub mod replicas;
pub mod settings;

pub use app::App;
pub use settings::Settings;
