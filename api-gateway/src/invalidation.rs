//! The subscription to invalidation events: a background task that binds
//! its own server-named, exclusive, auto-delete queue to
//! `<prefix>.invalidations` and evicts (and fences) every key of every event.
//!
//! lapin does not reconnect by itself, so any failure (connecting, binding,
//! the consumer stream ending) drops the session and starts over, on the
//! next node when `ADDONREG_AMQP_URL` lists several, after a jittered
//! backoff ([`shared::broker::Reconnect`]). The exchange is not declared here (the gateway's
//! broker user may not); binding before a worker declared it fails and is
//! retried the same way. The cache is told when the subscription starts
//! (it drops everything: events were missed, and reads nothing older than
//! the primary's WAL position read once bound) and when it ends (short
//! lifetimes until the next one).
//!
//! The connection asks for an AMQP heartbeat of `ADDONREG_AMQP_HEARTBEAT_SECS`
//! (default 5): workers publish nothing while idle, so a silent consumer is
//! normal and only missed heartbeats tell a broker that went away without
//! closing the connection (a partition); lapin then fails the connection
//! after two heartbeat intervals without a frame, and the cache falls back
//! to its disconnected lifetimes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use shared::broker::{AmqpUrls, Reconnect};
use shared::event::{InvalidationEvent, Lsn};
use shared::settings::Secret;
use shared::topology::{COMMITTED_AT_HEADER, REPLY_SUCCESS, Topology};

use crate::cache::CacheControl;
use crate::edge::EdgeState;
use crate::store::{ReadStore, StoreError};

/// Why a subscription ended.
#[derive(Debug, Error)]
pub enum SubscriptionError {
    /// The broker refused or dropped something.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The consumer stream ended (connection or channel closed).
    #[error("consumer ended")]
    Ended,
    /// A URL of `ADDONREG_AMQP_URL` does not parse as AMQP.
    #[error("broker URL: {0}")]
    Url(String),
    /// The primary's WAL position could not be read once bound.
    #[error("primary's WAL position: {0}")]
    PrimaryLsn(StoreError),
}

/// Where a subscriber to invalidations (a gateway, the edge purger)
/// connects, and what it binds to.
#[derive(Clone)]
pub struct Broker {
    /// `ADDONREG_AMQP_URL`: the broker's node(s).
    pub urls: AmqpUrls,
    /// The AMQP heartbeat asked for, in seconds; 0 leaves it to the broker.
    pub heartbeat_secs: u16,
    /// Names under the prefix.
    pub topology: Topology,
    /// The connection's name as the broker shows it.
    pub connection_name: String,
}

/// Where the subscription connects, and how it learns the primary's WAL
/// position when it (re)subscribes.
#[derive(Clone)]
pub struct Subscription {
    /// The broker.
    pub broker: Broker,
    /// The sources, asked for the primary's WAL position.
    pub store: ReadStore,
    /// What the edge purger is told about this gateway.
    pub edge: EdgeState,
}

/// Keeps the cache subscribed to invalidations until `stop` fires.
pub async fn run(subscription: Subscription, cache: CacheControl, stop: CancellationToken) {
    let mut reconnect = Reconnect::new(subscription.broker.urls.clone());
    while let Some(connection) = reconnect
        .connect("api-gateway invalidations", &stop, |url| {
            connect(url, &subscription.broker)
        })
        .await
    {
        let outcome = subscribe(connection, &subscription, &cache, &stop).await;
        let was_subscribed = cache.is_subscribed();
        // The edge first: from here on shared caches keep answers briefly.
        subscription.edge.unsubscribed();
        cache.unsubscribed();
        match outcome {
            Ok(()) => break,
            Err(e) => tracing::warn!(
                type = "invalidation.unsubscribed",
                error = %e,
                "not subscribed to invalidations"
            ),
        }
        if !reconnect.lost(was_subscribed, &stop).await {
            break;
        }
    }
    subscription.edge.unsubscribed();
    cache.unsubscribed();
}

/// One session: bind, consume until it fails or `stop` fires, close.
async fn subscribe(
    connection: Connection,
    subscription: &Subscription,
    cache: &CacheControl,
    stop: &CancellationToken,
) -> Result<(), SubscriptionError> {
    let outcome = tokio::select! {
        biased;
        _ = stop.cancelled() => Ok(()),
        outcome = consume(&connection, subscription, cache, stop) => outcome,
    };
    let _ = connection
        .close(REPLY_SUCCESS, "gateway subscription ends".into())
        .await;
    outcome
}

/// Connects to `url`, one of `broker`'s nodes, asking for its AMQP
/// heartbeat, under its name.
pub async fn connect(url: Secret, broker: &Broker) -> Result<Connection, SubscriptionError> {
    let mut uri: AMQPUri = url.expose().parse().map_err(SubscriptionError::Url)?;
    if broker.heartbeat_secs > 0 {
        uri.query.heartbeat = Some(broker.heartbeat_secs);
    }
    Ok(Connection::connect_uri(
        uri,
        ConnectionProperties::default()
            .with_connection_name(broker.connection_name.as_str().into()),
    )
    .await?)
}

/// Binds a server-named, exclusive, auto-delete queue to the invalidations
/// exchange and consumes it without acks.
pub async fn consume_events(
    connection: &Connection,
    topology: &Topology,
) -> Result<lapin::Consumer, SubscriptionError> {
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
    // Exclusive queue: a lost event is only ever this consumer's, and the
    // reconnect starts it over anyway.
    Ok(channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?)
}

async fn consume(
    connection: &Connection,
    subscription: &Subscription,
    cache: &CacheControl,
    stop: &CancellationToken,
) -> Result<(), SubscriptionError> {
    let mut events = consume_events(connection, &subscription.broker.topology).await?;
    // Bound: every later event is in the queue; anything committed before
    // is at or below the primary's position read now.
    let primary_lsn: Lsn = subscription
        .store
        .primary_lsn()
        .await
        .map_err(SubscriptionError::PrimaryLsn)?;
    cache.subscribed(primary_lsn);
    subscription.edge.subscribed(primary_lsn);
    tracing::info!(
        type = "invalidation.subscribed",
        primary_lsn = %primary_lsn,
        "subscribed to invalidations"
    );
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            next = events.next() => next.ok_or(SubscriptionError::Ended)??,
        };
        match serde_json::from_slice::<InvalidationEvent>(&delivery.data) {
            Ok(event) => {
                cache.invalidate(event.keys.clone(), event.lsn).await;
                // Only now may the edge be purged of these keys.
                subscription.edge.applied(&event.keys, event.lsn);
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
