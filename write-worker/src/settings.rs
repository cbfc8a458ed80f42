//! The worker's settings: flags and `ADDONREG_*` variables.

use clap::{Args, Parser, Subcommand};
use shared::settings::{AmqpSettings, LogSettings, OptionalListen, PoolSettings, Secret};

/// addonreg's write worker.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub settings: Settings,
}

/// What to do; consuming writes when none is given.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Consume writes until SIGTERM (the default).
    Run,
    /// Apply the schema migrations; run as the schema's owner. Safe to repeat.
    Migrate,
}

/// Settings of every worker command.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// The Postgres primary (as the worker role; as the owner for `migrate`).
    /// [env: ADDONREG_DATABASE_URL]
    #[arg(
        long,
        env = "ADDONREG_DATABASE_URL",
        default_value = "postgres://addonreg_worker@127.0.0.1:5432/addonreg",
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    pub database_url: Secret,

    /// Admin address serving /metrics; 0 turns it off. [env: ADDONREG_METRICS_LISTEN]
    #[arg(
        long,
        env = "ADDONREG_METRICS_LISTEN",
        default_value = "127.0.0.1:9102",
        global = true
    )]
    pub metrics_listen: OptionalListen,

    #[command(flatten)]
    pub pool: PoolSettings,

    #[command(flatten)]
    pub amqp: AmqpSettings,

    #[command(flatten)]
    pub log: LogSettings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_subcommands() {
        let cli = Cli::try_parse_from(["write-worker"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(
            cli.settings.metrics_listen.0.unwrap().to_string(),
            "127.0.0.1:9102"
        );
        let cli = Cli::try_parse_from([
            "write-worker",
            "migrate",
            "--database-url",
            "postgres://o@h/d",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Migrate)));
        assert_eq!(cli.settings.database_url.expose(), "postgres://o@h/d");
    }
}
