//! What the worker publishes, each awaited until the broker confirms it:
//! dead letters (before the original is acknowledged) and invalidation events
//! (after the commit, before the acknowledgement).
//!
//! Every publish is bounded by the publish timeout: a broker that blocks
//! publishers (memory or disk alarm) must not hold a worker forever. Dead
//! letters are mandatory, so one that no queue takes is a failure, never a
//! silent loss. See docs/write-path.md.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio_util::sync::CancellationToken;

use shared::event::InvalidationEvent;
use shared::topology::{COMMITTED_AT_HEADER, REASON_HEADER, REPLY_SUCCESS, Topology};
use shared::write::Pair;

/// Most keys in one event; a larger batch sends several, with the same LSN.
const KEYS_PER_EVENT: usize = 5_000;

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel or connection failed.
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    /// The broker refused the message (nack).
    #[error("the broker did not confirm the message")]
    Nacked,
    /// A mandatory message reached no queue (e.g. the dead queue was deleted).
    #[error("the broker returned the message to {routing_key:?}: no queue took it")]
    Returned {
        /// Where it was sent.
        routing_key: String,
    },
    /// No confirm within the publish timeout (a blocked connection, say).
    #[error("no confirm within {0:?} (ADDONREG_PUBLISH_TIMEOUT_MS)")]
    TimedOut(Duration),
    /// The worker is stopping and the broker did not confirm in time.
    #[error("stopped while waiting for a confirm")]
    Stopped,
}

/// How long a publish in progress may still finish once the worker is told
/// to stop: a healthy broker confirms in milliseconds.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// A channel in confirm mode.
pub struct Publisher {
    channel: Channel,
    topology: Topology,
    timeout: Duration,
    stop: CancellationToken,
}

impl Publisher {
    /// Opens a confirm-mode channel on `connection` (one used for nothing
    /// else: a broker alarm blocks publishing connections, and acks must not
    /// wait behind it). Each publish waits at most `timeout` for its confirm,
    /// or [`STOP_GRACE`] after `stop` fires.
    pub async fn open(
        connection: &Connection,
        topology: Topology,
        timeout: Duration,
        stop: CancellationToken,
    ) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            topology,
            timeout,
            stop,
        })
    }

    /// Closes the channel (before its connection: lapin logs an error
    /// otherwise), given [`STOP_GRACE`]: a blocked connection never answers.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(STOP_GRACE, self.channel.close(REPLY_SUCCESS, "done".into()))
            .await;
    }

    /// Moves a message to the dead-letter queue: same body and properties,
    /// plus the reason header.
    pub async fn dead_letter(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        reason: &str,
    ) -> Result<(), PublishError> {
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from(reason)),
        );
        let properties = properties.clone().with_headers(headers);
        // Through the default exchange: the dead queue's name is its routing
        // key. Mandatory: if that queue is gone, the original must stay unacked.
        self.confirm("", &self.topology.dead_queue, body, properties, true)
            .await
    }

    /// Publishes the invalidation event(s) of a commit made at `committed_at`:
    /// one with `"keys": []` when the commit named no pair, so that gateways
    /// still learn its LSN (they fence receipts with it).
    pub async fn invalidate(
        &self,
        event: &InvalidationEvent,
        committed_at: SystemTime,
    ) -> Result<usize, PublishError> {
        let micros = committed_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let mut headers = FieldTable::default();
        headers.insert(COMMITTED_AT_HEADER.into(), AMQPValue::LongLongInt(micros));
        let mut sent = 0;
        let chunks: Vec<&[Pair]> = if event.keys.is_empty() {
            vec![&[]]
        } else {
            event.keys.chunks(KEYS_PER_EVENT).collect()
        };
        for keys in chunks {
            let chunk = InvalidationEvent::new(keys.to_vec(), event.lsn);
            // Serialising domain types cannot fail.
            let body = serde_json::to_vec(&chunk).unwrap_or_default();
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_headers(headers.clone());
            // Not mandatory: with no gateway bound, nobody needs the event.
            self.confirm(
                &self.topology.invalidations_exchange,
                "",
                &body,
                properties,
                false,
            )
            .await?;
            sent += 1;
        }
        Ok(sent)
    }

    async fn confirm(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let publish = async {
            let options = BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            };
            self.channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    body,
                    properties,
                )
                .await?
                .await
        };
        let stopping = async {
            self.stop.cancelled().await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        let confirmation = tokio::select! {
            outcome = tokio::time::timeout(self.timeout, publish) => {
                outcome.map_err(|_| PublishError::TimedOut(self.timeout))??
            }
            _ = stopping => return Err(PublishError::Stopped),
        };
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                Err(PublishError::Returned {
                    routing_key: routing_key.to_string(),
                })
            }
            Confirmation::Nack(None) | Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }
}
