//! The subscription to invalidation events: a background task that binds
//! its own server-named, exclusive, auto-delete queue to
//! `<prefix>.invalidations` and evicts (and fences) every key of every event.
//!
//! lapin does not reconnect by itself, so any failure (connecting, binding,
//! the consumer stream ending) drops the session and starts over with
//! exponential backoff. The exchange is not declared here (the gateway's
//! broker user may not); binding before a worker declared it fails and is
//! retried the same way. The cache is told when the subscription starts
//! (it drops everything: events were missed) and when it ends (short
//! lifetimes until the next one).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use shared::event::InvalidationEvent;
use shared::settings::Secret;
use shared::topology::{COMMITTED_AT_HEADER, REPLY_SUCCESS, Topology};

use crate::cache::CacheControl;

/// First and longest wait between subscription attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// Why a subscription ended.
#[derive(Debug, Error)]
pub enum SubscriptionError {
    /// The broker refused or dropped something.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The consumer stream ended (connection or channel closed).
    #[error("consumer ended")]
    Ended,
}

/// Keeps the cache subscribed to invalidations until `stop` fires.
pub async fn run(
    url: Secret,
    topology: Topology,
    connection_name: String,
    cache: CacheControl,
    stop: CancellationToken,
) {
    let mut wait = BACKOFF.0;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            outcome = subscribe(&url, &topology, &connection_name, &cache, &stop) => outcome,
        };
        let was_subscribed = cache.is_subscribed();
        cache.unsubscribed();
        match outcome {
            Ok(()) => break,
            Err(e) => tracing::warn!(
                type = "invalidation.unsubscribed",
                error = %e,
                retry_ms = wait.as_millis() as u64,
                "not subscribed to invalidations"
            ),
        }
        if was_subscribed {
            wait = BACKOFF.0;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(BACKOFF.1);
    }
    cache.unsubscribed();
}

/// One session: connect, bind, consume until it fails or `stop` fires.
async fn subscribe(
    url: &Secret,
    topology: &Topology,
    connection_name: &str,
    cache: &CacheControl,
    stop: &CancellationToken,
) -> Result<(), SubscriptionError> {
    let connection = Connection::connect(
        url.expose(),
        ConnectionProperties::default().with_connection_name(connection_name.into()),
    )
    .await?;
    let outcome = consume(&connection, topology, cache, stop).await;
    let _ = connection
        .close(REPLY_SUCCESS, "gateway subscription ends".into())
        .await;
    outcome
}

async fn consume(
    connection: &Connection,
    topology: &Topology,
    cache: &CacheControl,
    stop: &CancellationToken,
) -> Result<(), SubscriptionError> {
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            topology.invalidations_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Exclusive queue: a lost event is only ever this gateway's, and the
    // reconnect clears the cache anyway.
    let mut events = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    // Bound: every later event is in the queue; anything before is dropped.
    cache.subscribed();
    tracing::info!(type = "invalidation.subscribed", "subscribed to invalidations");
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            next = events.next() => next.ok_or(SubscriptionError::Ended)??,
        };
        match serde_json::from_slice::<InvalidationEvent>(&delivery.data) {
            Ok(event) => {
                cache.invalidate(event.keys, event.lsn).await;
                if let Some(delay) = delay_since_commit(&delivery.properties) {
                    cache.observe_delay(delay);
                }
            }
            Err(e) => {
                // Some keys changed and we can't tell which: drop them all.
                tracing::error!(
                    type = "invalidation.unreadable",
                    error = %e,
                    "unreadable invalidation event"
                );
                cache.clear();
            }
        }
    }
}

/// Time since the worker committed the event's change (its
/// [`COMMITTED_AT_HEADER`]), if it says; clocks apart count as no delay.
fn delay_since_commit(properties: &BasicProperties) -> Option<Duration> {
    let headers = properties.headers().as_ref()?;
    let micros = match headers.inner().get(COMMITTED_AT_HEADER)? {
        AMQPValue::LongLongInt(micros) => u64::try_from(*micros).ok()?,
        _ => return None,
    };
    let committed_at = UNIX_EPOCH + Duration::from_micros(micros);
    Some(
        SystemTime::now()
            .duration_since(committed_at)
            .unwrap_or(Duration::ZERO),
    )
}
