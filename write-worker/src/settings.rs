//! The worker's settings: flags and `ADDONREG_*` variables.

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Parser, Subcommand};
use shared::compaction::Retention;
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
    /// Inspect, replay or purge the dead letters (`<prefix>.writes.dead`);
    /// plain text for a person at a terminal.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Serve the HTTP write intake (`POST /v1/writes`) until SIGTERM: AMO's
    /// writes over HTTP, published to the writes exchange with confirms.
    /// Needs no database.
    Intake(crate::intake::settings::IntakeSettings),
}

/// What to do with the dead letters.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter, oldest first: position, message_id, reason,
    /// body bytes. Takes nothing off the queue.
    List {
        /// Most dead letters printed.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Headers, properties and body of the dead letters with this message_id.
    Show {
        /// The AMQP message_id (AMO sets it to the write id).
        message_id: String,
    },
    /// Republish the selected dead letters to the writes exchange, without
    /// their reason header; each is removed once the broker confirms its copy.
    Replay(DlqSelection),
    /// Delete the selected dead letters for good.
    Purge {
        #[command(flatten)]
        selection: DlqSelection,
        /// Confirms the deletion; purge refuses without it.
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters `replay` and `purge` act on; every filter given must
/// match. One is required, so that nothing is selected by accident.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = true)]
pub struct DlqSelection {
    /// Dead letters whose `x-addonreg-reason` starts with this, e.g. `invalid_field`.
    #[arg(long, value_name = "PREFIX", value_parser = NonEmptyStringValueParser::new())]
    pub reason: Option<String>,

    /// Dead letters with one of these message ids (comma-separated).
    #[arg(long, value_name = "ID,...", value_delimiter = ',', value_parser = NonEmptyStringValueParser::new())]
    pub ids: Option<Vec<String>>,

    /// Every dead letter.
    #[arg(long, conflicts_with_all = ["reason", "ids"])]
    pub all: bool,
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
    pub batch: BatchSettings,

    #[command(flatten)]
    pub janitor: JanitorSettings,

    #[command(flatten)]
    pub amqp: AmqpSettings,

    #[command(flatten)]
    pub log: LogSettings,
}

/// How writes are taken from the queue and committed together.
#[derive(Debug, Clone, Args)]
pub struct BatchSettings {
    /// Unacknowledged messages the broker may send ahead; at least the batch
    /// size, so the next batch is waiting while one commits. [env: ADDONREG_PREFETCH]
    #[arg(long, env = "ADDONREG_PREFETCH", default_value_t = 2_000)]
    pub prefetch: u16,

    /// Most messages committed in one transaction. [env: ADDONREG_BATCH_MAX_MESSAGES]
    #[arg(
        long = "batch-max-messages",
        env = "ADDONREG_BATCH_MAX_MESSAGES",
        default_value_t = 500
    )]
    pub max_messages: usize,

    /// Seconds an op is kept behind its own pair's newest op; older ones are
    /// compacted, and an op arriving below what its pair compacted is
    /// superseded. Per pair, never by the clock: a pair with nothing
    /// compacted applies any op however old. At least 86400 (the contract's
    /// floor). [env: ADDONREG_OP_RETENTION_SECS]
    #[arg(
        long = "op-retention-secs",
        env = "ADDONREG_OP_RETENTION_SECS",
        default_value = "604800",
        value_parser = parse_retention
    )]
    pub op_retention: Retention,

    /// Body bytes at which a batch stops growing (a proxy for its ops, known
    /// before parsing; ~150 bytes an op). [env: ADDONREG_BATCH_MAX_BYTES]
    #[arg(long = "batch-max-bytes", env = "ADDONREG_BATCH_MAX_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_bytes: usize,

    /// Longest wait for more messages once a batch has one, in ms: the
    /// latency bought for throughput at low rates. [env: ADDONREG_BATCH_MAX_WAIT_MS]
    #[arg(
        long = "batch-max-wait-ms",
        env = "ADDONREG_BATCH_MAX_WAIT_MS",
        default_value_t = 5
    )]
    pub max_wait_ms: u64,

    /// Bytes the worker may use in all. Caps the prefetch, since any prefetched
    /// body may be 4 MiB: see `BatchSettings::prefetch_limit`. [env: ADDONREG_MEMORY_BUDGET_BYTES]
    #[arg(
        long = "memory-budget-bytes",
        env = "ADDONREG_MEMORY_BUDGET_BYTES",
        default_value_t = DEFAULT_MEMORY_BUDGET
    )]
    pub memory_budget_bytes: u64,

    /// Longest wait for the broker to confirm a dead letter or an event, in
    /// ms; then the worker drops its connections (acknowledging nothing) and
    /// starts over. [env: ADDONREG_PUBLISH_TIMEOUT_MS]
    #[arg(
        long = "publish-timeout-ms",
        env = "ADDONREG_PUBLISH_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub publish_timeout_ms: u64,
}

/// 768 MiB: under the 1 GiB pod limit with room for the allocator's slack.
pub const DEFAULT_MEMORY_BUDGET: u64 = 768 * 1024 * 1024;

/// What a worker needs besides its prefetched bodies: the process itself
/// (runtime, pools, buffers) ...
const BASE_RESERVE: u64 = 64 * 1024 * 1024;
/// ... and, per byte of the batch in hand, its parsed ops, the statement
/// arrays built from them and their encoding (measured: see docs/write-path.md).
const PROCESSING_FACTOR: u64 = 6;

/// What the janitor keeps, and how often it looks.
#[derive(Debug, Clone, Args)]
pub struct JanitorSettings {
    /// Seconds a receipt is kept after `processed_at`. [env: ADDONREG_RECEIPT_RETENTION_SECS]
    #[arg(long = "receipt-retention-secs", env = "ADDONREG_RECEIPT_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub receipt_retention_secs: u64,

    /// Seconds between janitor rounds. [env: ADDONREG_JANITOR_INTERVAL_SECS]
    #[arg(
        long = "janitor-interval-secs",
        env = "ADDONREG_JANITOR_INTERVAL_SECS",
        default_value_t = 300
    )]
    pub interval_secs: u64,
}

impl JanitorSettings {
    /// As the janitor takes them.
    pub fn retention(&self) -> crate::janitor::Retention {
        use std::time::Duration;
        crate::janitor::Retention {
            receipts: Duration::from_secs(self.receipt_retention_secs),
            interval: Duration::from_secs(self.interval_secs.max(1)),
        }
    }
}

fn parse_retention(s: &str) -> Result<Retention, String> {
    let secs: u64 = s.parse().map_err(|e| format!("{e}"))?;
    Retention::new(std::time::Duration::from_secs(secs)).map_err(|e| e.to_string())
}

impl BatchSettings {
    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), shared::settings::InvalidSetting> {
        if self.max_messages == 0 || usize::from(self.prefetch) < self.max_messages {
            return Err(shared::settings::InvalidSetting {
                variable: "ADDONREG_PREFETCH",
                problem: format!(
                    "must be at least ADDONREG_BATCH_MAX_MESSAGES ({}) and that at least 1",
                    self.max_messages
                ),
            });
        }
        if self.prefetch_limit() == 0 {
            return Err(shared::settings::InvalidSetting {
                variable: "ADDONREG_MEMORY_BUDGET_BYTES",
                problem: format!(
                    "must be at least {} bytes with ADDONREG_BATCH_MAX_BYTES={}: the reserve for processing plus one 4 MiB message",
                    self.reserve() + MAX_BODY,
                    self.max_bytes
                ),
            });
        }
        if self.publish_timeout_ms == 0 {
            return Err(shared::settings::InvalidSetting {
                variable: "ADDONREG_PUBLISH_TIMEOUT_MS",
                problem: "must be at least 1".to_string(),
            });
        }
        Ok(())
    }

    /// Bytes kept for everything but prefetched bodies.
    fn reserve(&self) -> u64 {
        let batch = (self.max_bytes as u64).saturating_add(MAX_BODY);
        BASE_RESERVE.saturating_add(PROCESSING_FACTOR.saturating_mul(batch))
    }

    /// The most deliveries the budget can hold: each may be 4 MiB (the
    /// contract's limit), and RabbitMQ bounds only their number, so
    /// `budget >= reserve + limit * 4 MiB` is the worker's memory bound.
    pub fn prefetch_limit(&self) -> u16 {
        let room = self.memory_budget_bytes.saturating_sub(self.reserve()) / MAX_BODY;
        u16::try_from(room).unwrap_or(u16::MAX)
    }

    /// The prefetch asked for, capped by the memory budget.
    pub fn effective_prefetch(&self) -> u16 {
        self.prefetch.min(self.prefetch_limit())
    }

    /// The batch size asked for, at most the effective prefetch (a batch
    /// can't hold more than the broker sends ahead).
    pub fn effective_max_messages(&self) -> usize {
        self.max_messages
            .min(usize::from(self.effective_prefetch()))
            .max(1)
    }
}

/// The contract's largest body.
const MAX_BODY: u64 = shared::write::MAX_BODY_BYTES as u64;

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

    #[test]
    fn op_retention_has_the_contracts_floor() {
        let retention = |secs: &str| {
            Cli::try_parse_from(["write-worker", "--op-retention-secs", secs])
                .map(|cli| cli.settings.batch.op_retention.duration().as_secs())
        };
        assert!(retention("0").is_err(), "0 would compact everything");
        assert!(retention("3600").is_err());
        assert_eq!(retention("86400").unwrap(), 86400);
        let cli = Cli::try_parse_from(["write-worker"]).unwrap();
        assert_eq!(cli.settings.batch.op_retention, Retention::DEFAULT);
    }

    #[test]
    fn the_memory_budget_caps_the_prefetch() {
        let batch = |args: &[&str]| {
            Cli::try_parse_from(["write-worker"].iter().chain(args))
                .unwrap()
                .settings
                .batch
        };
        let defaults = batch(&[]);
        defaults.validate().unwrap();
        // 768 MiB - (64 MiB + 6 x 12 MiB) = 632 MiB: 158 bodies of 4 MiB.
        assert_eq!(defaults.effective_prefetch(), 158);
        assert_eq!(defaults.effective_max_messages(), 158);
        let roomy = batch(&["--memory-budget-bytes", "17179869184", "--prefetch", "600"]);
        assert_eq!(
            (roomy.effective_prefetch(), roomy.effective_max_messages()),
            (600, 500)
        );
        let tiny = batch(&["--memory-budget-bytes", "100000000"]);
        let error = tiny.validate().unwrap_err();
        assert_eq!(error.variable, "ADDONREG_MEMORY_BUDGET_BYTES");
        assert!(batch(&["--publish-timeout-ms", "0"]).validate().is_err());
    }

    #[test]
    fn dlq_replay_and_purge_need_a_selection() {
        let dlq = |args: &[&str]| {
            Cli::try_parse_from(["write-worker", "dlq"].iter().chain(args)).map(|cli| cli.command)
        };
        assert!(dlq(&["replay"]).is_err(), "a selection is required");
        assert!(dlq(&["purge", "--yes"]).is_err(), "a selection is required");
        assert!(dlq(&["replay", "--all", "--reason", "x"]).is_err());
        assert!(dlq(&["replay", "--reason", ""]).is_err());
        let Ok(Some(Command::Dlq {
            command: DlqCommand::Replay(selection),
        })) = dlq(&["replay", "--reason", "invalid_field", "--ids", "a,b"])
        else {
            panic!("replay parses");
        };
        assert_eq!(selection.reason.as_deref(), Some("invalid_field"));
        assert_eq!(selection.ids, Some(vec!["a".to_string(), "b".to_string()]));
        assert!(matches!(
            dlq(&["purge", "--all"]),
            Ok(Some(Command::Dlq {
                command: DlqCommand::Purge { yes: false, .. }
            }))
        ));
        assert!(matches!(
            dlq(&["list"]),
            Ok(Some(Command::Dlq {
                command: DlqCommand::List { limit: 100 }
            }))
        ));
    }
}
