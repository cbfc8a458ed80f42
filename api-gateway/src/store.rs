//! Reads from the replicas: records, lookups, listings and receipts, decoded
//! into domain types.
//!
//! [`Reads`] is what handlers call; [`ReadStore`] implements it over the
//! replicas, so a cache can later implement it in front of the store without
//! handlers changing. Each read starts at the next replica in round-robin
//! order and, when one fails or takes longer than the read timeout, tries the
//! following one within the same request: a read fails only when every
//! replica did. A replica that just failed is tried last for a few seconds,
//! so that one replica down doesn't make every other read wait for it; then
//! one read probes it again. Rows that don't parse are an internal error,
//! not a failover.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use thiserror::Error;
use tokio::sync::Notify;

use shared::domain::{AddonId, Sha256, Timestamp, Version, WriteId};
use shared::event::Lsn;
use shared::receipt::{Receipt, ReceiptStatus};
use shared::record::{Record, Status};

use crate::replicas::Replica;

/// Why a read failed. Carries no HTTP status: the edge decides.
#[derive(Debug, Clone, Error)]
pub enum StoreError {
    /// Every replica failed or timed out.
    #[error("no replica answered")]
    Unavailable,
    /// A row does not parse into the domain types.
    #[error("unreadable row: {0}")]
    CorruptRow(String),
    /// No source that answered had replayed what the read needs: answering
    /// from one would risk an old value.
    #[error("no replica has replayed {0}")]
    Behind(Lsn),
}

/// The reads the gateway serves. Implemented by [`ReadStore`], and later by a
/// cache in front of it.
pub trait Reads: Clone + Send + Sync + 'static {
    /// The record of one pair, or `None` (never seen, or deleted).
    fn record(
        &self,
        addon_id: &AddonId,
        sha256: &Sha256,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;

    /// The record of each pair, in the same order (`None` where there is none).
    fn lookup(
        &self,
        keys: &[(AddonId, Sha256)],
    ) -> impl Future<Output = Result<Vec<Option<Record>>, StoreError>> + Send;

    /// Up to `limit + 1` records of `addon_id` with a digest greater than
    /// `after`, ordered by digest: the extra one only says that a next page exists.
    fn list(
        &self,
        addon_id: &AddonId,
        after: Option<Sha256>,
        limit: u16,
    ) -> impl Future<Output = Result<Vec<Record>, StoreError>> + Send;

    /// A write's receipt, or `None` while it has not been processed.
    fn receipt(
        &self,
        write_id: &WriteId,
    ) -> impl Future<Output = Result<Option<Receipt>, StoreError>> + Send;

    /// The record of one pair, from a source that has replayed the WAL up
    /// to `lsn`; [`StoreError::Behind`] when none has within a short wait.
    /// The default, for stores of one source that is always current, is
    /// the plain read.
    fn record_at_least(
        &self,
        addon_id: &AddonId,
        sha256: &Sha256,
        _lsn: Lsn,
    ) -> impl Future<Output = Result<Option<Record>, StoreError>> + Send {
        self.record(addon_id, sha256)
    }

    /// `lookup`, from a source that has replayed `lsn` (as `record_at_least`).
    fn lookup_at_least(
        &self,
        keys: &[(AddonId, Sha256)],
        _lsn: Lsn,
    ) -> impl Future<Output = Result<Vec<Option<Record>>, StoreError>> + Send {
        self.lookup(keys)
    }

    /// `list`, from a source that has replayed `lsn` (as `record_at_least`).
    fn list_at_least(
        &self,
        addon_id: &AddonId,
        after: Option<Sha256>,
        limit: u16,
        _lsn: Lsn,
    ) -> impl Future<Output = Result<Vec<Record>, StoreError>> + Send {
        self.list(addon_id, after, limit)
    }

    /// `receipt`, from a source that has replayed `lsn` (as `record_at_least`).
    fn receipt_at_least(
        &self,
        write_id: &WriteId,
        _lsn: Lsn,
    ) -> impl Future<Output = Result<Option<Receipt>, StoreError>> + Send {
        self.receipt(write_id)
    }
}

/// Reads from the replicas, with failover between them.
#[derive(Debug, Clone)]
pub struct ReadStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    replicas: Arc<Vec<Replica>>,
    /// Where the next read starts, so reads spread over the replicas.
    next: AtomicUsize,
    /// Longest one replica may take for one read, connecting included.
    attempt_timeout: Duration,
    /// Per replica: when it last failed, in ms after `epoch` (at least 1);
    /// 0 once it answered again.
    failed_at: Vec<AtomicU64>,
    /// Per replica: told when it goes from answering to failed, so that the
    /// reads already waiting on it (for a connection sqlx keeps retrying)
    /// move on at once instead of each paying the attempt timeout.
    went_down: Vec<Notify>,
    /// Per replica: whether it was last seen to be a primary (not in
    /// recovery); reads that need a caught-up source ask primaries last,
    /// to keep their load off the primary while a replica will do.
    primary: Vec<AtomicBool>,
    epoch: Instant,
}

/// How long a replica that failed is tried only after the others. A dead
/// replica costs a read the whole acquire timeout (sqlx retries connecting
/// until then), so only one read per this period pays it, as a probe.
const TRIED_LAST_FOR: Duration = Duration::from_secs(5);

// Static SQL. `status <> 'deleted'` everywhere: a tombstone is no record.
const RECORD: &str = "\
    SELECT addon_id, sha256, status, version, registered_at, updated_at \
    FROM records \
    WHERE addon_id = $1 AND sha256 = $2 AND status <> 'deleted'";

const LOOKUP: &str = "\
    SELECT k.i, r.addon_id, r.sha256, r.status, r.version, r.registered_at, r.updated_at \
    FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS k(addon_id, sha256, i) \
    JOIN records r ON r.addon_id = k.addon_id AND r.sha256 = k.sha256 \
    WHERE r.status <> 'deleted'";

// Keyset pagination on the primary key. Without a cursor `$2` is the empty
// bytea, which sorts before every digest: one statement, and `sha256 > $2`
// stays an index condition even in a generic plan.
const LIST: &str = "\
    SELECT addon_id, sha256, status, version, registered_at, updated_at \
    FROM records \
    WHERE addon_id = $1 AND sha256 > $2 AND status <> 'deleted' \
    ORDER BY sha256 \
    LIMIT $3";

// A primary (not in recovery) has everything; NULL on a standby means it has
// replayed nothing yet. Asked before the record's own statement, whose
// snapshot is then at least as new (replay only moves forward).
const REPLAYED: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text";

// What the primary has written: on the primary itself, its current position;
// on a standby, what it has received so far (a lower bound).
const CURRENT: &str = "\
    SELECT pg_is_in_recovery(), \
           (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                 ELSE pg_current_wal_lsn() END)::text";

/// How often, and how far apart, a fenced read looks for a source that has
/// replayed its fence: at most ~500 ms in all, inside the 1 s promise.
const FENCE_POLLS: u32 = 5;
const FENCE_POLL_EVERY: Duration = Duration::from_millis(100);

const RECEIPT: &str = "\
    SELECT write_id, status, reason, processed_at \
    FROM receipts \
    WHERE write_id = $1";

impl ReadStore {
    /// A store over `replicas` (at least one), giving each `attempt_timeout`.
    pub fn new(replicas: Arc<Vec<Replica>>, attempt_timeout: Duration) -> Self {
        let failed_at = replicas.iter().map(|_| AtomicU64::new(0)).collect();
        let went_down = replicas.iter().map(|_| Notify::new()).collect();
        let primary = replicas.iter().map(|_| AtomicBool::new(false)).collect();
        Self {
            inner: Arc::new(Inner {
                replicas,
                next: AtomicUsize::new(0),
                attempt_timeout,
                failed_at,
                went_down,
                primary,
                epoch: Instant::now(),
            }),
        }
    }

    /// Records a background health check of replica `index`: one that is
    /// down is tried last by every read (no request pays for finding out),
    /// one that answers is back in the rotation.
    pub fn mark_health(&self, index: usize, up: bool) {
        if up {
            if let Some(failed_at) = self.inner.failed_at.get(index) {
                failed_at.store(0, Ordering::Relaxed);
            }
        } else {
            self.mark_failed(index);
        }
    }

    /// Records whether source `index` is a primary (the monitor's probe).
    pub fn mark_primary(&self, index: usize, primary: bool) {
        if let Some(flag) = self.inner.primary.get(index) {
            flag.store(primary, Ordering::Relaxed);
        }
    }

    /// Records that replica `index` failed just now; if it was answering
    /// until then, the reads waiting on it give up and try the next one.
    fn mark_failed(&self, index: usize) {
        let Some(failed_at) = self.inner.failed_at.get(index) else {
            return;
        };
        if failed_at.swap(self.now_ms(), Ordering::Relaxed) == 0 {
            self.inner.went_down[index].notify_waiters();
        }
    }

    fn now_ms(&self) -> u64 {
        // At least 1: 0 means "answering".
        u64::try_from(self.inner.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The order in which this read tries the replicas: from the round-robin
    /// index, those answering (or due for a probe, which this read then
    /// claims) first, those that failed lately last.
    fn attempt_order(&self) -> Vec<usize> {
        let n = self.inner.replicas.len();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let window = u64::try_from(TRIED_LAST_FOR.as_millis()).unwrap_or(u64::MAX);
        let (mut first, mut last) = (Vec::with_capacity(n), Vec::new());
        for i in (0..n).map(|offset| (start + offset) % n) {
            let failed_at = &self.inner.failed_at[i];
            let at = failed_at.load(Ordering::Relaxed);
            let usable = at == 0
                || (now.saturating_sub(at) >= window
                    && failed_at
                        .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok());
            if usable {
                first.push(i);
            } else {
                last.push(i);
            }
        }
        first.extend(last);
        first
    }

    /// Runs `query` on one replica after another, in [`Self::attempt_order`],
    /// until one answers in time.
    async fn on_a_replica<T, F, Fut>(&self, what: &'static str, query: F) -> Result<T, StoreError>
    where
        F: Fn(PgPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        for i in self.attempt_order() {
            let replica = &self.inner.replicas[i];
            // Registered before the attempt starts: a failure seen by any
            // read from now on ends this attempt too.
            let went_down = self.inner.went_down[i].notified();
            let attempt =
                tokio::time::timeout(self.inner.attempt_timeout, query(replica.pool.clone()));
            let outcome = tokio::select! {
                biased;
                outcome = attempt => outcome,
                () = went_down => {
                    tracing::warn!(
                        type = "store.failover",
                        replica = %replica.name,
                        query = what,
                        "replica went down during the read"
                    );
                    continue;
                }
            };
            match &outcome {
                Ok(Err(e)) if !is_about_the_rows(e) => self.mark_failed(i),
                Err(_) => self.mark_failed(i),
                Ok(_) => self.inner.failed_at[i].store(0, Ordering::Relaxed),
            }
            match outcome {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if is_about_the_rows(&e) => {
                    return Err(StoreError::CorruptRow(format!("{what}: {e}")));
                }
                Ok(Err(e)) => tracing::warn!(
                    type = "store.failover",
                    replica = %replica.name,
                    query = what,
                    error = %e,
                    "replica read failed"
                ),
                Err(_) => tracing::warn!(
                    type = "store.failover",
                    replica = %replica.name,
                    query = what,
                    timeout_ms = self.inner.attempt_timeout.as_millis() as u64,
                    "replica read timed out"
                ),
            }
        }
        Err(StoreError::Unavailable)
    }
}

impl ReadStore {
    /// Runs `query` on the first replica (in [`Self::attempt_order`],
    /// primaries last) that has replayed the WAL up to `lsn` (a primary
    /// always has), polling
    /// [`FENCE_POLLS`] times. [`StoreError::Behind`] when none had in that
    /// time (never an answer from a source behind), `Unavailable` when none
    /// answered at all.
    async fn on_a_caught_up_replica<T, F, Fut>(
        &self,
        what: &'static str,
        lsn: Lsn,
        query: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(PgPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        // A replica that failed is not asked again by this read: a dead one
        // would otherwise cost the attempt timeout at every poll.
        let mut failed = vec![false; self.inner.replicas.len()];
        for poll in 0..FENCE_POLLS {
            if poll > 0 {
                tokio::time::sleep(FENCE_POLL_EVERY).await;
            }
            let mut order = self.attempt_order();
            // Stable: the replicas in their turn, then the primaries.
            order.sort_by_key(|&i| self.inner.primary[i].load(Ordering::Relaxed));
            for i in order {
                if failed[i] {
                    continue;
                }
                let pool = self.inner.replicas[i].pool.clone();
                let attempt = async {
                    let (in_recovery, replayed): (bool, Option<String>) =
                        sqlx::query_as(REPLAYED).fetch_one(&pool).await?;
                    self.mark_primary(i, !in_recovery);
                    let caught_up = !in_recovery
                        || replayed
                            .and_then(|r| r.parse::<Lsn>().ok())
                            .is_some_and(|r| r >= lsn);
                    if caught_up {
                        query(pool).await.map(Some)
                    } else {
                        Ok(None)
                    }
                };
                match tokio::time::timeout(self.inner.attempt_timeout, attempt).await {
                    Ok(Ok(Some(value))) => {
                        self.inner.failed_at[i].store(0, Ordering::Relaxed);
                        return Ok(value);
                    }
                    // Behind: the next source may have it.
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) if is_about_the_rows(&e) => {
                        return Err(StoreError::CorruptRow(format!("{what}: {e}")));
                    }
                    Ok(Err(_)) | Err(_) => {
                        failed[i] = true;
                        self.mark_failed(i);
                    }
                }
            }
            if failed.iter().all(|f| *f) {
                return Err(StoreError::Unavailable);
            }
        }
        tracing::warn!(
            type = "store.fence_behind",
            query = what,
            lsn = %lsn,
            "no replica has replayed what the read needs"
        );
        Err(StoreError::Behind(lsn))
    }

    /// The primary's WAL position now, from the first source that is a
    /// primary (`pg_current_wal_lsn()`); when none of the sources that
    /// answer is one, the highest WAL position any replica has received
    /// (`pg_last_wal_receive_lsn()`), a lower bound (see
    /// `docs/freshness.md`). `Unavailable` when no source answers.
    pub async fn primary_lsn(&self) -> Result<Lsn, StoreError> {
        let probes = futures_util::future::join_all(self.inner.replicas.iter().map(|replica| {
            let query =
                sqlx::query_as::<_, (bool, Option<String>)>(CURRENT).fetch_one(&replica.pool);
            tokio::time::timeout(self.inner.attempt_timeout, query)
        }))
        .await;
        let mut received: Option<Lsn> = None;
        for probe in probes {
            let Ok(Ok((in_recovery, lsn))) = probe else {
                continue;
            };
            let lsn = lsn.and_then(|l| l.parse::<Lsn>().ok());
            match (in_recovery, lsn) {
                (false, Some(lsn)) => return Ok(lsn),
                (true, Some(lsn)) => received = received.max(Some(lsn)),
                (_, None) => received = received.max(Some(Lsn(0))),
            }
        }
        received.ok_or(StoreError::Unavailable)
    }
}

/// Errors about what came back rather than about the replica: every replica
/// would answer the same, so trying the next one is pointless.
fn is_about_the_rows(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::TypeNotFound { .. }
    )
}

impl Reads for ReadStore {
    async fn record(
        &self,
        addon_id: &AddonId,
        sha256: &Sha256,
    ) -> Result<Option<Record>, StoreError> {
        let row = self
            .on_a_replica("record", move |pool| async move {
                fetch_record(pool, addon_id, sha256).await
            })
            .await?;
        row.map(RecordRow::into_record).transpose()
    }

    async fn lookup(&self, keys: &[(AddonId, Sha256)]) -> Result<Vec<Option<Record>>, StoreError> {
        let rows = self
            .on_a_replica("lookup", move |pool| async move {
                fetch_lookup(pool, keys).await
            })
            .await?;
        lookup_results(keys.len(), rows)
    }

    async fn list(
        &self,
        addon_id: &AddonId,
        after: Option<Sha256>,
        limit: u16,
    ) -> Result<Vec<Record>, StoreError> {
        let after: &[u8] = match &after {
            Some(sha256) => sha256.as_bytes(),
            None => &[],
        };
        let rows = self
            .on_a_replica("list", move |pool| async move {
                fetch_page(pool, addon_id, after, limit).await
            })
            .await?;
        rows.into_iter().map(RecordRow::into_record).collect()
    }

    async fn record_at_least(
        &self,
        addon_id: &AddonId,
        sha256: &Sha256,
        lsn: Lsn,
    ) -> Result<Option<Record>, StoreError> {
        let row = self
            .on_a_caught_up_replica("record_at_least", lsn, move |pool| async move {
                fetch_record(pool, addon_id, sha256).await
            })
            .await?;
        row.map(RecordRow::into_record).transpose()
    }

    async fn lookup_at_least(
        &self,
        keys: &[(AddonId, Sha256)],
        lsn: Lsn,
    ) -> Result<Vec<Option<Record>>, StoreError> {
        let rows = self
            .on_a_caught_up_replica("lookup_at_least", lsn, move |pool| async move {
                fetch_lookup(pool, keys).await
            })
            .await?;
        lookup_results(keys.len(), rows)
    }

    async fn list_at_least(
        &self,
        addon_id: &AddonId,
        after: Option<Sha256>,
        limit: u16,
        lsn: Lsn,
    ) -> Result<Vec<Record>, StoreError> {
        let after: &[u8] = match &after {
            Some(sha256) => sha256.as_bytes(),
            None => &[],
        };
        let rows = self
            .on_a_caught_up_replica("list_at_least", lsn, move |pool| async move {
                fetch_page(pool, addon_id, after, limit).await
            })
            .await?;
        rows.into_iter().map(RecordRow::into_record).collect()
    }

    async fn receipt_at_least(
        &self,
        write_id: &WriteId,
        lsn: Lsn,
    ) -> Result<Option<Receipt>, StoreError> {
        let row = self
            .on_a_caught_up_replica("receipt_at_least", lsn, move |pool| async move {
                sqlx::query_as::<_, ReceiptRow>(RECEIPT)
                    .bind(write_id.as_str())
                    .fetch_optional(&pool)
                    .await
            })
            .await?;
        row.map(ReceiptRow::into_receipt).transpose()
    }

    async fn receipt(&self, write_id: &WriteId) -> Result<Option<Receipt>, StoreError> {
        let row = self
            .on_a_replica("receipt", move |pool| async move {
                sqlx::query_as::<_, ReceiptRow>(RECEIPT)
                    .bind(write_id.as_str())
                    .fetch_optional(&pool)
                    .await
            })
            .await?;
        row.map(ReceiptRow::into_receipt).transpose()
    }
}

/// One record's row, as both the plain and the fenced reads fetch it.
async fn fetch_record(
    pool: PgPool,
    addon_id: &AddonId,
    sha256: &Sha256,
) -> Result<Option<RecordRow>, sqlx::Error> {
    sqlx::query_as::<_, RecordRow>(RECORD)
        .bind(addon_id.as_str())
        .bind(sha256.as_bytes().as_slice())
        .fetch_optional(&pool)
        .await
}

/// A bulk lookup's rows (only the pairs that have a live record).
async fn fetch_lookup(
    pool: PgPool,
    keys: &[(AddonId, Sha256)],
) -> Result<Vec<LookupRow>, sqlx::Error> {
    let ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
    let hashes: Vec<&[u8]> = keys.iter().map(|(_, h)| h.as_bytes().as_slice()).collect();
    sqlx::query_as::<_, LookupRow>(LOOKUP)
        .bind(&ids)
        .bind(&hashes)
        .fetch_all(&pool)
        .await
}

/// A bulk lookup's rows put back in the order of its `n` keys.
fn lookup_results(n: usize, rows: Vec<LookupRow>) -> Result<Vec<Option<Record>>, StoreError> {
    let mut results = vec![None; n];
    for row in rows {
        // WITH ORDINALITY counts from 1.
        let slot = usize::try_from(row.i - 1)
            .ok()
            .and_then(|i| results.get_mut(i))
            .ok_or_else(|| StoreError::CorruptRow(format!("lookup ordinal {}", row.i)))?;
        *slot = Some(row.record.into_record()?);
    }
    Ok(results)
}

/// One listing page's rows (`limit + 1`, to tell whether a next page exists).
async fn fetch_page(
    pool: PgPool,
    addon_id: &AddonId,
    after: &[u8],
    limit: u16,
) -> Result<Vec<RecordRow>, sqlx::Error> {
    sqlx::query_as::<_, RecordRow>(LIST)
        .bind(addon_id.as_str())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&pool)
        .await
}

/// A live record's columns as stored.
#[derive(sqlx::FromRow)]
struct RecordRow {
    addon_id: String,
    sha256: Vec<u8>,
    status: String,
    version: Option<String>,
    registered_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

impl RecordRow {
    fn into_record(self) -> Result<Record, StoreError> {
        let corrupt = |what: &str| {
            StoreError::CorruptRow(format!("record {:?}: invalid {what}", self.addon_id))
        };
        let addon_id = AddonId::parse(&self.addon_id).map_err(|_| corrupt("addon_id"))?;
        let sha256 = <[u8; 32]>::try_from(self.sha256.as_slice())
            .map(Sha256::from_bytes)
            .map_err(|_| corrupt("sha256"))?;
        let status = Status::parse(&self.status).ok_or_else(|| corrupt("status"))?;
        let version = self
            .version
            .as_deref()
            .map(Version::parse)
            .transpose()
            .map_err(|_| corrupt("version"))?;
        Ok(Record {
            addon_id,
            sha256,
            status,
            version,
            registered_at: self.registered_at.map(Timestamp::from_utc),
            updated_at: Timestamp::from_utc(self.updated_at),
        })
    }
}

/// A lookup's row: the item's position and its record.
#[derive(sqlx::FromRow)]
struct LookupRow {
    i: i64,
    #[sqlx(flatten)]
    record: RecordRow,
}

/// A receipt's columns as stored.
#[derive(sqlx::FromRow)]
struct ReceiptRow {
    write_id: String,
    status: String,
    reason: Option<String>,
    processed_at: DateTime<Utc>,
}

impl ReceiptRow {
    fn into_receipt(self) -> Result<Receipt, StoreError> {
        let corrupt = |what: &str| {
            StoreError::CorruptRow(format!("receipt {:?}: invalid {what}", self.write_id))
        };
        Ok(Receipt {
            write_id: WriteId::parse(&self.write_id).map_err(|_| corrupt("write_id"))?,
            status: ReceiptStatus::parse(&self.status).ok_or_else(|| corrupt("status"))?,
            reason: self.reason,
            processed_at: Timestamp::from_utc(self.processed_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str, sha256: Vec<u8>) -> RecordRow {
        RecordRow {
            addon_id: "a@b".into(),
            sha256,
            status: status.into(),
            version: Some("1.0".into()),
            registered_at: None,
            updated_at: DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap(),
        }
    }

    #[test]
    fn rows_decode_into_records_or_say_what_is_wrong() {
        let record = row("revoked", vec![0xab; 32]).into_record().unwrap();
        assert_eq!(record.status, Status::Revoked);
        assert_eq!(record.sha256.to_string(), "ab".repeat(32));
        assert_eq!(record.updated_at.unix_micros(), 1_795_000_000_123_456);
        for bad in [row("deleted", vec![0; 32]), row("registered", vec![0; 31])] {
            assert!(matches!(bad.into_record(), Err(StoreError::CorruptRow(_))));
        }
    }

    fn lazy(name: &str, url: &str) -> Replica {
        Replica {
            name: name.into(),
            pool: sqlx::postgres::PgPoolOptions::new()
                .acquire_timeout(Duration::from_millis(200))
                .connect_lazy(url)
                .unwrap(),
        }
    }

    #[tokio::test]
    async fn reads_waiting_on_a_replica_that_goes_down_move_on_at_once() {
        let replicas: Vec<_> = (1..=2)
            .map(|i| lazy(&format!("replica-{i}"), "postgres://x@127.0.0.1:1/x"))
            .collect();
        let store = ReadStore::new(Arc::new(replicas), Duration::from_secs(10));
        let calls = Arc::new(AtomicUsize::new(0));
        // The first replica never answers (as while sqlx retries a dead
        // one); the second answers at once.
        let read = {
            let (store, calls) = (store.clone(), calls.clone());
            tokio::spawn(async move {
                store
                    .on_a_replica("test", move |_pool| {
                        let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                        async move {
                            if first {
                                tokio::time::sleep(Duration::from_secs(60)).await;
                            }
                            Ok::<_, sqlx::Error>(42)
                        }
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        // Another read (or the health check) finds the first one down.
        store.mark_health(0, false);
        let answer = tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .expect("moved on well before the 10 s attempt timeout")
            .unwrap();
        assert_eq!(answer.unwrap(), 42);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the second replica answered"
        );
    }

    #[tokio::test]
    async fn replicas_that_failed_lately_are_tried_last() {
        let replicas: Vec<_> = (1..=3)
            .map(|i| lazy(&format!("replica-{i}"), "postgres://x@127.0.0.1:1/x"))
            .collect();
        let store = ReadStore {
            inner: Arc::new(Inner {
                failed_at: replicas.iter().map(|_| AtomicU64::new(0)).collect(),
                went_down: replicas.iter().map(|_| Notify::new()).collect(),
                primary: replicas.iter().map(|_| AtomicBool::new(false)).collect(),
                replicas: Arc::new(replicas),
                next: AtomicUsize::new(0),
                attempt_timeout: Duration::from_secs(1),
                // Far enough back that "the window has passed" can be set up.
                epoch: Instant::now().checked_sub(Duration::from_secs(60)).unwrap(),
            }),
        };
        assert_eq!(store.attempt_order(), [0, 1, 2]);
        assert_eq!(store.attempt_order(), [1, 2, 0], "round-robin");
        store.inner.failed_at[0].store(store.now_ms(), Ordering::Relaxed);
        assert_eq!(store.attempt_order(), [2, 1, 0], "tried last");
        assert_eq!(store.attempt_order(), [1, 2, 0]);
        assert_eq!(store.attempt_order(), [1, 2, 0]);
        // Once the window has passed, one read probes it in its turn…
        let long_ago = store.now_ms() - TRIED_LAST_FOR.as_millis() as u64 - 1;
        store.inner.failed_at[0].store(long_ago, Ordering::Relaxed);
        assert_eq!(store.attempt_order(), [2, 0, 1]);
        // …and the others keep trying it last meanwhile.
        assert_eq!(store.attempt_order(), [1, 2, 0]);
    }

    #[tokio::test]
    async fn every_replica_failing_is_unavailable() {
        let dead = |name: &str| lazy(name, "postgres://nobody@127.0.0.1:1/x");
        let store = ReadStore::new(
            Arc::new(vec![dead("replica-1"), dead("replica-2")]),
            Duration::from_secs(1),
        );
        let id = WriteId::parse("w1").unwrap();
        assert!(matches!(
            store.receipt(&id).await,
            Err(StoreError::Unavailable)
        ));
    }
}
