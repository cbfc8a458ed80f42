//! A randomised, model-based test of the whole write path against the
//! contract's fold (`shared::record::fold`) and compaction
//! (`shared::compaction`): real workers consuming from RabbitMQ, committing to
//! Postgres, one of them killed mid-run, messages published twice, janitors
//! purging receipts after a second while writes go on (so redeliveries find
//! no receipt), and `issued_at`s from a minute to five years old.
//!
//! Runs in the test command with a fixed seed; repeat or go longer with
//! `ADDONREG_MODEL_SEED=<n> ADDONREG_MODEL_WRITES=<n> scripts/test -- model`.
//! It reports every pair whose stored record or history differs from the
//! model, and every write lost.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use harness::model::{DEFAULT_SEED, DEFAULT_WRITES, Plan, env_or, plan};
use harness::{TestBroker, TestDb, TestProcess, free_port};

use shared::compaction::PairHistory;
use shared::record::{self, RecordState};
use shared::write::{Action, OpKey, Pair};
use write_worker::history;

use crate::helpers::{Amo, queue_depth, start_worker};

/// One stored row: its record and its history.
struct Stored {
    state: Option<RecordState>,
    history: PairHistory,
}

async fn stored(db: &TestDb) -> HashMap<Pair, Stored> {
    type Row = (
        String,
        Vec<u8>,
        String,
        Option<String>,
        Option<chrono::DateTime<chrono::Utc>>,
        chrono::DateTime<chrono::Utc>,
        String,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT addon_id, sha256, status, version, registered_at, updated_at, ops::text, compacted::text \
         FROM records",
    )
    .fetch_all(&db.owner)
    .await
    .unwrap();
    rows.into_iter()
        .map(
            |(addon, sha, status, version, registered_at, updated_at, ops, compacted)| {
                let pair = Pair {
                    addon_id: shared::domain::AddonId::parse(&addon).unwrap(),
                    sha256: shared::domain::Sha256::from_bytes(sha.try_into().unwrap()),
                };
                let state = record::Status::parse(&status).map(|status| RecordState {
                    status,
                    version: version.map(|v| shared::domain::Version::parse(&v).unwrap()),
                    registered_at: registered_at.map(shared::domain::Timestamp::from_utc),
                    updated_at: shared::domain::Timestamp::from_utc(updated_at),
                });
                let base = compacted.map(|c| history::decode_compacted(&c).unwrap());
                let history = PairHistory::new(base, history::decode(&ops).unwrap());
                (pair, Stored { state, history })
            },
        )
        .collect()
}

/// Every difference between the database and the model, one line each.
fn differences(plan: &Plan, stored: &HashMap<Pair, Stored>) -> Vec<String> {
    let mut sent: BTreeMap<&Pair, BTreeMap<OpKey, &Action>> = BTreeMap::new();
    for w in &plan.writes {
        for (key, op) in w.keyed_ops() {
            sent.entry(&op.pair).or_default().insert(key, &op.action);
        }
    }
    let mut found = Vec::new();
    for (pair, ops) in &sent {
        let Some(row) = stored.get(*pair) else {
            found.push(format!("{pair:?}: lost, no row"));
            continue;
        };
        if row.history.state() != row.state {
            found.push(format!(
                "{pair:?}: record {:?} is not its own history's {:?}",
                row.state,
                row.history.state()
            ));
        }
        for (key, action) in &row.history.ops {
            if ops.get(key) != Some(&action) {
                found.push(format!("{pair:?}: kept op {key:?} was never sent so"));
            }
        }
        let through = row.history.base.as_ref().map(|b| &b.through);
        for key in ops.keys() {
            if !row.history.ops.contains_key(key) && through.is_none_or(|t| key > t) {
                found.push(format!(
                    "{pair:?}: op {key:?} lost (neither kept nor compacted)"
                ));
            }
        }
        // Pairs written from one era: every op within the retention of the
        // others, so the record is the fold of all of them, whatever the order.
        if !plan.spread.contains(pair) {
            let model = record::fold(ops.iter().map(|(k, a)| (k, *a)));
            if model != row.state {
                found.push(format!("{pair:?}: record {:?}, model {model:?}", row.state));
            }
        }
    }
    found
}

#[tokio::test]
async fn the_write_path_matches_the_model_with_old_writes_redeliveries_kills_and_janitors() {
    let seed = env_or("ADDONREG_MODEL_SEED", DEFAULT_SEED);
    let count = env_or("ADDONREG_MODEL_WRITES", DEFAULT_WRITES);
    eprintln!("model: seed {seed} ({count} writes); ADDONREG_MODEL_SEED repeats it");
    let plan = plan(seed, count);
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    // Small batches for many interleavings; receipts purged a second after
    // they are written, by every worker's janitor, while writes go on.
    let args = [
        "--batch-max-messages",
        "20",
        "--prefetch",
        "40",
        "--janitor-interval-secs",
        "1",
        "--receipt-retention-secs",
        "1",
        "--op-retention-secs",
        "86400",
    ];
    let start = || start_worker(&db, &broker, free_port(), &args);
    let mut workers: Vec<TestProcess> = vec![start(), start()];

    let half = plan.bodies.len() / 2;
    for body in &plan.bodies[..half] {
        amo.publish(body).await;
    }
    // A worker dies mid-batch: its unacknowledged messages come back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    workers[0].signal("KILL");
    workers[0] = start();
    for body in &plan.bodies[half..] {
        amo.publish(body).await;
    }

    let queue = broker.topology().writes_queue.to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let last = loop {
        let found = differences(&plan, &stored(&db).await);
        if found.is_empty() && queue_depth(&broker, &queue).await == 0 {
            // Stop them all (a graceful stop acks what it committed); a
            // message still unacknowledged would be back in the queue.
            for w in &mut workers {
                assert!(w.terminate().success());
            }
            if queue_depth(&broker, &queue).await == 0 {
                break differences(&plan, &stored(&db).await);
            }
            workers = vec![start()];
        }
        if Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        last.is_empty(),
        "seed {seed}: {} pairs differ from the model:\n{}",
        last.len(),
        last.join("\n")
    );
    let dead = queue_depth(&broker, &broker.topology().dead_queue.to_string()).await;
    assert_eq!(dead, 0, "seed {seed}: no valid write is dead-lettered");
}
