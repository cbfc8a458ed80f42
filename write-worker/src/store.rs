//! Commits a batch of writes to the primary in one transaction: ops folded
//! into records (CONTRACT "How a record is computed"), receipts beside them.
//!
//! Compaction is per pair ([`shared::compaction`]): a pair keeps its recent
//! ops and a compacted base; nothing here depends on the clock, so an op of
//! a pair the service never saw applies however old it is.
//!
//! Concurrency: every transaction first locks the rows of the pairs that
//! exist, then inserts the new ones, each in one global order (addon id, then
//! digest, byte-wise), then writes receipts in write-id order. A new pair
//! another worker inserted meanwhile makes the whole transaction start over
//! (its pair is then locked with the others, in order): locking it in a
//! second round would break the global order and deadlock. Every statement
//! is set-based (`unnest` arrays).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use shared::compaction::{Compacted, MAX_OPS_KEPT, PairHistory, Retention};
use shared::domain::{AddonId, Sha256, Timestamp, Version, WriteId};
use shared::event::Lsn;
use shared::receipt::ReceiptStatus;
use shared::record::{self, RecordState, Status};
use shared::write::{Action, OpKey, Pair, WriteMessage};

use crate::history;

/// A write refused as bad input, to be kept as a `rejected` receipt.
#[derive(Debug, Clone)]
pub struct RejectedWrite {
    /// The id its receipt is kept under.
    pub write_id: WriteId,
    /// Why it was refused.
    pub reason: String,
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub struct Committed {
    /// The receipt status of each write processed now, by write id.
    pub outcomes: HashMap<WriteId, ReceiptStatus>,
    /// Writes skipped because a receipt existed (or an earlier copy was in the batch).
    pub duplicates: usize,
    /// Every pair the batch's valid writes name, for the invalidation event;
    /// duplicates included, so a redelivery after a crash re-announces them.
    pub pairs: Vec<Pair>,
    /// The primary's WAL position after the commit.
    pub lsn: Lsn,
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres failed or refused.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A stored row could not be read back: a bug or a manual edit, never
    /// the fault of the write in hand.
    #[error("stored row unreadable: {0}")]
    CorruptRow(String),
    /// `pg_current_wal_lsn()` answered something that is not an LSN.
    #[error("unreadable WAL position {0:?}")]
    Lsn(String),
}

/// The stored head of a pair: its state, the key of its newest op, and what
/// decides whether its kept ops must be read.
struct Head {
    state: Option<RecordState>,
    last: OpKey,
    /// Unknown (NULL) for rows another tool wrote: their ops are read.
    oldest_op_at: Option<Timestamp>,
    op_count: Option<usize>,
}

impl Head {
    /// Whether `ops` can fold onto the stored state without reading the
    /// kept ops: all newer than the stored ones, and nothing to compact.
    fn takes_in_place(&self, ops: &[NewOp<'_>], retention: Retention) -> bool {
        let Some(newest) = ops.iter().map(|o| &o.key).max() else {
            return true;
        };
        let (Some(oldest), Some(count)) = (self.oldest_op_at, self.op_count) else {
            return false;
        };
        ops.iter().all(|o| o.key > self.last)
            && count + ops.len() <= MAX_OPS_KEPT
            && !retention.compacts(oldest, newest.issued_at)
    }
}

/// A row written by another tool may hold a record but no ops (a seeded
/// table): its head then stands for everything before it.
fn or_head(stored: PairHistory, head: &Head) -> PairHistory {
    if !stored.ops.is_empty() || stored.base.is_some() {
        return stored;
    }
    let base = Compacted {
        through: head.last.clone(),
        state: head.state.clone(),
    };
    PairHistory::new(Some(base), [])
}

/// A new op of the batch, with the write it came from.
#[derive(Clone)]
struct NewOp<'a> {
    key: OpKey,
    action: &'a Action,
    write: usize,
}

/// What to store for a pair after folding.
struct Row<'a> {
    pair: &'a Pair,
    state: Option<RecordState>,
    last: OpKey,
    /// JSON array of ops, in key order: appended to the stored ones, or
    /// replacing them (with `compacted`, `oldest_op_at` and `op_count`).
    ops: String,
    replace_ops: bool,
    compacted: Option<String>,
    oldest_op_at: Timestamp,
    /// Ops kept, or, when appending, ops appended.
    op_count: usize,
}

/// How one attempt at the transaction ended.
enum Attempt {
    Committed(Committed),
    /// A new pair was inserted by another worker meanwhile: start over.
    Raced,
}

/// Commits `writes` (valid, in delivery order) and `rejected` receipts in one
/// transaction, then reads the WAL position.
pub async fn commit(
    pool: &PgPool,
    retention: Retention,
    writes: &[WriteMessage],
    rejected: &[RejectedWrite],
) -> Result<Committed, StoreError> {
    loop {
        if let Attempt::Committed(mut committed) =
            attempt(pool, retention, writes, rejected).await?
        {
            committed.lsn = current_lsn(pool).await?;
            return Ok(committed);
        }
    }
}

async fn attempt(
    pool: &PgPool,
    retention: Retention,
    writes: &[WriteMessage],
    rejected: &[RejectedWrite],
) -> Result<Attempt, StoreError> {
    let mut tx = pool.begin().await?;
    let mut committed = Committed {
        pairs: distinct_pairs(writes),
        ..Committed::default()
    };

    let fresh = fresh_writes(&mut tx, writes, &mut committed.duplicates).await?;
    let mut by_pair: BTreeMap<&Pair, Vec<NewOp<'_>>> = BTreeMap::new();
    for &w in &fresh {
        for (key, op) in writes[w].keyed_ops() {
            by_pair.entry(&op.pair).or_default().push(NewOp {
                key,
                action: &op.action,
                write: w,
            });
        }
    }
    let pairs: Vec<&Pair> = by_pair.keys().copied().collect();

    let heads = lock_heads(&mut tx, &pairs).await?;
    let slow: Vec<&Pair> = pairs
        .iter()
        .copied()
        .filter(|p| {
            heads
                .get(*p)
                .is_some_and(|h| !h.takes_in_place(&by_pair[*p], retention))
        })
        .collect();
    let mut histories = load_histories(&mut tx, &slow).await?;
    let (mut updates, mut inserts) = (Vec::new(), Vec::new());
    let mut applied = vec![false; writes.len()];
    for &pair in &pairs {
        let ops = &by_pair[pair];
        let head = heads.get(pair);
        for w in newest_writes(ops, head.map(|h| &h.last)) {
            applied[w] = true;
        }
        let row = match (head, histories.remove(pair)) {
            (Some(head), None) => fold_onto(pair, ops, head),
            (Some(head), Some(stored)) => refold(pair, ops, or_head(stored, head), retention),
            (None, _) => refold(pair, ops, PairHistory::default(), retention),
        };
        if head.is_some() {
            updates.push(row)
        } else {
            inserts.push(row)
        }
    }
    update_rows(&mut tx, &updates).await?;
    if insert_rows(&mut tx, &inserts).await? < inserts.len() {
        return Ok(Attempt::Raced);
    }

    for &w in &fresh {
        let status = if applied[w] {
            ReceiptStatus::Applied
        } else {
            ReceiptStatus::Superseded
        };
        committed
            .outcomes
            .insert(writes[w].write_id.clone(), status);
    }
    insert_receipts(&mut tx, &committed.outcomes, rejected).await?;
    tx.commit().await?;
    Ok(Attempt::Committed(committed))
}

/// The primary's WAL position now: at or after every commit made so far.
pub async fn current_lsn(pool: &PgPool) -> Result<Lsn, StoreError> {
    let text: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?;
    text.parse().map_err(|_| StoreError::Lsn(text))
}

fn distinct_pairs(writes: &[WriteMessage]) -> Vec<Pair> {
    let mut seen = HashSet::new();
    writes
        .iter()
        .flat_map(|w| &w.ops)
        .filter(|op| seen.insert(&op.pair))
        .map(|op| op.pair.clone())
        .collect()
}

/// Indexes of the writes to apply now: no receipt yet, first copy in the batch.
async fn fresh_writes(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[WriteMessage],
    duplicates: &mut usize,
) -> Result<Vec<usize>, sqlx::Error> {
    let ids: Vec<&str> = writes.iter().map(|w| w.write_id.as_str()).collect();
    let known: HashSet<String> =
        sqlx::query_scalar("SELECT write_id FROM receipts WHERE write_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
    let mut seen = HashSet::new();
    let fresh: Vec<usize> = (0..writes.len())
        .filter(|&i| !known.contains(ids[i]) && seen.insert(ids[i]))
        .collect();
    *duplicates += writes.len() - fresh.len();
    Ok(fresh)
}

/// The writes with an op that was the newest of its pair when processed (in
/// delivery order): their receipt says `applied`.
fn newest_writes(ops: &[NewOp<'_>], stored_last: Option<&OpKey>) -> Vec<usize> {
    let mut newest = stored_last;
    let mut writes = Vec::new();
    for op in ops {
        if newest.is_none_or(|n| op.key > *n) {
            writes.push(op.write);
            newest = Some(&op.key);
        }
    }
    writes
}

/// The fast path: every new op is newer than the stored ones and nothing is
/// due for compaction, so they fold onto the stored state and are appended.
fn fold_onto<'a>(pair: &'a Pair, ops: &[NewOp<'_>], head: &Head) -> Row<'a> {
    let mut sorted: Vec<&NewOp<'_>> = ops.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let state = sorted.iter().fold(head.state.clone(), |s, o| {
        record::apply(s, o.action, o.key.issued_at)
    });
    let last = sorted.last().map_or(head.last.clone(), |o| o.key.clone());
    Row {
        pair,
        state,
        last,
        ops: history::encode(sorted.iter().map(|o| (&o.key, o.action))),
        replace_ops: false,
        compacted: None,
        // Not written when appending (the stored one stays); known anyway,
        // as the fast path is taken only when it is.
        oldest_op_at: head.oldest_op_at.unwrap_or(head.last.issued_at),
        op_count: sorted.len(),
    }
}

/// A new pair, a late op or a pair due for compaction: the new ops join the
/// pair's history, which is compacted and folded again.
fn refold<'a>(
    pair: &'a Pair,
    ops: &[NewOp<'_>],
    mut history: PairHistory,
    retention: Retention,
) -> Row<'a> {
    for op in ops {
        // An op below the compacted base is superseded: not stored.
        history.offer(op.key.clone(), op.action.clone());
    }
    history.compact(retention);
    // A pair always keeps its newest op, so both keys exist; the fallbacks
    // only satisfy the types.
    let last = history
        .newest()
        .cloned()
        .unwrap_or_else(|| ops[0].key.clone());
    let oldest_op_at = history
        .ops
        .keys()
        .next()
        .map_or(last.issued_at, |k| k.issued_at);
    Row {
        pair,
        state: history.state(),
        last,
        ops: history::encode(history.ops.iter()),
        replace_ops: true,
        compacted: history.base.as_ref().map(history::encode_compacted),
        oldest_op_at,
        op_count: history.ops.len(),
    }
}

async fn lock_heads(
    conn: &mut PgConnection,
    pairs: &[&Pair],
) -> Result<HashMap<Pair, Head>, StoreError> {
    let (ids, hashes) = key_arrays(pairs);
    let rows: Vec<HeadRow> = sqlx::query_as(
        "SELECT r.addon_id, r.sha256, r.status, r.version, r.registered_at, r.updated_at, \
                r.last_write_id, r.last_op_index, r.oldest_op_at, r.op_count \
         FROM records r \
         JOIN unnest($1::text[], $2::bytea[]) AS k(addon_id, sha256) \
           ON r.addon_id = k.addon_id AND r.sha256 = k.sha256 \
         ORDER BY r.addon_id, r.sha256 \
         FOR UPDATE OF r",
    )
    .bind(&ids)
    .bind(&hashes)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter().map(HeadRow::into_head).collect()
}

/// A record's columns other than its ops.
#[derive(sqlx::FromRow)]
struct HeadRow {
    addon_id: String,
    sha256: Vec<u8>,
    status: String,
    version: Option<String>,
    registered_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    last_write_id: String,
    last_op_index: i32,
    oldest_op_at: Option<DateTime<Utc>>,
    op_count: Option<i32>,
}

impl HeadRow {
    fn into_head(self) -> Result<(Pair, Head), StoreError> {
        let pair = stored_pair(&self.addon_id, &self.sha256)?;
        let updated_at = Timestamp::from_utc(self.updated_at);
        let state = Status::parse(&self.status).map(|status| RecordState {
            status,
            version: self.version.and_then(|v| Version::parse(&v).ok()),
            registered_at: self.registered_at.map(Timestamp::from_utc),
            updated_at,
        });
        let last = OpKey {
            issued_at: updated_at,
            write_id: WriteId::parse(&self.last_write_id)
                .map_err(|_| corrupt(&pair, "invalid last_write_id"))?,
            index: self.last_op_index as u32,
        };
        let head = Head {
            state,
            last,
            oldest_op_at: self.oldest_op_at.map(Timestamp::from_utc),
            op_count: self.op_count.and_then(|n| usize::try_from(n).ok()),
        };
        Ok((pair, head))
    }
}

async fn load_histories(
    conn: &mut PgConnection,
    pairs: &[&Pair],
) -> Result<HashMap<Pair, PairHistory>, StoreError> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    let (ids, hashes) = key_arrays(pairs);
    let rows: Vec<(String, Vec<u8>, String, Option<String>)> = sqlx::query_as(
        "SELECT r.addon_id, r.sha256, r.ops::text, r.compacted::text \
         FROM records r \
         JOIN unnest($1::text[], $2::bytea[]) AS k(addon_id, sha256) \
           ON r.addon_id = k.addon_id AND r.sha256 = k.sha256",
    )
    .bind(&ids)
    .bind(&hashes)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(addon_id, sha256, ops, compacted)| {
            let pair = stored_pair(&addon_id, &sha256)?;
            let ops = history::decode(&ops).map_err(|e| corrupt(&pair, e))?;
            let base = compacted
                .map(|c| history::decode_compacted(&c))
                .transpose()
                .map_err(|e| corrupt(&pair, e))?;
            Ok((pair, PairHistory::new(base, ops)))
        })
        .collect()
}

/// Column arrays of rows, for `unnest`.
#[derive(Default)]
struct RowArrays<'a> {
    addon_ids: Vec<&'a str>,
    hashes: Vec<&'a [u8]>,
    statuses: Vec<&'static str>,
    versions: Vec<Option<&'a str>>,
    registered_ats: Vec<Option<DateTime<Utc>>>,
    updated_ats: Vec<DateTime<Utc>>,
    last_write_ids: Vec<&'a str>,
    last_op_indexes: Vec<i32>,
    ops: Vec<&'a str>,
    replace_ops: Vec<bool>,
    compacted: Vec<Option<&'a str>>,
    oldest_op_ats: Vec<DateTime<Utc>>,
    op_counts: Vec<i32>,
}

impl<'a> RowArrays<'a> {
    fn of(rows: &'a [Row<'a>]) -> Self {
        let mut a = Self::default();
        for row in rows {
            a.addon_ids.push(row.pair.addon_id.as_str());
            a.hashes.push(row.pair.sha256.as_bytes());
            a.statuses
                .push(row.state.as_ref().map_or("deleted", |s| s.status.as_str()));
            a.versions.push(
                row.state
                    .as_ref()
                    .and_then(|s| s.version.as_ref().map(|v| v.as_str())),
            );
            a.registered_ats.push(
                row.state
                    .as_ref()
                    .and_then(|s| s.registered_at.map(|t| t.as_utc())),
            );
            a.updated_ats.push(row.last.issued_at.as_utc());
            a.last_write_ids.push(row.last.write_id.as_str());
            a.last_op_indexes.push(row.last.index as i32);
            a.ops.push(&row.ops);
            a.replace_ops.push(row.replace_ops);
            a.compacted.push(row.compacted.as_deref());
            a.oldest_op_ats.push(row.oldest_op_at.as_utc());
            // Bounded by MAX_OPS_KEPT (kept) or a message's 10,000 ops (appended).
            a.op_counts
                .push(i32::try_from(row.op_count).unwrap_or(i32::MAX));
        }
        a
    }
}

async fn update_rows(conn: &mut PgConnection, rows: &[Row<'_>]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let a = RowArrays::of(rows);
    sqlx::query(
        "UPDATE records r SET status = u.status, version = u.version, registered_at = u.registered_at, \
                updated_at = u.updated_at, last_write_id = u.last_write_id, last_op_index = u.last_op_index, \
                ops = CASE WHEN u.replace_ops THEN u.ops::jsonb ELSE r.ops || u.ops::jsonb END, \
                compacted = CASE WHEN u.replace_ops THEN u.compacted::jsonb ELSE r.compacted END, \
                oldest_op_at = CASE WHEN u.replace_ops THEN u.oldest_op_at ELSE r.oldest_op_at END, \
                op_count = CASE WHEN u.replace_ops THEN u.op_count ELSE r.op_count + u.op_count END \
         FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], \
                     $7::text[], $8::int4[], $9::text[], $10::bool[], $11::text[], $12::timestamptz[], $13::int4[]) \
              AS u(addon_id, sha256, status, version, registered_at, updated_at, last_write_id, last_op_index, ops, \
                   replace_ops, compacted, oldest_op_at, op_count) \
         WHERE r.addon_id = u.addon_id AND r.sha256 = u.sha256",
    )
    .bind(&a.addon_ids)
    .bind(&a.hashes)
    .bind(&a.statuses)
    .bind(&a.versions)
    .bind(&a.registered_ats)
    .bind(&a.updated_ats)
    .bind(&a.last_write_ids)
    .bind(&a.last_op_indexes)
    .bind(&a.ops)
    .bind(&a.replace_ops)
    .bind(&a.compacted)
    .bind(&a.oldest_op_ats)
    .bind(&a.op_counts)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Inserts new pairs, in key order; answers how many were inserted (fewer
/// when another worker inserted one meanwhile).
async fn insert_rows(conn: &mut PgConnection, rows: &[Row<'_>]) -> Result<usize, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let a = RowArrays::of(rows);
    let inserted = sqlx::query(
        "INSERT INTO records (addon_id, sha256, status, version, registered_at, updated_at, \
                              last_write_id, last_op_index, ops, compacted, oldest_op_at, op_count) \
         SELECT addon_id, sha256, status, version, registered_at, updated_at, last_write_id, last_op_index, \
                ops::jsonb, compacted::jsonb, oldest_op_at, op_count \
         FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], \
                     $7::text[], $8::int4[], $9::text[], $10::text[], $11::timestamptz[], $12::int4[]) \
              AS u(addon_id, sha256, status, version, registered_at, updated_at, last_write_id, last_op_index, \
                   ops, compacted, oldest_op_at, op_count) \
         ON CONFLICT (addon_id, sha256) DO NOTHING",
    )
    .bind(&a.addon_ids)
    .bind(&a.hashes)
    .bind(&a.statuses)
    .bind(&a.versions)
    .bind(&a.registered_ats)
    .bind(&a.updated_ats)
    .bind(&a.last_write_ids)
    .bind(&a.last_op_indexes)
    .bind(&a.ops)
    .bind(&a.compacted)
    .bind(&a.oldest_op_ats)
    .bind(&a.op_counts)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(usize::try_from(inserted).unwrap_or(usize::MAX))
}

async fn insert_receipts(
    conn: &mut PgConnection,
    outcomes: &HashMap<WriteId, ReceiptStatus>,
    rejected: &[RejectedWrite],
) -> Result<(), sqlx::Error> {
    // In write-id order, like every other lock this transaction takes: two
    // workers inserting the same receipts (a redelivery) then can't deadlock.
    let mut receipts: Vec<(&str, &str, Option<&str>)> = outcomes
        .iter()
        .map(|(id, status)| (id.as_str(), status.as_str(), None))
        .chain(rejected.iter().map(|r| {
            (
                r.write_id.as_str(),
                ReceiptStatus::Rejected.as_str(),
                Some(r.reason.as_str()),
            )
        }))
        .collect();
    if receipts.is_empty() {
        return Ok(());
    }
    // One receipt per id: where a valid write and a bad message share an id
    // in one batch, the write's outcome wins (the insert keeps the first).
    receipts.sort_by_key(|r| (r.0, r.1 == ReceiptStatus::Rejected.as_str()));
    let ids: Vec<&str> = receipts.iter().map(|r| r.0).collect();
    let statuses: Vec<&str> = receipts.iter().map(|r| r.1).collect();
    let reasons: Vec<Option<&str>> = receipts.iter().map(|r| r.2).collect();
    // An existing receipt never changes (CONTRACT "Idempotent").
    sqlx::query(
        "INSERT INTO receipts (write_id, status, reason) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
         ON CONFLICT (write_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&reasons)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn key_arrays<'a>(pairs: &[&'a Pair]) -> (Vec<&'a str>, Vec<&'a [u8]>) {
    pairs
        .iter()
        .map(|p| (p.addon_id.as_str(), p.sha256.as_bytes().as_slice()))
        .unzip()
}

fn stored_pair(addon_id: &str, sha256: &[u8]) -> Result<Pair, StoreError> {
    let unreadable = || StoreError::CorruptRow(format!("pair key {addon_id:?}"));
    let bytes: [u8; 32] = sha256.try_into().map_err(|_| unreadable())?;
    let addon_id = AddonId::parse(addon_id).map_err(|_| unreadable())?;
    Ok(Pair {
        addon_id,
        sha256: Sha256::from_bytes(bytes),
    })
}

fn corrupt(pair: &Pair, what: impl std::fmt::Display) -> StoreError {
    StoreError::CorruptRow(format!("{} {}: {what}", pair.addon_id, pair.sha256))
}
