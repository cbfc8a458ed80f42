//! The intake's own flags and `ADDONREG_INTAKE_*` variables (the broker's URL
//! and prefix are the worker's global `ADDONREG_AMQP_URL`, `ADDONREG_PREFIX`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use shared::settings::{InvalidSetting, OptionalListen};

use super::auth::{TokenDigest, Tokens};

/// Settings of `write-worker intake`.
#[derive(Debug, Clone, Args)]
pub struct IntakeSettings {
    /// Public HTTP address of the intake. [env: ADDONREG_INTAKE_LISTEN]
    #[arg(
        long = "intake-listen",
        env = "ADDONREG_INTAKE_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub listen: SocketAddr,

    /// Admin address serving /metrics; 0 turns it off. Not the worker's
    /// 9102 (nor the local stack's workers, 9102-9200), so all run on one
    /// host. [env: ADDONREG_INTAKE_METRICS_LISTEN]
    #[arg(
        long = "intake-metrics-listen",
        env = "ADDONREG_INTAKE_METRICS_LISTEN",
        default_value = "127.0.0.1:9300"
    )]
    pub metrics_listen: OptionalListen,

    /// SHA-256 digests (64 hex digits) of the accepted bearer tokens,
    /// comma-separated; at most two (the current one and the next, while
    /// rotating). [env: ADDONREG_INTAKE_TOKEN_SHA256]
    #[arg(
        long = "intake-token-sha256",
        env = "ADDONREG_INTAKE_TOKEN_SHA256",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub token_sha256: Vec<TokenDigest>,

    /// A file of such digests, one a line (`#` comments), read at start;
    /// added to ADDONREG_INTAKE_TOKEN_SHA256. [env: ADDONREG_INTAKE_TOKEN_SHA256_FILE]
    #[arg(
        long = "intake-token-sha256-file",
        env = "ADDONREG_INTAKE_TOKEN_SHA256_FILE"
    )]
    pub token_sha256_file: Option<PathBuf>,

    /// Messages ready in the writes queue above which posts answer 503
    /// (read from the broker at most once a second).
    /// [env: ADDONREG_INTAKE_MAX_BACKLOG]
    #[arg(
        long = "intake-max-backlog",
        env = "ADDONREG_INTAKE_MAX_BACKLOG",
        default_value_t = 100_000
    )]
    pub max_backlog: u64,

    /// Longest wait for the broker's confirm of one write, in ms; then 503.
    /// [env: ADDONREG_INTAKE_CONFIRM_TIMEOUT_MS]
    #[arg(
        long = "intake-confirm-timeout-ms",
        env = "ADDONREG_INTAKE_CONFIRM_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub confirm_timeout_ms: u64,

    /// Broker connections the channels are spread over.
    /// [env: ADDONREG_INTAKE_CONNECTIONS]
    #[arg(
        long = "intake-connections",
        env = "ADDONREG_INTAKE_CONNECTIONS",
        default_value_t = 2
    )]
    pub connections: usize,

    /// Most confirm-mode channels, i.e. publishes in flight at once.
    /// [env: ADDONREG_INTAKE_CHANNELS]
    #[arg(
        long = "intake-channels",
        env = "ADDONREG_INTAKE_CHANNELS",
        default_value_t = 64
    )]
    pub channels: usize,
}

impl IntakeSettings {
    /// The confirm timeout.
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }

    /// Checks the settings and reads the token digests.
    pub fn tokens(&self) -> Result<Tokens, InvalidSetting> {
        let mut digests = self.token_sha256.clone();
        if let Some(path) = &self.token_sha256_file {
            let text = std::fs::read_to_string(path).map_err(|e| InvalidSetting {
                variable: "ADDONREG_INTAKE_TOKEN_SHA256_FILE",
                problem: format!("cannot read {}: {e}", path.display()),
            })?;
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                digests.push(line.parse().map_err(|problem| InvalidSetting {
                    variable: "ADDONREG_INTAKE_TOKEN_SHA256_FILE",
                    problem,
                })?);
            }
        }
        Tokens::new(digests).map_err(|problem| InvalidSetting {
            variable: "ADDONREG_INTAKE_TOKEN_SHA256",
            problem,
        })
    }

    /// Checks the numbers against each other.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let at_least_one = |variable, value: u64| {
            if value == 0 {
                Err(InvalidSetting {
                    variable,
                    problem: "must be at least 1".into(),
                })
            } else {
                Ok(())
            }
        };
        at_least_one(
            "ADDONREG_INTAKE_CONFIRM_TIMEOUT_MS",
            self.confirm_timeout_ms,
        )?;
        at_least_one("ADDONREG_INTAKE_CONNECTIONS", self.connections as u64)?;
        at_least_one("ADDONREG_INTAKE_CHANNELS", self.channels as u64)?;
        Ok(())
    }
}
