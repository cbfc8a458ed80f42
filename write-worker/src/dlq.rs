//! `write-worker dlq`: the dead-letter queue (`<prefix>.writes.dead`) for an
//! SRE at a terminal. It owns listing, showing, replaying and purging dead
//! letters, in plain text on stdout.
//!
//! Every command reads with `basic.get` and manual acknowledgement, in queue
//! order, and at most as many messages as the queue held when it started, so
//! it ends even when a replayed write is dead-lettered again meanwhile. What it
//! does not remove stays unacknowledged until the channel closes, and then the
//! broker puts it back in its place (marked redelivered). `basic.get`, not a
//! consumer: a consumer holding unmatched messages stalls at its prefetch, and
//! requeueing them one by one would hand them straight back.
//!
//! Each return counts as one delivery in the quorum queue (`x-delivery-count`).
//! The dead queue has no `x-delivery-limit` of its own, and RabbitMQ 4 applies
//! a default of 20 with nowhere to dead-letter to. On such a broker, a dead
//! letter read more often than that is dropped, so the dead queue needs a
//! high explicit limit there.
//!
//! A replayed dead letter is acknowledged only after the broker confirms its
//! copy on the writes exchange. A crash in between leaves the write in both
//! queues, which is harmless because write ids are idempotent. It is never lost.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind,
};

use shared::settings::AmqpSettings;
use shared::topology::{REASON_HEADER, REPLY_SUCCESS, Topology, WRITE_ROUTING_KEY};

use crate::settings::{DlqCommand, DlqSelection};

/// Longest wait for the broker to accept the connection. A person is
/// waiting, and an unreachable host could otherwise hang for minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a `dlq` command failed. Each message tells the person at the terminal
/// what happened to the dead letters.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// `replay` or `purge` without `--reason`, `--ids` or `--all`.
    #[error("say which dead letters: --reason PREFIX, --ids ID,... or --all")]
    NoSelection,
    /// `--all` together with a filter.
    #[error("--all cannot be combined with --reason or --ids")]
    AllWithFilter,
    /// `purge` without `--yes`.
    #[error("purge deletes dead letters for good: run it again with --yes")]
    Unconfirmed,
    /// The broker did not answer in time.
    #[error("cannot reach RabbitMQ within {0:?}")]
    ConnectTimeout(Duration),
    /// A queue or exchange is missing. The prefix is probably wrong, since
    /// this command declares nothing.
    #[error("{name} does not exist (is ADDONREG_PREFIX right? workers declare it when they start)")]
    Missing {
        /// The queue or exchange.
        name: String,
    },
    /// The broker, the connection or the channel failed.
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    /// `show` found no dead letter with that id.
    #[error("no dead letter has message_id {0}")]
    NotFound(String),
    /// The broker refused the replayed copy (nack). The dead letter stays.
    #[error(
        "the broker did not confirm the replayed copy of {message_id}; it stays in the dead queue"
    )]
    NotConfirmed {
        /// The dead letter's message id, or `-`.
        message_id: String,
    },
    /// Nothing is bound to the writes exchange with the write routing key.
    /// The dead letter stays.
    #[error(
        "the replayed copy of {message_id} could not be routed by {exchange} (no queue bound with key `write`); it stays in the dead queue"
    )]
    Unroutable {
        /// The dead letter's message id, or `-`.
        message_id: String,
        /// The writes exchange.
        exchange: String,
    },
    /// The copy was confirmed but the dead letter could not be removed, so
    /// the write is in both queues.
    #[error(
        "{message_id} was replayed but could not be removed from the dead queue ({cause}); it is in both queues, which is harmless since write ids are idempotent"
    )]
    ReplayedNotRemoved {
        /// The dead letter's message id, or `-`.
        message_id: String,
        /// Why the acknowledgement failed.
        cause: String,
    },
    /// A dead letter to purge could not be removed. It stays in the dead queue.
    #[error("{message_id} could not be removed ({cause}); it stays in the dead queue")]
    NotRemoved {
        /// The dead letter's message id, or `-`.
        message_id: String,
        /// Why the acknowledgement failed.
        cause: String,
    },
    /// Stdout is gone (e.g. a closed pipe).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Which dead letters `replay` and `purge` act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every dead letter.
    All,
    /// Dead letters that pass every filter given (at least one is).
    Matching {
        /// Prefix of the `x-addonreg-reason` header. A dead letter without
        /// the header never matches.
        reason: Option<String>,
        /// Message ids.
        ids: Option<BTreeSet<String>>,
    },
}

impl Selection {
    /// The selection the flags ask for. Refuses an empty one.
    pub fn from_args(args: &DlqSelection) -> Result<Self, DlqError> {
        let reason = args.reason.clone().filter(|r| !r.is_empty());
        let ids = args
            .ids
            .as_ref()
            .map(|ids| -> BTreeSet<String> {
                ids.iter().filter(|i| !i.is_empty()).cloned().collect()
            })
            .filter(|ids| !ids.is_empty());
        match (args.all, reason, ids) {
            (true, None, None) => Ok(Self::All),
            (true, _, _) => Err(DlqError::AllWithFilter),
            (false, None, None) => Err(DlqError::NoSelection),
            (false, reason, ids) => Ok(Self::Matching { reason, ids }),
        }
    }

    /// Whether a dead letter with this reason header and message id is selected.
    pub fn matches(&self, reason: Option<&str>, message_id: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Matching {
                reason: wanted_reason,
                ids,
            } => {
                let reason_ok = wanted_reason
                    .as_deref()
                    .is_none_or(|prefix| reason.is_some_and(|r| r.starts_with(prefix)));
                let id_ok = ids
                    .as_ref()
                    .is_none_or(|ids| message_id.is_some_and(|id| ids.contains(id)));
                reason_ok && id_ok
            }
        }
    }
}

/// Runs one command with stdout for output. A failure goes to stderr and
/// gives a non-zero exit code.
pub async fn main(command: &DlqCommand, amqp: &AmqpSettings) -> ExitCode {
    match run(command, amqp, &mut std::io::stdout()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write-worker dlq: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What `replay` and `purge` do with each selected dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    Replay,
    Purge,
}

/// A command once its flags are checked.
enum Plan<'a> {
    List(u32),
    Show(&'a str),
    Take(Take, Selection),
}

/// Runs one command, writing its report to `out`.
pub async fn run(
    command: &DlqCommand,
    amqp: &AmqpSettings,
    out: &mut impl Write,
) -> Result<(), DlqError> {
    // Refusals come before connecting, so they touch nothing.
    let plan = match command {
        DlqCommand::List { limit } => Plan::List(*limit),
        DlqCommand::Show { message_id } => Plan::Show(message_id),
        DlqCommand::Replay(selection) => Plan::Take(Take::Replay, Selection::from_args(selection)?),
        DlqCommand::Purge { selection, yes } => {
            let selection = Selection::from_args(selection)?;
            if !yes {
                return Err(DlqError::Unconfirmed);
            }
            Plan::Take(Take::Purge, selection)
        }
    };
    let queue = DeadQueue::open(amqp).await?;
    let outcome = match plan {
        Plan::List(limit) => list(&queue, limit, out).await,
        Plan::Show(message_id) => show(&queue, message_id, out).await,
        Plan::Take(take, selection) => take_selected(&queue, &selection, take, out).await,
    };
    // Closing is what puts every message not removed back in its place.
    queue.close().await;
    outcome
}

async fn list(queue: &DeadQueue, limit: u32, out: &mut impl Write) -> Result<(), DlqError> {
    let count = queue.count().await?;
    if count == 0 {
        writeln!(out, "no dead letters in {}", queue.name())?;
        return Ok(());
    }
    let mut shown = 0;
    while shown < limit.min(count) {
        let Some(delivery) = queue.next().await? else {
            break;
        };
        shown += 1;
        writeln!(
            out,
            "{shown}\t{}\t{}\t{} bytes",
            one_line(message_id(&delivery).unwrap_or("-")),
            one_line(reason(&delivery).as_deref().unwrap_or("-")),
            delivery.data.len()
        )?;
    }
    writeln!(out, "{shown} of {count} dead letters in {}", queue.name())?;
    Ok(())
}

async fn show(queue: &DeadQueue, wanted: &str, out: &mut impl Write) -> Result<(), DlqError> {
    let count = queue.count().await?;
    let mut found = 0;
    for position in 1..=count {
        let Some(delivery) = queue.next().await? else {
            break;
        };
        if message_id(&delivery) != Some(wanted) {
            continue;
        }
        if found > 0 {
            writeln!(out)?;
        }
        found += 1;
        write_letter(position, count, queue.name(), &delivery, out)?;
    }
    if found == 0 {
        return Err(DlqError::NotFound(wanted.to_string()));
    }
    Ok(())
}

async fn take_selected(
    queue: &DeadQueue,
    selection: &Selection,
    take: Take,
    out: &mut impl Write,
) -> Result<(), DlqError> {
    if take == Take::Replay {
        queue.check_writes_exchange().await?;
    }
    let verb = match take {
        Take::Replay => "replayed",
        Take::Purge => "purged",
    };
    let count = queue.count().await?;
    let (mut taken, mut left) = (0u32, 0u32);
    for position in 1..=count {
        let Some(delivery) = queue.next().await? else {
            break;
        };
        let id = message_id(&delivery).unwrap_or("-").to_string();
        let reason = reason(&delivery);
        if !selection.matches(reason.as_deref(), message_id(&delivery)) {
            left += 1;
            continue;
        }
        if take == Take::Replay {
            queue.republish(&delivery, &id).await?;
        }
        let cause = match delivery.ack(BasicAckOptions::default()).await {
            Ok(true) => None,
            Ok(false) => Some("the channel closed".to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(cause) = cause {
            return Err(match take {
                Take::Replay => DlqError::ReplayedNotRemoved {
                    message_id: id,
                    cause,
                },
                Take::Purge => DlqError::NotRemoved {
                    message_id: id,
                    cause,
                },
            });
        }
        taken += 1;
        writeln!(
            out,
            "{verb}\t{position}\t{}\t{}",
            one_line(&id),
            one_line(reason.as_deref().unwrap_or("-"))
        )?;
    }
    writeln!(
        out,
        "{verb} {taken} of {} dead letters; {left} left in {}",
        taken + left,
        queue.name()
    )?;
    Ok(())
}

/// One dead letter in full: properties, headers and body.
fn write_letter(
    position: u32,
    count: u32,
    queue: &str,
    delivery: &Delivery,
    out: &mut impl Write,
) -> std::io::Result<()> {
    writeln!(out, "dead letter {position} of {count} in {queue}")?;
    writeln!(out, "properties:")?;
    for (name, value) in property_lines(&delivery.properties) {
        writeln!(out, "  {name}: {}", one_line(&value))?;
    }
    writeln!(out, "headers:")?;
    for (name, value) in delivery.properties.headers().iter().flat_map(|h| h.inner()) {
        writeln!(
            out,
            "  {}: {}",
            one_line(name.as_str()),
            one_line(&value_text(value))
        )?;
    }
    let (kind, body) = body_text(&delivery.data);
    writeln!(out, "body ({} bytes, {kind}):", delivery.data.len())?;
    writeln!(out, "{body}")
}

/// The body as a person reads it: pretty JSON when it parses (keys sorted),
/// else lossy UTF-8. Also says which of the two it is.
pub fn body_text(body: &[u8]) -> (&'static str, String) {
    match serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
    {
        Some(pretty) => ("JSON", pretty),
        None => ("not JSON", String::from_utf8_lossy(body).into_owned()),
    }
}

/// Headers a quorum queue adds when it hands a message out again. On a dead
/// letter they count its reads from the dead queue, which says nothing true
/// about the replayed copy.
const DEAD_QUEUE_COUNTS: [&str; 2] = ["x-delivery-count", "x-acquired-count"];

/// The properties a dead letter is replayed with: all of its own, minus the
/// reason header and the dead queue's delivery counts. When no header is
/// left, there is no header table at all, as AMO sent it.
pub fn replay_properties(dead: &BasicProperties) -> BasicProperties {
    fn keep<T: Clone>(
        properties: BasicProperties,
        value: &Option<T>,
        with: fn(BasicProperties, T) -> BasicProperties,
    ) -> BasicProperties {
        match value {
            Some(v) => with(properties, v.clone()),
            None => properties,
        }
    }
    let p = BasicProperties::default();
    let p = keep(p, dead.content_type(), BasicProperties::with_content_type);
    let p = keep(
        p,
        dead.content_encoding(),
        BasicProperties::with_content_encoding,
    );
    let p = keep(p, dead.delivery_mode(), BasicProperties::with_delivery_mode);
    let p = keep(p, dead.priority(), BasicProperties::with_priority);
    let p = keep(
        p,
        dead.correlation_id(),
        BasicProperties::with_correlation_id,
    );
    let p = keep(p, dead.reply_to(), BasicProperties::with_reply_to);
    let p = keep(p, dead.expiration(), BasicProperties::with_expiration);
    let p = keep(p, dead.message_id(), BasicProperties::with_message_id);
    let p = keep(p, dead.timestamp(), BasicProperties::with_timestamp);
    let p = keep(p, dead.kind(), BasicProperties::with_type);
    let p = keep(p, dead.user_id(), BasicProperties::with_user_id);
    let p = keep(p, dead.app_id(), BasicProperties::with_app_id);
    let p = keep(p, dead.cluster_id(), BasicProperties::with_cluster_id);
    let headers: BTreeMap<_, _> = dead
        .headers()
        .iter()
        .flat_map(|h| h.inner())
        .filter(|(name, _)| {
            name.as_str() != REASON_HEADER && !DEAD_QUEUE_COUNTS.contains(&name.as_str())
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if headers.is_empty() {
        p
    } else {
        p.with_headers(FieldTable::from(headers))
    }
}

/// Every property that is set except the headers, as (name, text).
fn property_lines(p: &BasicProperties) -> Vec<(&'static str, String)> {
    let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.to_string());
    [
        ("message_id", text(p.message_id())),
        ("content_type", text(p.content_type())),
        ("content_encoding", text(p.content_encoding())),
        ("delivery_mode", p.delivery_mode().map(|m| m.to_string())),
        ("priority", p.priority().map(|m| m.to_string())),
        ("correlation_id", text(p.correlation_id())),
        ("reply_to", text(p.reply_to())),
        ("expiration", text(p.expiration())),
        ("timestamp", p.timestamp().map(timestamp_text)),
        ("type", text(p.kind())),
        ("user_id", text(p.user_id())),
        ("app_id", text(p.app_id())),
        ("cluster_id", text(p.cluster_id())),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v)))
    .collect()
}

/// A header value as text (strings lossy UTF-8, tables and arrays inline).
fn value_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::Boolean(v) => v.to_string(),
        AMQPValue::ShortShortInt(v) => v.to_string(),
        AMQPValue::ShortShortUInt(v) => v.to_string(),
        AMQPValue::ShortInt(v) => v.to_string(),
        AMQPValue::ShortUInt(v) => v.to_string(),
        AMQPValue::LongInt(v) => v.to_string(),
        AMQPValue::LongUInt(v) => v.to_string(),
        AMQPValue::LongLongInt(v) => v.to_string(),
        AMQPValue::Float(v) => v.to_string(),
        AMQPValue::Double(v) => v.to_string(),
        AMQPValue::DecimalValue(v) => format!("{}e-{}", v.value, v.scale),
        AMQPValue::ShortString(v) => v.to_string(),
        AMQPValue::LongString(v) => v.to_string(),
        AMQPValue::FieldArray(v) => {
            let items: Vec<String> = v.as_slice().iter().map(value_text).collect();
            format!("[{}]", items.join(", "))
        }
        AMQPValue::Timestamp(v) => timestamp_text(*v),
        AMQPValue::FieldTable(v) => {
            let items: Vec<String> = v
                .inner()
                .iter()
                .map(|(name, value)| format!("{name}: {}", value_text(value)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        AMQPValue::ByteArray(v) => v.as_slice().iter().map(|b| format!("{b:02x}")).collect(),
        AMQPValue::Void => "void".into(),
    }
}

/// Seconds since the epoch, with the instant in UTC when it is one.
fn timestamp_text(seconds: u64) -> String {
    match i64::try_from(seconds)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
    {
        Some(at) => format!("{seconds} ({})", at.to_rfc3339()),
        None => seconds.to_string(),
    }
}

/// `s` on one line: control characters (tabs and newlines included) escaped,
/// so each dead letter stays one line and its columns stay apart.
pub fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn message_id(delivery: &Delivery) -> Option<&str> {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str())
}

/// The `x-addonreg-reason` header, if the worker set one. A message the
/// broker moved here by itself (the writes queue's delivery-limit backstop)
/// has none.
fn reason(delivery: &Delivery) -> Option<String> {
    match delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(REASON_HEADER)?
    {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// One confirm-mode channel on the dead queue. It declares nothing, so a
/// wrong prefix is an error rather than a new empty topology.
struct DeadQueue {
    connection: Connection,
    /// `basic.get` from the dead queue, replayed copies (confirmed), acks.
    channel: Channel,
    topology: Topology,
}

impl DeadQueue {
    async fn open(amqp: &AmqpSettings) -> Result<Self, DlqError> {
        // One node: a cluster serves the dead queue from any of them.
        let connecting = Connection::connect(
            amqp.url.first().expose(),
            ConnectionProperties::default().with_connection_name("addonreg-dlq".into()),
        );
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| DlqError::ConnectTimeout(CONNECT_TIMEOUT))??;
        let channel = match connection.create_channel().await {
            Ok(channel) => channel,
            Err(e) => {
                let _ = connection.close(REPLY_SUCCESS, "dlq ends".into()).await;
                return Err(e.into());
            }
        };
        let queue = Self {
            connection,
            channel,
            topology: Topology::new(&amqp.prefix),
        };
        if let Err(e) = queue
            .channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
        {
            queue.close().await;
            return Err(e.into());
        }
        Ok(queue)
    }

    fn name(&self) -> &str {
        &self.topology.dead_queue
    }

    /// Messages ready in the dead queue. The declare is passive, so it
    /// never creates the queue.
    async fn count(&self) -> Result<u32, DlqError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(self.name().into(), passive, FieldTable::default())
            .await
            .map(|q| q.message_count())
            .map_err(|e| missing_or_broker(e, self.name()))
    }

    /// The next dead letter, unacknowledged, or `None` when no more is ready.
    async fn next(&self) -> Result<Option<Delivery>, DlqError> {
        let got = self
            .channel
            .basic_get(self.name().into(), BasicGetOptions { no_ack: false })
            .await?;
        Ok(got.map(|m| m.delivery))
    }

    /// Fails early, before anything is read, when the writes exchange is missing.
    async fn check_writes_exchange(&self) -> Result<(), DlqError> {
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let exchange = self.topology.writes_exchange.as_str();
        self.channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Direct,
                passive,
                FieldTable::default(),
            )
            .await
            .map_err(|e| missing_or_broker(e, exchange))
    }

    /// Publishes a copy to the writes exchange as AMO would, and returns once
    /// the broker confirms it. The publish is mandatory: a copy that no queue
    /// takes is an error, not a silent loss.
    async fn republish(&self, delivery: &Delivery, id: &str) -> Result<(), DlqError> {
        let exchange = self.topology.writes_exchange.as_str();
        let confirmation = self
            .channel
            .basic_publish(
                exchange.into(),
                WRITE_ROUTING_KEY.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &delivery.data,
                replay_properties(&delivery.properties),
            )
            .await?
            .await?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Err(DlqError::Unroutable {
                message_id: id.to_string(),
                exchange: exchange.to_string(),
            }),
            Confirmation::Nack(None) | Confirmation::NotRequested => Err(DlqError::NotConfirmed {
                message_id: id.to_string(),
            }),
        }
    }

    /// Closes the channel, then the connection (lapin logs an error
    /// otherwise). Every unacknowledged dead letter goes back to the queue.
    async fn close(&self) {
        let _ = self.channel.close(REPLY_SUCCESS, "dlq ends".into()).await;
        let _ = self
            .connection
            .close(REPLY_SUCCESS, "dlq ends".into())
            .await;
    }
}

fn missing_or_broker(error: lapin::Error, name: &str) -> DlqError {
    match error.kind() {
        ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) =>
        {
            DlqError::Missing {
                name: name.to_string(),
            }
        }
        _ => DlqError::Broker(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{LongString, ShortString};

    fn selection(reason: Option<&str>, ids: Option<&[&str]>, all: bool) -> DlqSelection {
        DlqSelection {
            reason: reason.map(str::to_string),
            ids: ids.map(|ids| ids.iter().map(|s| s.to_string()).collect()),
            all,
        }
    }

    #[test]
    fn selections_need_a_filter_and_combine_them() {
        assert!(matches!(
            Selection::from_args(&selection(None, None, false)),
            Err(DlqError::NoSelection)
        ));
        assert!(matches!(
            Selection::from_args(&selection(None, Some(&[""]), false)),
            Err(DlqError::NoSelection)
        ));
        assert!(matches!(
            Selection::from_args(&selection(Some("x"), None, true)),
            Err(DlqError::AllWithFilter)
        ));
        let all = Selection::from_args(&selection(None, None, true)).unwrap();
        assert!(all.matches(None, None));

        let by_reason =
            Selection::from_args(&selection(Some("invalid_field"), None, false)).unwrap();
        assert!(by_reason.matches(Some("invalid_field: bad sha256"), Some("w-1")));
        assert!(!by_reason.matches(Some("unknown_op: frobnicate"), Some("w-1")));
        assert!(!by_reason.matches(None, Some("w-1")), "no header, no match");

        let both = Selection::from_args(&selection(Some("invalid"), Some(&["w-1", "w-2"]), false))
            .unwrap();
        assert!(both.matches(Some("invalid_field: x"), Some("w-2")));
        assert!(!both.matches(Some("invalid_field: x"), Some("w-3")));
        assert!(!both.matches(Some("unknown_op: x"), Some("w-1")));
        assert!(!both.matches(Some("invalid_field: x"), None));
    }

    #[test]
    fn replay_drops_the_reason_and_the_dead_queue_counts_only() {
        let reason_only = FieldTable::from(BTreeMap::from([
            (
                ShortString::from(REASON_HEADER),
                AMQPValue::LongString(LongString::from("invalid_field: x")),
            ),
            (
                ShortString::from("x-delivery-count"),
                AMQPValue::LongLongInt(2),
            ),
        ]));
        let dead = BasicProperties::default()
            .with_message_id("w-1".into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(1_700_000_000)
            .with_headers(reason_only.clone());
        let replayed = replay_properties(&dead);
        assert_eq!(
            replayed,
            BasicProperties::default()
                .with_message_id("w-1".into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_timestamp(1_700_000_000),
            "no header table when the reason was the only header"
        );

        let mut more = reason_only;
        more.insert("x-other".into(), AMQPValue::LongLongInt(3));
        let replayed = replay_properties(&dead.with_headers(more));
        let headers = replayed.headers().clone().unwrap();
        assert!(!headers.contains_key(REASON_HEADER));
        assert!(!headers.contains_key("x-delivery-count"));
        assert_eq!(
            headers.inner().get("x-other"),
            Some(&AMQPValue::LongLongInt(3))
        );
    }

    #[test]
    fn bodies_print_as_pretty_json_or_lossy_text() {
        let (kind, text) = body_text(br#"{"v":1,"write_id":"w-1"}"#);
        assert_eq!(kind, "JSON");
        assert!(text.contains("\n  \"write_id\": \"w-1\""), "{text}");
        let (kind, text) = body_text(b"not json \xff");
        assert_eq!((kind, text.as_str()), ("not JSON", "not json \u{fffd}"));
    }

    #[test]
    fn one_line_escapes_control_characters_only() {
        assert_eq!(one_line("a\tb\nc…"), "a\\tb\\nc…");
    }

    #[test]
    fn header_values_print_readably() {
        let table = FieldTable::from(BTreeMap::from([(
            ShortString::from("count"),
            AMQPValue::LongInt(2),
        )]));
        let value = AMQPValue::FieldArray(vec![AMQPValue::FieldTable(table)].into());
        assert_eq!(value_text(&value), "[{count: 2}]");
        assert_eq!(
            value_text(&AMQPValue::Timestamp(0)),
            "0 (1970-01-01T00:00:00+00:00)"
        );
    }
}
