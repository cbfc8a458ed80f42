//! The intake's broker side: a pool of confirm-mode channels spread over a
//! few connections, and the confirmed publish of one write.
//!
//! Connections are `deadpool-lapin` pools of one connection each (round
//! robin), and channels a `deadpool` pool on top. A channel is taken only
//! for the publish itself and handed back before its confirm is awaited, so
//! one slow confirm holds no channel and serialises nothing. After a broker
//! restart, recycling finds the channel (and its connection) closed and
//! makes new ones: the pool recovers by itself on the next request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics as PoolMetrics, RecycleError, RecycleResult};
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ConnectionProperties};
use thiserror::Error;

use shared::broker::AmqpUrls;
use shared::domain::WriteId;
use shared::topology::{Topology, WRITE_ROUTING_KEY};

use super::metrics::Metrics;

/// Longest a new connection or channel may take before the request gives up.
const CREATE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the broker did not take a write.
#[derive(Debug, Error)]
pub enum PublishError {
    /// No channel, or the channel failed: the broker is unreachable or
    /// refused (e.g. no writes exchange, or no permission).
    #[error("broker unavailable: {0}")]
    Broker(String),
    /// No confirm within `ADDONREG_INTAKE_CONFIRM_TIMEOUT_MS` (e.g. a memory
    /// alarm blocks publishers).
    #[error("no confirm within the timeout")]
    Timeout,
    /// The writes exchange has no queue bound for `write`.
    #[error("returned unroutable")]
    Returned,
    /// The broker refused to store it (e.g. the queue's length limit).
    #[error("nacked by the broker")]
    Nacked,
}

impl PublishError {
    /// The metric label of `unavailable_total`.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Broker(_) => "broker",
            Self::Timeout => "confirm_timeout",
            Self::Returned => "returned",
            Self::Nacked => "nacked",
        }
    }
}

/// Makes confirm-mode channels on the connections, in turn.
struct ChannelManager {
    connections: Vec<deadpool_lapin::Pool>,
    next: AtomicUsize,
}

impl managed::Manager for ChannelManager {
    type Type = Channel;
    type Error = String;

    async fn create(&self) -> Result<Channel, String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let connection = self.connections[i]
            .get()
            .await
            .map_err(|e| pool_error(&e))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(channel)
    }

    async fn recycle(&self, channel: &mut Channel, _: &PoolMetrics) -> RecycleResult<String> {
        if channel.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel closed"))
        }
    }
}

/// deadpool's error, without the manager's `Debug` (which would print the
/// broker URL and its password).
fn pool_error<E: std::fmt::Display>(e: &managed::PoolError<E>) -> String {
    match e {
        managed::PoolError::Backend(e) => e.to_string(),
        managed::PoolError::Timeout(kind) => format!("pool timeout ({kind:?})"),
        managed::PoolError::Closed => "pool closed".into(),
        managed::PoolError::NoRuntimeSpecified => "no runtime".into(),
        managed::PoolError::PostCreateHook(_) => "post-create hook failed".into(),
    }
}

/// The confirm-mode channels and what to publish with them.
#[derive(Clone)]
pub struct Channels {
    pool: managed::Pool<ChannelManager>,
    exchange: Arc<str>,
    queue: Arc<str>,
    confirm_timeout: Duration,
    metrics: Metrics,
}

impl Channels {
    /// Prepares the pools; nothing connects until the first use.
    pub fn new(
        urls: &AmqpUrls,
        topology: &Topology,
        connections: usize,
        channels: usize,
        confirm_timeout: Duration,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let name = format!("addonreg-intake {}", topology.writes_exchange);
        let connections = (0..connections.max(1))
            .map(|i| {
                let name = format!("{name} {i}");
                // Connections spread over the broker's nodes, so losing one
                // node leaves the others' channels serving.
                let url = &urls.urls()[i % urls.urls().len()];
                let config = deadpool_lapin::Config {
                    url: Some(url.expose().to_string()),
                    pool: Some(deadpool_lapin::PoolConfig {
                        max_size: 1,
                        timeouts: deadpool_lapin::Timeouts {
                            wait: Some(CREATE_TIMEOUT),
                            create: Some(CREATE_TIMEOUT),
                            recycle: Some(CREATE_TIMEOUT),
                        },
                        ..Default::default()
                    }),
                };
                config
                    .create_pool(
                        move || {
                            ConnectionProperties::default()
                                .with_connection_name(name.as_str().into())
                        },
                        deadpool_lapin::Runtime::Tokio1,
                    )
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let manager = ChannelManager {
            connections,
            next: AtomicUsize::new(0),
        };
        let pool = managed::Pool::builder(manager)
            .max_size(channels.max(1))
            .runtime(deadpool::Runtime::Tokio1)
            // Waiting for a free channel counts against the confirm timeout.
            .wait_timeout(Some(confirm_timeout))
            .create_timeout(Some(CREATE_TIMEOUT))
            .recycle_timeout(Some(CREATE_TIMEOUT))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            pool,
            exchange: topology.writes_exchange.as_str().into(),
            queue: topology.writes_queue.as_str().into(),
            confirm_timeout,
            metrics,
        })
    }

    /// Publishes `body` as AMO would (persistent, JSON, `message_id` =
    /// `write_id`, mandatory) and returns once the broker confirmed it.
    /// Any other outcome is an error: the queue may not hold the write.
    pub async fn publish(&self, write_id: &WriteId, body: &[u8]) -> Result<(), PublishError> {
        let started = Instant::now();
        let publish = async {
            let channel = self
                .pool
                .get()
                .await
                .map_err(|e| PublishError::Broker(pool_error(&e)))?;
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(write_id.as_str().into());
            let confirm = channel
                .basic_publish(
                    self.exchange.as_ref().into(),
                    WRITE_ROUTING_KEY.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    properties,
                )
                .await
                .map_err(|e| PublishError::Broker(e.to_string()))?;
            // Back to the pool before the confirm: others publish meanwhile.
            drop(channel);
            confirm
                .await
                .map_err(|e| PublishError::Broker(e.to_string()))
        };
        let confirmation = tokio::time::timeout(self.confirm_timeout, publish)
            .await
            .map_err(|_| PublishError::Timeout)??;
        match confirmation {
            Confirmation::Ack(None) => {
                self.metrics
                    .confirm_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(())
            }
            Confirmation::Ack(Some(_)) => Err(PublishError::Returned),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            // confirm_select is set on every channel at creation.
            Confirmation::NotRequested => {
                Err(PublishError::Broker("channel not in confirm mode".into()))
            }
        }
    }

    /// Messages ready in the writes queue (a passive declare, which needs no
    /// permission), within `limit`.
    pub async fn backlog(&self, limit: Duration) -> Result<u32, String> {
        let read = async {
            let channel = self.pool.get().await.map_err(|e| pool_error(&e))?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            channel
                .queue_declare(self.queue.as_ref().into(), passive, FieldTable::default())
                .await
                .map(|queue| queue.message_count())
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(limit, read)
            .await
            .map_err(|_| "the broker did not answer in time".to_string())?
    }

    /// Closes the pools: new requests fail, channels in use close as they
    /// come back.
    pub fn close(&self) {
        self.pool.close();
        for connections in &self.pool.manager().connections {
            connections.close();
        }
    }
}
