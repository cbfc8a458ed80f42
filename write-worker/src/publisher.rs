//! What the worker publishes, each awaited until the broker confirms it:
//! dead letters (before the original is acknowledged) and invalidation events
//! (after the commit, before the acknowledgement).

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use std::time::{SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection};

use shared::event::InvalidationEvent;
use shared::topology::{COMMITTED_AT_HEADER, REASON_HEADER, REPLY_SUCCESS, Topology};

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
}

/// A channel in confirm mode.
pub struct Publisher {
    channel: Channel,
    topology: Topology,
}

impl Publisher {
    /// Opens a confirm-mode channel on `connection`.
    pub async fn open(connection: &Connection, topology: Topology) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel, topology })
    }

    /// Closes the channel (before its connection: lapin logs an error otherwise).
    pub async fn close(&self) {
        let _ = self.channel.close(REPLY_SUCCESS, "done".into()).await;
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
        // Through the default exchange: the dead queue's name is its routing key.
        self.confirm("", &self.topology.dead_queue, body, properties)
            .await
    }

    /// Publishes the invalidation event(s) of a commit made at `committed_at`.
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
        for keys in event.keys.chunks(KEYS_PER_EVENT) {
            let chunk = InvalidationEvent::new(keys.to_vec(), event.lsn);
            // Serialising domain types cannot fail.
            let body = serde_json::to_vec(&chunk).unwrap_or_default();
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_headers(headers.clone());
            self.confirm(&self.topology.invalidations_exchange, "", &body, properties)
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
    ) -> Result<(), PublishError> {
        let confirmation = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        if confirmation.is_ack() {
            Ok(())
        } else {
            Err(PublishError::Nacked)
        }
    }
}
