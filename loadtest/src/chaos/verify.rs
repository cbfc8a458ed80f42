//! After each scenario, every write of its plans checked against the
//! contract, as `loadtest writes` checks (`crate::check`): each confirmed
//! valid write has a receipt and every op of it is kept exactly once in its
//! pair's ops; each pair's row is the fold of the ops sent
//! ([`crate::mix::expected`]); no valid write is in the dead queue; every
//! poison message is, with its body and a reason of the parser's code, and
//! has a `rejected` receipt.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use sqlx::PgPool;

use shared::topology::Topology;

use crate::BenchError;
use crate::mix::{self, Plan};

/// How long dead letters may trail the last receipt.
const DEAD_LETTER_GRACE: Duration = Duration::from_secs(15);
/// Examples of each failure printed.
const EXAMPLES: usize = 5;

/// What went wrong; all zero on a correct stack.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Counts {
    /// Distinct valid writes the broker confirmed.
    pub writes_sent: usize,
    /// Poison messages the broker confirmed.
    pub poison_sent: usize,
    /// Confirmed valid writes without a receipt or with an op not kept.
    pub lost: usize,
    /// Writes with an op kept more than once.
    pub applied_twice: usize,
    /// Valid writes found in the dead queue.
    pub valid_dead_lettered: usize,
    /// Poison messages not dead-lettered with their body and reason, or
    /// without a `rejected` receipt.
    pub poison_missed: usize,
    /// Pairs whose row differs from the fold of the ops sent.
    pub records_differing: usize,
    /// Messages the broker never confirmed before the run's bound.
    pub unconfirmed: usize,
}

impl Counts {
    /// Whether the contract broke.
    pub fn broken(&self) -> bool {
        self.lost
            + self.applied_twice
            + self.valid_dead_lettered
            + self.poison_missed
            + self.records_differing
            > 0
    }
}

/// One plan as published.
pub struct Sent<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// The `message_id`s the broker confirmed.
    pub confirmed: &'a HashSet<String>,
}

/// Waits until every confirmed message of `sent` has a receipt, or `limit`
/// passes; answers whether they all arrived.
pub async fn wait_for_receipts(owner: &PgPool, sent: &[Sent<'_>], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    for s in sent {
        let tag = format!("{}-%", s.plan.run);
        let wanted = s.confirmed.len() as i64;
        loop {
            let done: Option<i64> =
                sqlx::query_scalar("SELECT count(*) FROM receipts WHERE write_id LIKE $1")
                    .bind(&tag)
                    .fetch_one(owner)
                    .await
                    .ok();
            if done.is_some_and(|d| d >= wanted) {
                break;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    true
}

pub use crate::writes::DeadLetter;

/// Takes every dead letter out of the dead queue (the runner owns it:
/// each scenario starts with it empty), waiting up to a grace period for
/// `expected` of them.
pub async fn take_dead_letters(
    url: &str,
    topology: &Topology,
    expected: usize,
) -> Result<Vec<DeadLetter>, BenchError> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let grace = Instant::now() + DEAD_LETTER_GRACE;
    let mut ready;
    loop {
        ready = channel
            .queue_declare(
                topology.dead_queue.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await?
            .message_count() as usize;
        if ready >= expected || Instant::now() > grace {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut letters = Vec::with_capacity(ready);
    if ready > 0 {
        let mut consumer = channel
            .basic_consume(
                topology.dead_queue.as_str().into(),
                "chaos-check".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        while letters.len() < ready {
            let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
            else {
                break;
            };
            letters.push(DeadLetter::of(delivery));
        }
    }
    let _ = conn.close(0, "checked".into()).await;
    Ok(letters)
}

type RowTuple = (
    String,
    String,
    String,
    Option<String>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    String,
);

/// Checks the plans against the store and the dead letters.
pub async fn check(
    owner: &PgPool,
    sent: &[Sent<'_>],
    letters: &[DeadLetter],
) -> Result<Counts, BenchError> {
    let mut counts = Counts::default();
    let mut examples: Vec<String> = Vec::new();
    let dead: HashMap<&str, Vec<&DeadLetter>> =
        letters.iter().fold(HashMap::new(), |mut map, l| {
            if let Some(id) = l.message_id.as_deref() {
                map.entry(id).or_default().push(l);
            }
            map
        });
    for s in sent {
        let plan = s.plan;
        let tag = format!("{}-%", plan.run);
        let receipts: HashMap<String, String> = sqlx::query_as::<_, (String, String)>(
            "SELECT write_id, status FROM receipts WHERE write_id LIKE $1",
        )
        .bind(&tag)
        .fetch_all(owner)
        .await?
        .into_iter()
        .collect();
        let rows: HashMap<(String, String), RowTuple> = sqlx::query_as::<_, RowTuple>(
            "SELECT addon_id, encode(sha256, 'hex'), status, version, registered_at, updated_at, \
             ops::text FROM records WHERE addon_id LIKE $1",
        )
        .bind(&tag)
        .fetch_all(owner)
        .await?
        .into_iter()
        .map(|r| ((r.0.clone(), r.1.clone()), r))
        .collect();

        let confirmed = |id: &str| s.confirmed.contains(id);
        let mut lost: HashSet<usize> = HashSet::new();
        let mut twice: HashSet<usize> = HashSet::new();
        for (w, write) in plan.writes.iter().enumerate() {
            let id = write.message.write_id.as_str();
            if !confirmed(id) {
                counts.unconfirmed += 1;
                continue;
            }
            counts.writes_sent += 1;
            match receipts.get(id).map(String::as_str) {
                None => {
                    lost.insert(w);
                }
                Some("rejected") => {
                    lost.insert(w);
                    examples.push(format!("{id}: a valid write rejected"));
                }
                Some(_) => {}
            }
            if dead.contains_key(id) {
                counts.valid_dead_lettered += 1;
                examples.push(format!("{id}: a valid write dead-lettered"));
            }
        }
        for p in &plan.poison {
            if !confirmed(&p.message_id) {
                counts.unconfirmed += 1;
                continue;
            }
            counts.poison_sent += 1;
            let prefix = format!("{}: ", p.code);
            let lettered = dead.get(p.message_id.as_str()).is_some_and(|found| {
                found.iter().any(|l| {
                    l.body == p.body && l.reason.as_deref().is_some_and(|r| r.starts_with(&prefix))
                })
            });
            let rejected = receipts.get(&p.message_id).map(String::as_str) == Some("rejected");
            if !(lettered && rejected) {
                counts.poison_missed += 1;
                examples.push(format!(
                    "{}: poison dead-lettered {lettered}, rejected receipt {rejected}",
                    p.message_id
                ));
            }
        }

        let by_pair = plan.ops_by_pair();
        for (pair, ops) in &by_pair {
            // Only pairs whose every write was confirmed can be compared.
            if ops
                .values()
                .any(|(_, w)| !confirmed(plan.writes[*w].message.write_id.as_str()))
            {
                continue;
            }
            let Some(row) = rows.get(pair) else {
                lost.extend(ops.values().map(|(_, w)| *w));
                examples.push(format!("{pair:?}: no row"));
                continue;
            };
            let kept = kept_keys(&row.6);
            for (key, (_, w)) in ops {
                let k = (
                    key.issued_at.unix_micros(),
                    key.write_id.as_str().to_string(),
                    key.index,
                );
                match kept.get(&k).copied().unwrap_or(0) {
                    0 => {
                        lost.insert(*w);
                    }
                    1 => {}
                    _ => {
                        twice.insert(*w);
                    }
                }
            }
            let want = mix::expected(ops);
            let differs = match &want {
                None => row.2 != "deleted",
                Some(state) => {
                    (
                        state.status.as_str(),
                        state.version.as_ref().map(|v| v.as_str()),
                        state.registered_at.map(|t| t.as_utc()),
                        state.updated_at.as_utc(),
                    ) != (row.2.as_str(), row.3.as_deref(), row.4, row.5)
                }
            };
            if differs {
                counts.records_differing += 1;
                examples.push(format!(
                    "{pair:?}: stored {:?}, fold {want:?}",
                    (row.2.as_str(), row.3.as_deref(), row.4, row.5)
                ));
            }
        }
        // A row of the run that no valid write touched: a rejected
        // message's op leaked.
        for pair in rows.keys().filter(|k| !by_pair.contains_key(*k)) {
            counts.records_differing += 1;
            examples.push(format!("{pair:?}: a record no valid write touched"));
        }
        for w in &lost {
            examples.push(format!("{}: lost", plan.writes[*w].message.write_id));
        }
        for w in &twice {
            examples.push(format!(
                "{}: an op kept twice",
                plan.writes[*w].message.write_id
            ));
        }
        counts.lost += lost.len();
        counts.applied_twice += twice.len();
    }
    for e in examples.iter().take(EXAMPLES * 4) {
        eprintln!("chaos check: {e}");
    }
    Ok(counts)
}

/// How often each op key (`t`, `w`, `i`) appears in a row's kept ops.
fn kept_keys(ops: &str) -> HashMap<(i64, String, u32), usize> {
    let mut seen = HashMap::new();
    if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(ops) {
        for item in items {
            let key = (
                item["t"].as_i64(),
                item["w"].as_str().map(str::to_string),
                item["i"].as_u64().and_then(|i| u32::try_from(i).ok()),
            );
            if let (Some(t), Some(w), Some(i)) = key {
                *seen.entry((t, w, i)).or_default() += 1;
            }
        }
    }
    seen
}
