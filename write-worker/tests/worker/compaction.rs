//! Compaction is per pair and never by the clock (CONTRACT "How a record is
//! computed"): old writes of pairs the service never compacted apply, however
//! old; a pair's history stays bounded; concurrent batches don't deadlock.

use std::time::Duration;

use harness::TestDb;
use serde_json::json;

use shared::compaction::{MAX_OPS_KEPT, Retention};
use shared::domain::WriteId;
use write_worker::janitor;
use write_worker::store::{self, RejectedWrite};

use crate::helpers::{ago, hash, parse, stored_records, write};

const DAY: u64 = 24 * 3600;

fn days(n: u64) -> Duration {
    Duration::from_secs(n * DAY)
}

fn status(committed: &store::Committed, id: &str) -> &'static str {
    committed.outcomes[&WriteId::parse(id).unwrap()].as_str()
}

/// Issue 14 item 1: AMO's launch-day backfill registers files with their
/// real registration times, years ago. Janitor rounds before and between
/// must not make them superseded.
#[tokio::test]
async fn a_register_issued_years_ago_for_a_new_pair_is_applied_after_janitor_rounds() {
    let db = TestDb::new().await;
    let pool = db.pool_as("addonreg_worker").await;
    let now = parse(write(
        "today",
        &ago(Duration::from_secs(1)),
        json!([{"op": "register", "addon_id": "a@x", "sha256": hash(1)}]),
    ));
    store::commit(&pool, Retention::DEFAULT, &[now], &[])
        .await
        .unwrap();
    let rounds = janitor::Retention {
        receipts: days(7),
        interval: Duration::from_secs(1),
    };
    janitor::purge(&pool, rounds).await.unwrap();

    let mut backfill = Vec::new();
    for (n, age) in [3 * 365, 30, 3].into_iter().enumerate() {
        backfill.push(parse(write(
            &format!("backfill-{n}"),
            &ago(days(age)),
            json!([{"op": "register", "addon_id": "b@x", "sha256": hash(10 + n as u32), "version": "1.0"}]),
        )));
    }
    let committed = store::commit(&pool, Retention::DEFAULT, &backfill, &[])
        .await
        .unwrap();
    janitor::purge(&pool, rounds).await.unwrap();
    for n in 0..3 {
        assert_eq!(status(&committed, &format!("backfill-{n}")), "applied");
    }
    let records = stored_records(&db).await;
    for n in 0..3 {
        let record = &records[&("b@x".to_string(), hash(10 + n))];
        assert_eq!(record.0, "registered", "backfill-{n} kept");
    }
}

/// Ops older than their own pair's newest by more than the retention are
/// compacted; a late op below the compacted base is superseded, one above it
/// is folded in. Nothing depends on how old anything is by the clock.
#[tokio::test]
async fn a_pair_compacts_relative_to_its_own_newest_op() {
    let db = TestDb::new().await;
    let pool = db.pool_as("addonreg_worker").await;
    let retention = Retention::new(days(7)).unwrap();
    let pair = json!({"addon_id": "a@x", "sha256": hash(1)});
    let op = |op: &str| {
        let mut o = pair.clone();
        o["op"] = json!(op);
        json!([o])
    };
    let register = parse(write("register", &ago(days(1000)), op("register")));
    let revoke = parse(write("revoke", &ago(days(900)), op("revoke")));
    store::commit(&pool, retention, &[register, revoke], &[])
        .await
        .unwrap();
    let (count, compacted): (i32, Option<String>) =
        sqlx::query_as("SELECT op_count, compacted::text FROM records")
            .fetch_one(&db.owner)
            .await
            .unwrap();
    assert_eq!(
        count, 1,
        "the register is 100 days behind its pair's newest op"
    );
    assert!(compacted.is_some());

    // Below the compacted register: superseded. Above it: folded in.
    let below = parse(write("below", &ago(days(1001)), op("delete")));
    let above = parse(write("above", &ago(days(950)), op("delete")));
    let committed = store::commit(&pool, retention, &[below, above], &[])
        .await
        .unwrap();
    assert_eq!(status(&committed, "below"), "superseded");
    assert_eq!(status(&committed, "above"), "superseded");
    let records = stored_records(&db).await;
    let record = &records[&("a@x".to_string(), hash(1))];
    assert_eq!(record.0, "revoked");
    assert_eq!(
        record.2, None,
        "the delete above the base ended the register's life; the revoke made a new one"
    );
}

/// Issue 14 item 13: a pair written thousands of times keeps a bounded
/// history, and its record stays the fold of its ops.
#[tokio::test]
async fn a_pairs_history_is_bounded_however_many_ops_it_gets() {
    let db = TestDb::new().await;
    let pool = db.pool_as("addonreg_worker").await;
    let total = MAX_OPS_KEPT + 300;
    for chunk in 0..(total / 100) {
        let writes: Vec<_> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                parse(write(
                    &format!("w{n:05}"),
                    &ago(Duration::from_secs((total - n) as u64)),
                    json!([{"op": "register", "addon_id": "a@x", "sha256": hash(1), "version": format!("{n}")}]),
                ))
            })
            .collect();
        store::commit(&pool, Retention::DEFAULT, &writes, &[])
            .await
            .unwrap();
    }
    let (count, kept): (i32, i32) =
        sqlx::query_as("SELECT op_count, jsonb_array_length(ops) FROM records")
            .fetch_one(&db.owner)
            .await
            .unwrap();
    assert!(count as usize <= MAX_OPS_KEPT, "{count} ops kept");
    assert_eq!(count, kept);
    let records = stored_records(&db).await;
    let record = &records[&("a@x".to_string(), hash(1))];
    assert_eq!(record.1.as_deref(), Some(format!("{}", total - 1).as_str()));
    assert!(record.2.is_some(), "registered_at survives compaction");
}

/// Issue 14 item 13: receipts were inserted in hash-map order, so two
/// batches writing the same receipts in other orders deadlocked (retried
/// after a second each). They now go in write-id order.
#[tokio::test]
async fn batches_writing_the_same_receipts_do_not_deadlock() {
    let db = TestDb::new().await;
    let pool = db.pool_as("addonreg_worker").await;
    for round in 0..5 {
        let rejected: Vec<RejectedWrite> = (0..300)
            .map(|i| RejectedWrite {
                write_id: WriteId::parse(&format!("r{round}-{i:04}")).unwrap(),
                reason: "invalid_field: test".into(),
            })
            .collect();
        let reversed: Vec<RejectedWrite> = rejected.iter().rev().cloned().collect();
        let (a, b) = tokio::join!(
            store::commit(&pool, Retention::DEFAULT, &[], &rejected),
            store::commit(&pool, Retention::DEFAULT, &[], &reversed)
        );
        a.unwrap();
        b.unwrap();
    }
}

/// A row written by another tool (a seeded table: a record, no ops, no
/// counts) that then gets only an op older than its head: nothing is kept,
/// and the row must still be written, not refused (a refusal would
/// dead-letter a valid write).
#[tokio::test]
async fn a_row_without_ops_takes_an_older_op_without_a_refusal() {
    let db = TestDb::new().await;
    let pool = db.pool_as("addonreg_worker").await;
    sqlx::query(
        "INSERT INTO records (addon_id, sha256, status, version, registered_at, updated_at, \
                              last_write_id, last_op_index, ops) \
         VALUES ('a@x', decode($1, 'hex'), 'registered', '1.0', now() - interval '1 day', \
                 now() - interval '1 day', 'seed', 0, '[]')",
    )
    .bind(hash(1))
    .execute(&db.owner)
    .await
    .unwrap();
    let older = parse(write(
        "older",
        &ago(days(30)),
        json!([{"op": "revoke", "addon_id": "a@x", "sha256": hash(1)}]),
    ));
    let committed = store::commit(&pool, Retention::DEFAULT, &[older], &[])
        .await
        .expect("a valid write is never refused");
    assert_eq!(status(&committed, "older"), "superseded");
    let newer = parse(write(
        "newer",
        &ago(Duration::from_secs(1)),
        json!([{"op": "revoke", "addon_id": "a@x", "sha256": hash(1)}]),
    ));
    let committed = store::commit(&pool, Retention::DEFAULT, &[newer], &[])
        .await
        .unwrap();
    assert_eq!(status(&committed, "newer"), "applied");
    let records = stored_records(&db).await;
    let record = &records[&("a@x".to_string(), hash(1))];
    assert_eq!(
        (record.0.as_str(), record.1.as_deref()),
        ("revoked", Some("1.0"))
    );
}
