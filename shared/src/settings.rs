//! Settings shared by the processes: each field is a command-line flag and an
//! `ADDONREG_*` environment variable, with the contract's defaults.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use thiserror::Error;

use crate::broker::AmqpUrls;

/// A value that must never be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// A setting that is present but wrong, naming its variable.
#[derive(Debug, Error)]
#[error("{variable}: {problem}")]
pub struct InvalidSetting {
    /// The environment variable (and flag) at fault.
    pub variable: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// The prefix of every RabbitMQ name (`<prefix>.writes` …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    /// The prefix as configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 100
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err("must be 1 to 100 characters of [A-Za-z0-9._-]".into())
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A listen address that `0` turns off (the admin listener's convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalListen(pub Option<SocketAddr>);

impl FromStr for OptionalListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "0" {
            return Ok(Self(None));
        }
        s.parse()
            .map(|a| Self(Some(a)))
            .map_err(|e| format!("{e}: expected host:port, or 0 for off"))
    }
}

/// The RabbitMQ connection and naming.
#[derive(Debug, Clone, Args)]
pub struct AmqpSettings {
    /// RabbitMQ URL, or the URLs of the cluster's nodes, comma-separated:
    /// a client moves to the next when its node goes away. [env: ADDONREG_AMQP_URL]
    #[arg(
        long = "amqp-url",
        env = "ADDONREG_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub url: AmqpUrls,

    /// Prefix of every exchange and queue name. [env: ADDONREG_PREFIX]
    #[arg(long = "prefix", env = "ADDONREG_PREFIX", default_value = "addonreg")]
    pub prefix: Prefix,
}

/// How a pool of Postgres connections behaves.
#[derive(Debug, Clone, Args)]
pub struct PoolSettings {
    /// Most connections in the pool. [env: ADDONREG_DB_POOL_SIZE]
    #[arg(
        long = "db-pool-size",
        env = "ADDONREG_DB_POOL_SIZE",
        default_value_t = 8
    )]
    pub max_connections: u32,

    /// Longest wait for a connection, connecting included, in ms. [env: ADDONREG_DB_ACQUIRE_TIMEOUT_MS]
    #[arg(
        long = "db-acquire-timeout-ms",
        env = "ADDONREG_DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub acquire_timeout_ms: u64,

    /// Longest statement before the server cancels it, in ms. [env: ADDONREG_DB_STATEMENT_TIMEOUT_MS]
    #[arg(
        long = "db-statement-timeout-ms",
        env = "ADDONREG_DB_STATEMENT_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub statement_timeout_ms: u64,
}

impl PoolSettings {
    /// The acquire timeout.
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }

    /// The statement timeout.
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms)
    }
}

/// The logs: level filter, and where errors are reported.
#[derive(Debug, Clone, Args)]
pub struct LogSettings {
    /// Log filter, e.g. `info` or `info,sqlx=warn`. [env: ADDONREG_LOG]
    #[arg(long = "log", env = "ADDONREG_LOG", default_value = "info")]
    pub filter: String,

    /// Error reporting to Sentry.
    #[command(flatten)]
    pub sentry: SentrySettings,
}

/// Error reporting: error-level log events and panics go to Sentry when a
/// DSN is set; without one nothing is set up.
#[derive(Debug, Clone, Args)]
pub struct SentrySettings {
    /// Sentry DSN (`https://<key>@<host>/<project>`); unset, nothing is
    /// reported. [env: ADDONREG_SENTRY_DSN]
    // Hidden like the URLs: the key lets anyone post events to the project.
    #[arg(
        long = "sentry-dsn",
        env = "ADDONREG_SENTRY_DSN",
        hide_env_values = true
    )]
    pub dsn: Option<Secret>,

    /// The environment events are filed under, e.g. `prod` or `stage`.
    /// [env: ADDONREG_SENTRY_ENVIRONMENT]
    #[arg(
        long = "sentry-environment",
        env = "ADDONREG_SENTRY_ENVIRONMENT",
        default_value = "local"
    )]
    pub environment: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s: Secret = "postgres://u:hunter2@h/db".parse().unwrap();
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "postgres://u:hunter2@h/db");
    }

    #[test]
    fn prefix_and_listen_rules() {
        assert!("addonreg".parse::<Prefix>().is_ok());
        assert!("t-1.x_y".parse::<Prefix>().is_ok());
        assert!("".parse::<Prefix>().is_err());
        assert!("a b".parse::<Prefix>().is_err());
        assert_eq!("0".parse::<OptionalListen>().unwrap(), OptionalListen(None));
        assert_eq!(
            "127.0.0.1:9101".parse::<OptionalListen>().unwrap().0,
            Some("127.0.0.1:9101".parse().unwrap())
        );
        assert!("localhost".parse::<OptionalListen>().is_err());
    }
}
