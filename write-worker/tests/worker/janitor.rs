//! Retention: old receipts go; records, tombstones included, are never the
//! janitor's to touch, so a purge racing a worker cannot lose a write.

use std::time::{Duration, Instant};

use harness::TestDb;
use serde_json::json;

use shared::compaction::Retention as OpRetention;
use write_worker::janitor::{self, Retention};
use write_worker::store;

use crate::helpers::{ago, hash, parse, stored_records, write};

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

fn retention() -> Retention {
    Retention {
        receipts: WEEK,
        interval: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn old_receipts_are_purged_and_records_stay() {
    let db = TestDb::new().await;
    let pool = db.pool_as("addonreg_worker").await;
    let live = parse(write(
        "live",
        &ago(Duration::from_secs(40 * 24 * 3600)),
        json!([{"op": "register", "addon_id": "a@x", "sha256": hash(1)}]),
    ));
    let buried = parse(write(
        "buried",
        &ago(Duration::from_secs(30 * 24 * 3600)),
        json!([{"op": "delete", "addon_id": "a@x", "sha256": hash(2)}]),
    ));
    let recent = parse(write(
        "recent",
        &ago(Duration::from_secs(60)),
        json!([{"op": "register", "addon_id": "a@x", "sha256": hash(3)}]),
    ));
    store::commit(&pool, OpRetention::DEFAULT, &[live, buried], &[])
        .await
        .unwrap();
    store::commit(&pool, OpRetention::DEFAULT, &[recent], &[])
        .await
        .unwrap();
    sqlx::query(
        "UPDATE receipts SET processed_at = now() - interval '8 days' WHERE write_id <> 'recent'",
    )
    .execute(&db.owner)
    .await
    .unwrap();

    assert_eq!(janitor::purge(&pool, retention()).await.unwrap(), 2);
    let receipts: Vec<String> = sqlx::query_scalar("SELECT write_id FROM receipts")
        .fetch_all(&db.owner)
        .await
        .unwrap();
    assert_eq!(receipts, vec!["recent".to_string()]);
    let records = stored_records(&db).await;
    assert_eq!(records.len(), 3, "records and the tombstone stay");
    assert_eq!(records[&("a@x".to_string(), hash(2))].0, "deleted");

    // A register older than the delete arrives late: the tombstone buries it.
    let late = parse(write(
        "late",
        &ago(Duration::from_secs(35 * 24 * 3600)),
        json!([{"op": "register", "addon_id": "a@x", "sha256": hash(2)}]),
    ));
    let committed = store::commit(&pool, OpRetention::DEFAULT, &[late], &[])
        .await
        .unwrap();
    assert_eq!(
        committed.outcomes[&shared::domain::WriteId::parse("late").unwrap()].as_str(),
        "superseded"
    );
    assert_eq!(
        stored_records(&db).await[&("a@x".to_string(), hash(2))].0,
        "deleted"
    );

    // A second janitor at the same time finds the lock taken or nothing to do.
    let (a, b) = tokio::join!(
        janitor::purge(&pool, retention()),
        janitor::purge(&pool, retention())
    );
    assert_eq!(a.unwrap() + b.unwrap(), 0);
}

/// Issue 14 item 2: a purge that waited on a worker's row lock must not
/// delete the record the worker just brought back. The worker's transaction
/// is held open by hand, so the two interleave the same way every run.
#[tokio::test]
async fn a_janitor_racing_a_reregister_of_an_old_tombstone_loses_nothing() {
    let db = TestDb::new().await;
    let pool = db.pool_as("addonreg_worker").await;
    let delete = parse(write(
        "delete",
        &ago(Duration::from_secs(30 * 24 * 3600)),
        json!([{"op": "delete", "addon_id": "a@x", "sha256": hash(1)}]),
    ));
    store::commit(&pool, OpRetention::DEFAULT, &[delete], &[])
        .await
        .unwrap();

    // A worker re-registers the tombstone: row locked and updated, not committed.
    let mut worker = pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE records SET status = 'registered', registered_at = now(), updated_at = now(), \
                last_write_id = 'again', last_op_index = 0 \
         WHERE addon_id = 'a@x' AND sha256 = decode($1, 'hex')",
    )
    .bind(hash(1))
    .execute(&mut *worker)
    .await
    .unwrap();

    let janitor_pool = pool.clone();
    let purge = tokio::spawn(async move {
        janitor::purge(
            &janitor_pool,
            Retention {
                receipts: WEEK,
                interval: Duration::from_secs(1),
            },
        )
        .await
    });
    // Let the janitor run until it is done or blocked on the worker's lock.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&db.owner)
        .await
        .unwrap();
        if purge.is_finished() || blocked > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "janitor neither done nor blocked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.commit().await.unwrap();
    purge.await.unwrap().unwrap();

    let records = stored_records(&db).await;
    assert_eq!(
        records
            .get(&("a@x".to_string(), hash(1)))
            .map(|r| r.0.as_str()),
        Some("registered"),
        "the acknowledged re-register survives the janitor"
    );
}
