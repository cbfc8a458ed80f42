//! Retention: old receipts and tombstones go; what they protected stays true.

use std::time::Duration;

use harness::TestDb;
use serde_json::json;

use shared::write::WriteMessage;
use write_worker::janitor::{self, Retention};
use write_worker::store;

use crate::helpers::{hash, stored_records, write};

fn parse(v: serde_json::Value) -> WriteMessage {
    WriteMessage::parse(v.to_string().as_bytes()).unwrap()
}

#[tokio::test]
async fn old_receipts_and_tombstones_are_purged_and_older_ops_stay_superseded() {
    let db = TestDb::new().await;
    let pool = db.pool_as("addonreg_worker").await;
    let old = "2020-01-01T00:00:00Z";
    let live = parse(write(
        "live",
        old,
        json!([{"op": "register", "addon_id": "a@x", "sha256": hash(1)}]),
    ));
    let buried = parse(write(
        "buried",
        "2020-01-02T00:00:00Z",
        json!([{"op": "delete", "addon_id": "a@x", "sha256": hash(2)}]),
    ));
    store::commit(&pool, &[live, buried], &[]).await.unwrap();
    let recent = parse(write(
        "recent",
        "2020-01-03T00:00:00Z",
        json!([{"op": "register", "addon_id": "a@x", "sha256": hash(3)}]),
    ));
    store::commit(&pool, &[recent], &[]).await.unwrap();
    sqlx::query(
        "UPDATE receipts SET processed_at = now() - interval '8 days' WHERE write_id <> 'recent'",
    )
    .execute(&db.owner)
    .await
    .unwrap();

    let week = Duration::from_secs(7 * 24 * 3600);
    let retention = Retention {
        receipts: week,
        tombstones: week,
        interval: Duration::from_secs(1),
    };
    let purged = janitor::purge(&pool, retention).await.unwrap();
    assert_eq!((purged.receipts, purged.tombstones), (2, 1));
    let receipts: Vec<String> = sqlx::query_scalar("SELECT write_id FROM receipts")
        .fetch_all(&db.owner)
        .await
        .unwrap();
    assert_eq!(receipts, vec!["recent".to_string()]);
    let records = stored_records(&db).await;
    assert_eq!(records.len(), 2, "live records stay, the tombstone goes");
    assert!(!records.contains_key(&("a@x".to_string(), hash(2))));

    // A register older than the purged delete arrives late: superseded, the pair stays gone.
    let late = parse(write(
        "late",
        "2020-01-01T12:00:00Z",
        json!([{"op": "register", "addon_id": "a@x", "sha256": hash(2)}]),
    ));
    let fresh = parse(write(
        "fresh",
        "2026-11-22T00:00:00Z",
        json!([{"op": "register", "addon_id": "a@x", "sha256": hash(4)}]),
    ));
    let committed = store::commit(&pool, &[late, fresh], &[]).await.unwrap();
    let status =
        |id: &str| committed.outcomes[&shared::domain::WriteId::parse(id).unwrap()].as_str();
    assert_eq!(status("late"), "superseded");
    assert_eq!(status("fresh"), "applied");
    let records = stored_records(&db).await;
    assert!(
        !records.contains_key(&("a@x".to_string(), hash(2))),
        "not brought back"
    );
    assert!(records.contains_key(&("a@x".to_string(), hash(4))));

    // Nothing left to do; a second janitor at the same time finds the lock taken or nothing.
    let (a, b) = tokio::join!(
        janitor::purge(&pool, retention),
        janitor::purge(&pool, retention)
    );
    assert_eq!(a.unwrap().tombstones + b.unwrap().tombstones, 0);
}
