//! The janitor: purges receipts and tombstones past their retentions. Every
//! worker runs one; a transaction-scoped advisory lock lets only one of them
//! work at a time. Deletes go in chunks so no transaction grows large.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Advisory lock key ("addonreg janitor"), shared by every worker.
const LOCK_KEY: i64 = 0x6164_6472_6a61_6e69;
/// Rows deleted per transaction.
const CHUNK: i64 = 10_000;

/// How long things are kept, and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Receipts older than this (by `processed_at`) go.
    pub receipts: Duration,
    /// Tombstones whose delete is older than this (by `issued_at`) go.
    pub tombstones: Duration,
    /// Pause between rounds.
    pub interval: Duration,
}

/// What one round removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Receipts deleted.
    pub receipts: u64,
    /// Tombstones deleted.
    pub tombstones: u64,
}

/// Runs rounds until `stop` fires.
pub async fn run(pool: &PgPool, retention: Retention, stop: &CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retention.interval) => {}
        }
        match purge(pool, retention).await {
            Ok(p) if p != Purged::default() => {
                tracing::info!(type = "janitor.purged", receipts = p.receipts, tombstones = p.tombstones, "purged");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(type = "janitor.failed", error = %e, "janitor round failed"),
        }
    }
}

/// One round; `None`-like zero counts when another worker holds the lock.
pub async fn purge(pool: &PgPool, retention: Retention) -> Result<Purged, sqlx::Error> {
    let mut purged = Purged::default();
    loop {
        let mut tx = pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(purged);
        }
        let receipts = sqlx::query(
            "DELETE FROM receipts WHERE write_id IN ( \
                 SELECT write_id FROM receipts \
                 WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2)",
        )
        .bind(retention.receipts.as_secs_f64())
        .bind(CHUNK)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Raise the horizon before the purge, in the same transaction: no
        // worker can then bring back what is purged.
        sqlx::query(
            "UPDATE compaction SET horizon = greatest(horizon, now() - make_interval(secs => $1))",
        )
        .bind(retention.tombstones.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        let tombstones = sqlx::query(
            "DELETE FROM records WHERE (addon_id, sha256) IN ( \
                 SELECT addon_id, sha256 FROM records \
                 WHERE status = 'deleted' AND updated_at < (SELECT horizon FROM compaction) \
                 LIMIT $1)",
        )
        .bind(CHUNK)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        purged.receipts += receipts;
        purged.tombstones += tombstones;
        if receipts < CHUNK as u64 && tombstones < CHUNK as u64 {
            return Ok(purged);
        }
    }
}
