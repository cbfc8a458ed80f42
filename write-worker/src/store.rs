//! Commits a batch of writes to the primary in one transaction: ops folded
//! into records (CONTRACT "How a record is computed"), receipts beside them.
//!
//! Concurrency: rows of existing pairs are locked in one global order (addon
//! id, then digest, byte-wise); new pairs are inserted with ON CONFLICT DO
//! NOTHING, and a pair another worker inserted meanwhile goes round again,
//! now locked. Every statement is set-based (`unnest` arrays).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

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

/// The stored head of a pair: its state and the key of its newest op.
struct Head {
    state: Option<RecordState>,
    last: OpKey,
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
    /// JSON array of ops: appended to the stored ones, or replacing them.
    ops: String,
    replace_ops: bool,
}

/// Commits `writes` (valid, in delivery order) and `rejected` receipts in one
/// transaction, then reads the WAL position.
pub async fn commit(
    pool: &PgPool,
    writes: &[WriteMessage],
    rejected: &[RejectedWrite],
) -> Result<Committed, StoreError> {
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

    // Per pair, the writes whose op was the newest of it; recomputed when a
    // pair goes round again.
    let mut newest: BTreeMap<&Pair, Vec<usize>> = BTreeMap::new();
    let mut pending: Vec<&Pair> = by_pair.keys().copied().collect();
    while !pending.is_empty() {
        let heads = lock_heads(&mut tx, &pending).await?;
        let late: Vec<&Pair> = pending
            .iter()
            .copied()
            .filter(|p| {
                heads
                    .get(*p)
                    .is_some_and(|h| by_pair[*p].iter().any(|op| op.key <= h.last))
            })
            .collect();
        let mut histories = load_histories(&mut tx, &late).await?;
        let (mut updates, mut inserts) = (Vec::new(), Vec::new());
        // Read after the heads: a pair the janitor purged is then seen gone
        // together with the horizon its purge raised.
        let horizon = if heads.len() < pending.len() {
            Some(compaction_horizon(&mut tx).await?)
        } else {
            None
        };
        for &pair in &pending {
            let head = heads.get(pair);
            let kept: Vec<NewOp<'_>>;
            let ops = match (head, horizon) {
                // An unknown pair's ops at or before the horizon are older than
                // compacted state: superseded, not stored.
                (None, Some(horizon)) => {
                    kept = by_pair[pair]
                        .iter()
                        .filter(|o| o.key.issued_at > horizon)
                        .cloned()
                        .collect();
                    if kept.is_empty() {
                        newest.remove(pair);
                        continue;
                    }
                    &kept
                }
                _ => &by_pair[pair],
            };
            newest.insert(pair, newest_writes(ops, head.map(|h| &h.last)));
            // Grouping gives every pair at least one op.
            let Some(last) = ops.iter().map(|o| &o.key).max().cloned() else {
                continue;
            };
            let row = match (head, histories.remove(pair)) {
                (None, _) => fold_new(pair, ops, last),
                (Some(_), Some(stored)) => refold(pair, ops, stored, last),
                (Some(head), None) => fold_onto(pair, ops, head, last),
            };
            if head.is_some() {
                updates.push(row)
            } else {
                inserts.push(row)
            }
        }
        update_rows(&mut tx, &updates).await?;
        let inserted = insert_rows(&mut tx, &inserts).await?;
        // Pairs another worker inserted since they were looked up go round again.
        pending = inserts
            .iter()
            .map(|r| r.pair)
            .filter(|p| !inserted.contains(*p))
            .collect();
    }

    let mut applied = vec![false; writes.len()];
    newest.values().flatten().for_each(|&w| applied[w] = true);
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
    committed.lsn = current_lsn(pool).await?;
    Ok(committed)
}

/// The janitor's compaction horizon (see migrations/*_compaction.sql).
async fn compaction_horizon(conn: &mut PgConnection) -> Result<Timestamp, sqlx::Error> {
    let horizon: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT CASE WHEN horizon = '-infinity' THEN NULL ELSE horizon END FROM compaction",
    )
    .fetch_one(conn)
    .await?;
    Ok(horizon.map_or(
        Timestamp::from_utc(DateTime::<Utc>::MIN_UTC),
        Timestamp::from_utc,
    ))
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

/// A pair seen for the first time.
fn fold_new<'a>(pair: &'a Pair, ops: &[NewOp<'_>], last: OpKey) -> Row<'a> {
    Row {
        pair,
        state: record::fold(ops.iter().map(|o| (&o.key, o.action))),
        last,
        ops: history::encode(ops.iter().map(|o| (&o.key, o.action))),
        replace_ops: true,
    }
}

/// The fast path: every new op is newer than the stored ones, so they fold
/// onto the stored state and are appended.
fn fold_onto<'a>(pair: &'a Pair, ops: &[NewOp<'_>], head: &Head, last: OpKey) -> Row<'a> {
    let mut sorted: Vec<&NewOp<'_>> = ops.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let state = sorted.iter().fold(head.state.clone(), |s, o| {
        record::apply(s, o.action, o.key.issued_at)
    });
    Row {
        pair,
        state,
        last,
        ops: history::encode(ops.iter().map(|o| (&o.key, o.action))),
        replace_ops: false,
    }
}

/// A late op: the pair is folded again from all its ops.
fn refold<'a>(
    pair: &'a Pair,
    ops: &[NewOp<'_>],
    stored: Vec<(OpKey, Action)>,
    newest_new: OpKey,
) -> Row<'a> {
    let mut all: BTreeMap<&OpKey, &Action> = stored.iter().map(|(k, a)| (k, a)).collect();
    for op in ops {
        all.entry(&op.key).or_insert(op.action);
    }
    let last = all.keys().next_back().map_or(newest_new, |k| (*k).clone());
    Row {
        pair,
        state: record::fold(all.iter().map(|(k, a)| (*k, *a))),
        last,
        ops: history::encode(all),
        replace_ops: true,
    }
}

async fn lock_heads(
    conn: &mut PgConnection,
    pairs: &[&Pair],
) -> Result<HashMap<Pair, Head>, StoreError> {
    let (ids, hashes) = key_arrays(pairs);
    let rows: Vec<HeadRow> = sqlx::query_as(
        "SELECT r.addon_id, r.sha256, r.status, r.version, r.registered_at, r.updated_at, \
                r.last_write_id, r.last_op_index \
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
        Ok((pair, Head { state, last }))
    }
}

async fn load_histories(
    conn: &mut PgConnection,
    pairs: &[&Pair],
) -> Result<HashMap<Pair, Vec<(OpKey, Action)>>, StoreError> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    let (ids, hashes) = key_arrays(pairs);
    let rows: Vec<(String, Vec<u8>, String)> = sqlx::query_as(
        "SELECT r.addon_id, r.sha256, r.ops::text \
         FROM records r \
         JOIN unnest($1::text[], $2::bytea[]) AS k(addon_id, sha256) \
           ON r.addon_id = k.addon_id AND r.sha256 = k.sha256",
    )
    .bind(&ids)
    .bind(&hashes)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(addon_id, sha256, ops)| {
            let pair = stored_pair(&addon_id, &sha256)?;
            let ops = history::decode(&ops).map_err(|e| corrupt(&pair, e))?;
            Ok((pair, ops))
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
                ops = CASE WHEN u.replace_ops THEN u.ops::jsonb ELSE r.ops || u.ops::jsonb END \
         FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], \
                     $7::text[], $8::int4[], $9::text[], $10::bool[]) \
              AS u(addon_id, sha256, status, version, registered_at, updated_at, last_write_id, last_op_index, ops, replace_ops) \
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
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Inserts new pairs, in key order; answers those actually inserted.
async fn insert_rows(
    conn: &mut PgConnection,
    rows: &[Row<'_>],
) -> Result<HashSet<Pair>, StoreError> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let a = RowArrays::of(rows);
    let inserted: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "INSERT INTO records (addon_id, sha256, status, version, registered_at, updated_at, \
                              last_write_id, last_op_index, ops) \
         SELECT addon_id, sha256, status, version, registered_at, updated_at, last_write_id, last_op_index, ops::jsonb \
         FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], \
                     $7::text[], $8::int4[], $9::text[]) \
              AS u(addon_id, sha256, status, version, registered_at, updated_at, last_write_id, last_op_index, ops) \
         ON CONFLICT (addon_id, sha256) DO NOTHING \
         RETURNING addon_id, sha256",
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
    .fetch_all(&mut *conn)
    .await?;
    inserted
        .iter()
        .map(|(id, sha)| stored_pair(id, sha))
        .collect()
}

async fn insert_receipts(
    conn: &mut PgConnection,
    outcomes: &HashMap<WriteId, ReceiptStatus>,
    rejected: &[RejectedWrite],
) -> Result<(), sqlx::Error> {
    let mut ids: Vec<&str> = Vec::with_capacity(outcomes.len() + rejected.len());
    let mut statuses: Vec<&str> = Vec::with_capacity(ids.capacity());
    let mut reasons: Vec<Option<&str>> = Vec::with_capacity(ids.capacity());
    for (id, status) in outcomes {
        ids.push(id.as_str());
        statuses.push(status.as_str());
        reasons.push(None);
    }
    for r in rejected {
        ids.push(r.write_id.as_str());
        statuses.push(ReceiptStatus::Rejected.as_str());
        reasons.push(Some(&r.reason));
    }
    if ids.is_empty() {
        return Ok(());
    }
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
