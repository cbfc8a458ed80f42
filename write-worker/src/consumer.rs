//! Consuming the writes queue: batches of deliveries, processed and then
//! acknowledged together; the broker session rebuilt whenever it fails.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use shared::broker::{AmqpUrls, Reconnect};
use shared::topology::Topology;

use crate::batch::{BatchError, Processor, Received};
use crate::broker::{self, Session};
use crate::metrics::Metrics;
use crate::publisher::{PublishError, Publisher};
use crate::settings::BatchSettings;

/// A session that lasted this long worked: the reconnect backoff starts
/// over. A shorter one (a broker refusing us right after connecting) lets
/// the waits grow, so that it does not become a hot loop.
const STEADY: Duration = Duration::from_secs(1);

/// Everything a consumer needs.
pub struct Consumer {
    /// The primary, where batches commit.
    pub pool: PgPool,
    /// The broker's node(s), reconnected to after every lost session.
    pub amqp_urls: AmqpUrls,
    /// The queue and exchange names under the deployment's prefix.
    pub topology: Topology,
    /// Batch sizes and waits.
    pub batch: BatchSettings,
    /// The worker's metrics.
    pub metrics: Metrics,
}

/// Why a session ended other than by the stop signal.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("the broker ended the consumer")]
    ConsumerEnded,
}

impl Consumer {
    /// Consumes until `stop` fires: the batch in hand is committed and
    /// acknowledged first; messages prefetched but not begun go back to the queue.
    pub async fn run(&self, stop: &CancellationToken) {
        if self.batch.effective_prefetch() < self.batch.prefetch {
            tracing::info!(
                type = "worker.prefetch_capped",
                prefetch = self.batch.effective_prefetch(),
                batch_max_messages = self.batch.effective_max_messages(),
                "prefetch capped by ADDONREG_MEMORY_BUDGET_BYTES"
            );
        }
        let mut first = true;
        let mut reconnect = Reconnect::new(self.amqp_urls.clone());
        while let Some(session) = broker::connect(&mut reconnect, &self.topology, stop).await {
            if !std::mem::take(&mut first) {
                self.metrics.reconnects.inc();
            }
            let started = Instant::now();
            let result = self.consume(&session, stop).await;
            session.close().await;
            match result {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(type = "broker.session_lost", error = %e, "broker session lost; reconnecting")
                }
            }
            if !reconnect.lost(started.elapsed() >= STEADY, stop).await {
                return;
            }
        }
    }

    async fn consume(
        &self,
        session: &Session,
        stop: &CancellationToken,
    ) -> Result<(), SessionError> {
        let channel = &session.channel;
        channel
            .basic_qos(self.batch.effective_prefetch(), BasicQosOptions::default())
            .await?;
        let publisher = Publisher::open(
            &session.publishing,
            self.topology.clone(),
            Duration::from_millis(self.batch.publish_timeout_ms),
            stop.clone(),
        )
        .await?;
        let result = self.consume_with(session, &publisher, stop).await;
        publisher.close().await;
        result
    }

    async fn consume_with(
        &self,
        session: &Session,
        publisher: &Publisher,
        stop: &CancellationToken,
    ) -> Result<(), SessionError> {
        let channel = &session.channel;
        let mut deliveries = channel
            .basic_consume(
                self.topology.writes_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let processor = Processor {
            pool: &self.pool,
            retention: self.batch.op_retention,
            publisher,
            metrics: &self.metrics,
            stop,
        };
        let max_wait = Duration::from_millis(self.batch.max_wait_ms);
        let max_messages = self.batch.effective_max_messages();
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                next = deliveries.next() => next.ok_or(SessionError::ConsumerEnded)??,
            };
            let collecting = Instant::now();
            let mut bytes = first.data.len();
            let mut batch = vec![Received::from(first)];
            let deadline = Instant::now() + max_wait;
            while batch.len() < max_messages && bytes < self.batch.max_bytes {
                match tokio::time::timeout_at(deadline, deliveries.next()).await {
                    Err(_) => break,
                    Ok(next) => {
                        let delivery = next.ok_or(SessionError::ConsumerEnded)??;
                        bytes += delivery.data.len();
                        batch.push(Received::from(delivery));
                    }
                }
            }
            let processing = Instant::now();
            match processor.process(&batch).await {
                Ok(()) => {}
                // Stopped, or told to stop while the broker would not confirm:
                // nothing is acknowledged, the broker hands it all out again.
                Err(BatchError::Stopped | BatchError::Publish(PublishError::Stopped)) => {
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
            // Deliveries are processed in tag order, a whole batch at a time:
            // everything unacknowledged up to the last tag is this batch.
            let last = batch.last().map(|r| r.tag).unwrap_or_default();
            channel
                .basic_ack(last, BasicAckOptions { multiple: true })
                .await?;
            tracing::debug!(
                type = "batch.done",
                messages = batch.len(),
                collect_us = (processing - collecting).as_micros() as u64,
                process_us = processing.elapsed().as_micros() as u64,
                "batch committed and acknowledged"
            );
        }
    }
}
