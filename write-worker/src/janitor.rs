//! The janitor: purges receipts past their retention. Every worker runs one;
//! a transaction-scoped advisory lock lets only one of them work at a time.
//! Deletes go in chunks so no transaction grows large.
//!
//! It never touches records. Op histories are compacted by the worker as it
//! writes each pair ([`shared::compaction`]), and tombstones stay: purging one
//! would need a clock rule ("older than now − X is superseded"), which drops
//! a backfill's years-old writes, or a check under the worker's row locks
//! that a purge can race with.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Advisory lock key ("addonreg janitor"), shared by every worker.
const LOCK_KEY: i64 = 0x6164_6472_6a61_6e69;
/// Rows deleted per transaction.
const CHUNK: i64 = 10_000;

/// How long receipts are kept, and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Receipts older than this (by `processed_at`) go.
    pub receipts: Duration,
    /// Pause between rounds.
    pub interval: Duration,
}

/// Runs rounds until `stop` fires.
pub async fn run(pool: &PgPool, retention: Retention, stop: &CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retention.interval) => {}
        }
        match purge(pool, retention).await {
            Ok(0) => {}
            Ok(receipts) => tracing::info!(type = "janitor.purged", receipts, "purged"),
            Err(e) => tracing::warn!(type = "janitor.failed", error = %e, "janitor round failed"),
        }
    }
}

/// One round: how many receipts it deleted (0 when another worker holds the lock).
pub async fn purge(pool: &PgPool, retention: Retention) -> Result<u64, sqlx::Error> {
    let mut purged = 0;
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
        if receipts < CHUNK as u64 {
            sqlx::query("UPDATE janitor SET last_round_at = now()")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        purged += receipts;
        if receipts < CHUNK as u64 {
            return Ok(purged);
        }
    }
}
