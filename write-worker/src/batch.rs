//! One batch of deliveries: parsed, committed (retrying what the database
//! can't take now, isolating what it never will), dead-lettered, announced.
//! The caller acknowledges it afterwards, and only then: commit, then dead
//! letters and the event confirmed, then the ack (docs/write-path.md).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use shared::compaction::Retention;
use shared::domain::WriteId;
use shared::event::InvalidationEvent;
use shared::write::WriteMessage;

use crate::faults::{self, Fault};
use crate::metrics::Metrics;
use crate::publisher::{PublishError, Publisher};
use crate::store::{self, Committed, RejectedWrite};

/// First and longest pause between attempts to commit while Postgres fails.
const RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// A delivery's parts that processing needs.
#[derive(Debug, Clone)]
pub struct Received {
    /// The broker's delivery tag on the consuming channel.
    pub tag: u64,
    /// The message body.
    pub body: Vec<u8>,
    /// The message properties (kept whole for dead-lettering).
    pub properties: BasicProperties,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
}

impl From<Delivery> for Received {
    fn from(d: Delivery) -> Self {
        Self {
            tag: d.delivery_tag,
            body: d.data,
            properties: d.properties,
            redelivered: d.redelivered,
        }
    }
}

/// Why a batch was not finished; its messages stay unacknowledged.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Publishing failed: the broker session must be rebuilt.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The worker is stopping while Postgres is failing.
    #[error("stopped before the batch could be committed")]
    Stopped,
}

/// How a commit ended once every transient failure was retried away: the
/// one decision between acknowledging the writes and dead-lettering them.
enum Commit {
    /// Committed: every write may be acknowledged.
    Done(Committed),
    /// The database will never take these writes; the reason says why.
    Refused(String),
}

/// A message to dead-letter.
struct DeadLetter<'a> {
    received: &'a Received,
    /// `code: message`, the `x-addonreg-reason` header.
    reason: String,
    code: &'static str,
}

/// What processing needs besides the batch.
pub struct Processor<'a> {
    /// The primary, where the batch commits.
    pub pool: &'a PgPool,
    /// How far behind its pair's newest op an op is kept.
    pub retention: Retention,
    /// Where dead letters and events go.
    pub publisher: &'a Publisher,
    /// The worker's metrics.
    pub metrics: &'a Metrics,
    /// Fires on SIGTERM: stop retrying a failing commit.
    pub stop: &'a CancellationToken,
}

impl Processor<'_> {
    /// Commits a batch, dead-letters its bad messages and publishes its
    /// invalidation event; on `Ok` every message may be acknowledged.
    pub async fn process(&self, batch: &[Received]) -> Result<(), BatchError> {
        let mut writes = Vec::with_capacity(batch.len());
        let mut sources = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        let mut rejected = Vec::new();
        for received in batch {
            if received.redelivered {
                self.metrics.redeliveries.inc();
            }
            match WriteMessage::parse(&received.body) {
                Ok(write) => {
                    writes.push(write);
                    sources.push(received);
                }
                Err(rejection) => {
                    let reason = rejection.reason.to_string();
                    let receipt_id = rejection.write_id.or_else(|| message_id(received));
                    if let Some(write_id) = receipt_id {
                        rejected.push(RejectedWrite {
                            write_id,
                            reason: reason.clone(),
                        });
                    }
                    let code = rejection.reason.code();
                    dead.push(DeadLetter {
                        received,
                        reason: format!("{code}: {reason}"),
                        code,
                    });
                }
            }
        }

        let ops: usize = writes.iter().map(|w| w.ops.len()).sum();
        let started = std::time::Instant::now();
        let committed = match self.commit_retrying(&writes, &rejected).await? {
            Commit::Done(committed) => committed,
            Commit::Refused(_) => {
                self.isolate_refused(&writes, &sources, rejected, &mut dead)
                    .await?
            }
        };
        let committed_at = std::time::SystemTime::now();
        self.dead_letter_again(&writes, &sources, &committed, &mut dead)
            .await?;
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_messages.observe(batch.len() as f64);
        self.metrics.batch_ops.observe(ops as f64);

        for letter in &dead {
            self.publisher
                .dead_letter(
                    &letter.received.body,
                    &letter.received.properties,
                    &letter.reason,
                )
                .await?;
            self.metrics
                .dead_lettered
                .with_label_values(&[letter.code])
                .inc();
            self.metrics.messages.with_label_values(&["rejected"]).inc();
            tracing::warn!(type = "write.rejected", reason = %letter.reason, "write dead-lettered");
        }
        // Every commit is announced, one naming no pair too: its LSN is what
        // gateways fence receipts with.
        let event = InvalidationEvent::new(committed.pairs, committed.lsn);
        let sent = self.publisher.invalidate(&event, committed_at).await?;
        self.metrics.invalidations.inc_by(sent as u64);
        for status in committed.outcomes.values() {
            self.metrics
                .messages
                .with_label_values(&[status.as_str()])
                .inc();
        }
        self.metrics
            .messages
            .with_label_values(&["duplicate"])
            .inc_by(committed.duplicates as u64);
        Ok(())
    }

    /// Valid writes skipped as duplicates whose receipt says `rejected`: the
    /// database refused them before, and that worker may have died (or failed
    /// to publish) between committing the receipt and confirming the dead
    /// letter. They are dead-lettered again, so dead letters are at least once.
    async fn dead_letter_again<'a>(
        &self,
        writes: &[WriteMessage],
        sources: &[&'a Received],
        committed: &Committed,
        dead: &mut Vec<DeadLetter<'a>>,
    ) -> Result<(), BatchError> {
        let taken: HashSet<u64> = dead.iter().map(|d| d.received.tag).collect();
        let skipped: Vec<(&WriteMessage, &'a Received)> = writes
            .iter()
            .zip(sources.iter().copied())
            .filter(|(w, r)| {
                !committed.outcomes.contains_key(&w.write_id) && !taken.contains(&r.tag)
            })
            .collect();
        if skipped.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = skipped.iter().map(|(w, _)| w.write_id.as_str()).collect();
        let reasons = self.rejected_receipts(&ids).await?;
        for (write, received) in skipped {
            if let Some(reason) = reasons.get(write.write_id.as_str()) {
                dead.push(DeadLetter {
                    received,
                    reason: reason.clone(),
                    code: "database_refused",
                });
            }
        }
        Ok(())
    }

    /// write id → reason of those of `ids` whose `rejected` receipt is a
    /// database refusal (bad input stays acknowledged: its receipt is
    /// final), retrying while Postgres fails.
    async fn rejected_receipts(&self, ids: &[&str]) -> Result<HashMap<String, String>, BatchError> {
        let mut pause = RETRY.0;
        loop {
            let rows: Result<Vec<(String, Option<String>)>, sqlx::Error> = sqlx::query_as(
                "SELECT write_id, reason FROM receipts WHERE write_id = ANY($1) AND status = 'rejected' \
                 AND reason LIKE 'database\\_refused:%'",
            )
            .bind(ids)
            .fetch_all(self.pool)
            .await;
            match rows {
                Ok(rows) => {
                    return Ok(rows
                        .into_iter()
                        .map(|(id, reason)| (id, reason.unwrap_or_default()))
                        .collect());
                }
                Err(error) => {
                    tracing::warn!(type = "batch.retry", error = %error, retry_ms = pause.as_millis() as u64, "reading receipts failed; retrying");
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Err(BatchError::Stopped),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(RETRY.1);
        }
    }

    /// Commits, retrying with backoff while the failure is transient; `Err`
    /// only when the worker stops first.
    async fn commit_retrying(
        &self,
        writes: &[WriteMessage],
        rejected: &[RejectedWrite],
    ) -> Result<Commit, BatchError> {
        let mut pause = RETRY.0;
        loop {
            let error = match store::commit(self.pool, self.retention, writes, rejected).await {
                Ok(committed) => return Ok(Commit::Done(committed)),
                Err(error) => error,
            };
            let fault = faults::classify(&error);
            self.metrics
                .commit_errors
                .with_label_values(&[fault.kind()])
                .inc();
            match fault {
                Fault::Refused(reason) => {
                    tracing::warn!(type = "batch.refused", error = %error, writes = writes.len(), "database refused a batch");
                    return Ok(Commit::Refused(reason));
                }
                Fault::Transient => {
                    tracing::warn!(type = "batch.retry", error = %error, retry_ms = pause.as_millis() as u64, "commit failed; retrying");
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Err(BatchError::Stopped),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(RETRY.1);
        }
    }

    /// The database refused the batch: commit its writes one by one, and
    /// dead-letter those it refuses alone, so no neighbour suffers.
    async fn isolate_refused<'a>(
        &self,
        writes: &[WriteMessage],
        sources: &[&'a Received],
        mut rejected: Vec<RejectedWrite>,
        dead: &mut Vec<DeadLetter<'a>>,
    ) -> Result<Committed, BatchError> {
        let mut merged = Committed::default();
        for (write, received) in writes.iter().zip(sources) {
            match self
                .commit_retrying(std::slice::from_ref(write), &[])
                .await?
            {
                Commit::Done(one) => merge(&mut merged, one),
                Commit::Refused(reason) => {
                    // The receipt keeps the dead letter's reason, code first,
                    // so a redelivery can tell a refusal from bad input.
                    let reason = format!("database_refused: {reason}");
                    rejected.push(RejectedWrite {
                        write_id: write.write_id.clone(),
                        reason: reason.clone(),
                    });
                    dead.push(DeadLetter {
                        received,
                        reason,
                        code: "database_refused",
                    });
                }
            }
        }
        // Rejected receipts alone: nothing in them can be refused but by a bug.
        match self.commit_retrying(&[], &rejected).await? {
            Commit::Done(receipts) => merge(&mut merged, receipts),
            Commit::Refused(reason) => {
                tracing::error!(type = "batch.refused", reason, "rejected receipts refused")
            }
        }
        Ok(merged)
    }
}

fn merge(into: &mut Committed, from: Committed) {
    into.outcomes.extend(from.outcomes);
    into.duplicates += from.duplicates;
    into.pairs.extend(from.pairs);
    into.lsn = into.lsn.max(from.lsn);
}

/// The AMQP `message_id`, when it is a valid write id: where a rejected
/// message's receipt goes when its body has none.
fn message_id(received: &Received) -> Option<WriteId> {
    received
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| WriteId::parse(id.as_str()).ok())
}
