//! Nothing lost, nothing applied twice: a killed worker, a crash between
//! commit and publish, and a database outage.

use std::time::Duration;

use harness::rabbit::RabbitNode;
use harness::{TestBroker, TestCluster, TestDb, free_port};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::{Value, json};

use shared::write::WriteMessage;

use crate::helpers::*;

async fn dead_letters(broker: &TestBroker) -> u32 {
    queue_depth(broker, &broker.topology().dead_queue).await
}

/// Ops whose key appears more than once in any record's kept ops.
async fn duplicated_ops(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT addon_id, sha256, o->>'t', o->>'w', o->>'i' \
         FROM records, jsonb_array_elements(ops) AS o GROUP BY 1, 2, 3, 4, 5 HAVING count(*) > 1) d",
    )
    .fetch_one(&db.owner)
    .await
    .unwrap()
}

fn bulk(write_id: &str, seconds: u32, first_hash: u32, n: u32) -> Value {
    let ops: Vec<Value> = (first_hash..first_hash + n)
        .map(|h| json!({"op": "register", "addon_id": "bulk@x", "sha256": hash(h), "version": write_id}))
        .collect();
    write(write_id, &at(seconds), Value::Array(ops))
}

#[tokio::test]
async fn a_worker_killed_mid_batch_loses_nothing_and_applies_nothing_twice() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    let ids: Vec<String> = (0..40).map(|i| format!("bulk-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        // Overlapping pairs, so a redelivered message meets its own effects.
        amo.publish(&bulk(id, i as u32, i as u32 * 500, 1_000))
            .await;
    }
    let args = ["--batch-max-messages", "4", "--prefetch", "8"];
    for round in 0..3 {
        let mut worker = start_worker(&db, &broker, free_port(), &args);
        // Kill it as soon as it has committed something this round.
        let before: i64 = sqlx::query_scalar("SELECT count(*) FROM receipts")
            .fetch_one(&db.owner)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now: i64 = sqlx::query_scalar("SELECT count(*) FROM receipts")
                .fetch_one(&db.owner)
                .await
                .unwrap();
            if now > before || now == ids.len() as i64 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: no progress"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worker.signal("KILL");
        worker.wait_exit(Duration::from_secs(10)).expect("killed");
    }
    let _survivor = start_worker(&db, &broker, free_port(), &args);
    let receipts = wait_for_receipts(&db, &ids, Duration::from_secs(60)).await;
    assert!(
        receipts.values().all(|(s, _)| s == "applied"),
        "{receipts:?}"
    );
    assert_eq!(duplicated_ops(&db).await, 0, "no op applied twice");
    let records = stored_records(&db).await;
    assert_eq!(records.len(), 39 * 500 + 1_000, "every pair");
    for h in 0..(39 * 500 + 1_000) {
        // The newest write naming a pair is the one with the greatest index.
        let newest = (h / 500).min(39);
        let got = &records[&("bulk@x".to_string(), hash(h))];
        assert_eq!(
            got.1.as_deref(),
            Some(format!("bulk-{newest:02}").as_str()),
            "pair {h}"
        );
    }
    assert_eq!(dead_letters(&broker).await, 0);
}

#[tokio::test]
async fn a_crash_between_commit_and_publish_still_announces_the_write() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    let mut events = EventTap::bind(&broker).await;
    let message = write(
        "committed-not-announced",
        &at(1),
        json!([{"op": "revoke", "addon_id": "a@x", "sha256": hash(3)}]),
    );

    // What a worker that died right after its commit leaves behind: the rows
    // and receipt committed, the message unacknowledged (so redelivered).
    let parsed = WriteMessage::parse(message.to_string().as_bytes()).unwrap();
    let pool = db.pool_as("addonreg_worker").await;
    write_worker::store::commit(
        &pool,
        shared::compaction::Retention::DEFAULT,
        &[parsed],
        &[],
    )
    .await
    .unwrap();
    amo.publish(&message).await;

    let _worker = start_worker(&db, &broker, free_port(), &[]);
    let event = events.next(Duration::from_secs(20)).await;
    assert_eq!(event.keys.len(), 1);
    assert_eq!(event.keys[0].sha256.to_string(), hash(3));
    // And it was acknowledged: the queue drains.
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let q = channel
            .queue_declare(
                broker.topology().writes_queue.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
            .unwrap();
        if q.message_count() == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redelivered write not acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conn.close(0, "done".into()).await.ok();
}

#[tokio::test]
async fn a_database_outage_loses_nothing_dead_letters_nothing_and_heals_by_itself() {
    let cluster = TestCluster::start().await;
    let db = TestDb::on(cluster.admin_options()).await;
    let broker = TestBroker::new();
    let amo = Amo::connect(&broker).await;
    let _worker = start_worker(
        &db,
        &broker,
        free_port(),
        &["--db-acquire-timeout-ms", "300"],
    );

    let first: Vec<String> = (0..20).map(|i| format!("before-{i}")).collect();
    for (i, id) in first.iter().enumerate() {
        amo.publish(&write(
            id,
            &at(i as u32),
            json!([{"op": "register", "addon_id": "a@x", "sha256": hash(i as u32)}]),
        ))
        .await;
    }
    wait_for_receipts(&db, &first, Duration::from_secs(30)).await;

    cluster.stop();
    let during: Vec<String> = (0..20).map(|i| format!("during-{i}")).collect();
    for (i, id) in during.iter().enumerate() {
        amo.publish(&write(
            id,
            &at(100 + i as u32),
            json!([{"op": "revoke", "addon_id": "a@x", "sha256": hash(i as u32)}]),
        ))
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        dead_letters(&broker).await,
        0,
        "an outage dead-letters nothing"
    );
    cluster.restart();

    let receipts = wait_for_receipts(&db, &during, Duration::from_secs(60)).await;
    assert!(
        receipts.values().all(|(s, _)| s == "applied"),
        "{receipts:?}"
    );
    let records = stored_records(&db).await;
    assert!((0..20).all(|h| records[&("a@x".to_string(), hash(h))].0 == "revoked"));
    assert_eq!(dead_letters(&broker).await, 0);
}

#[tokio::test]
async fn a_cut_broker_connection_is_rebuilt_and_nothing_is_lost() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    let port = free_port();
    let _worker = start_worker(&db, &broker, port, &[]);
    let before: Vec<String> = (0..10).map(|i| format!("before-{i}")).collect();
    for (i, id) in before.iter().enumerate() {
        amo.publish(&write(
            id,
            &at(i as u32),
            json!([{"op": "register", "addon_id": "a@x", "sha256": hash(i as u32)}]),
        ))
        .await;
    }
    wait_for_receipts(&db, &before, Duration::from_secs(30)).await;

    assert!(
        close_broker_connections(broker.prefix.as_str()) >= 1,
        "the worker's connection was found"
    );
    let after: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    for (i, id) in after.iter().enumerate() {
        amo.publish(&write(
            id,
            &at(100 + i as u32),
            json!([{"op": "revoke", "addon_id": "a@x", "sha256": hash(i as u32)}]),
        ))
        .await;
    }
    let receipts = wait_for_receipts(&db, &after, Duration::from_secs(30)).await;
    assert!(
        receipts.values().all(|(s, _)| s == "applied"),
        "{receipts:?}"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reconnects = metrics
        .lines()
        .find(|l| l.starts_with("addonreg_worker_broker_reconnects_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("reconnect counter");
    assert!(reconnects >= 1.0, "{reconnects}");
    assert_eq!(dead_letters(&broker).await, 0);
}

#[tokio::test]
async fn sigterm_while_busy_commits_the_batch_in_hand_and_exits_cleanly() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    let ids: Vec<String> = (0..30).map(|i| format!("bulk-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        amo.publish(&bulk(id, i as u32, i as u32 * 1_000, 1_000))
            .await;
    }
    let args = ["--batch-max-messages", "2", "--prefetch", "4"];
    let mut worker = start_worker(&db, &broker, free_port(), &args);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM receipts")
        .fetch_one(&db.owner)
        .await
        .unwrap()
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = worker.terminate();
    assert!(status.success(), "SIGTERM mid-stream exits 0: {status:?}");
    // Everything it took is committed and acknowledged: the rest is still
    // queued, untouched, for the next worker.
    // The broker returns the unacknowledged rest asynchronously: poll briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM receipts")
            .fetch_one(&db.owner)
            .await
            .unwrap();
        let queued = queue_depth(&broker, &broker.topology().writes_queue).await;
        if done + i64::from(queued) == ids.len() as i64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "committed {done} + queued {queued} != published {}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _next = start_worker(&db, &broker, free_port(), &args);
    let receipts = wait_for_receipts(&db, &ids, Duration::from_secs(60)).await;
    assert!(receipts.values().all(|(s, _)| s == "applied"));
    assert_eq!(duplicated_ops(&db).await, 0);
}

#[tokio::test]
async fn a_broker_restart_loses_nothing() {
    // A node of the test's own: stopping the machine's would break every
    // other test running beside this one.
    let node = RabbitNode::start();
    let db = TestDb::new().await;
    let mut broker = TestBroker::new();
    broker.url = node.amqp_url();
    let amo = Amo::connect(&broker).await;
    let before: Vec<String> = (0..30).map(|i| format!("bulk-{i:02}")).collect();
    for (i, id) in before.iter().enumerate() {
        amo.publish(&bulk(id, i as u32, i as u32 * 1_000, 1_000))
            .await;
    }
    let port = free_port();
    let args = ["--batch-max-messages", "2", "--prefetch", "4"];
    let mut worker = start_worker(&db, &broker, port, &args);
    // Stop the broker mid-stream: once something is committed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let committed = loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM receipts")
            .fetch_one(&db.owner)
            .await
            .unwrap();
        if done > 0 {
            break done;
        }
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drop(amo);
    node.stop();
    eprintln!(
        "broker stopped with {committed} of {} writes committed",
        before.len()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        worker.wait_exit(Duration::ZERO),
        None,
        "the worker outlives the broker"
    );
    node.restart();

    let amo = Amo::connect(&broker).await;
    let after: Vec<String> = (0..50).map(|i| format!("after-{i:02}")).collect();
    for (i, id) in after.iter().enumerate() {
        amo.publish(&write(
            id,
            &at(100 + i as u32),
            json!([{"op": "revoke", "addon_id": "single@x", "sha256": hash(i as u32)}]),
        ))
        .await;
    }
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    let receipts = wait_for_receipts(&db, &all, Duration::from_secs(90)).await;
    assert!(
        receipts.values().all(|(s, _)| s == "applied"),
        "{receipts:?}"
    );
    assert_eq!(duplicated_ops(&db).await, 0, "no op applied twice");
    let records = stored_records(&db).await;
    assert_eq!(records.len(), 30 * 1_000 + 50, "every pair, once");
    for h in 0..30 * 1_000 {
        let got = &records[&("bulk@x".to_string(), hash(h))];
        let version = format!("bulk-{:02}", h / 1_000);
        assert_eq!(got.1.as_deref(), Some(version.as_str()), "pair {h}");
    }
    for h in 0..50 {
        assert_eq!(records[&("single@x".to_string(), hash(h))].0, "revoked");
    }
    assert_eq!(dead_letters(&broker).await, 0, "nothing dead-lettered");
    assert_eq!(
        worker.wait_exit(Duration::ZERO),
        None,
        "the worker never exited"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reconnects = metrics
        .lines()
        .find(|l| l.starts_with("addonreg_worker_broker_reconnects_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("reconnect counter");
    assert!(reconnects >= 1.0, "{reconnects}");
}

/// `ADDONREG_AMQP_URL` lists the cluster's nodes: nodes that refuse
/// connections (two closed ports here) are skipped for one that answers,
/// wherever the worker's random start falls.
#[tokio::test]
async fn a_worker_given_several_node_urls_skips_the_dead_ones() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    let dead = |port: u16| format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let urls = format!("{},{},{}", dead(free_port()), broker.url, dead(free_port()));
    let _worker = harness::TestProcess::start(
        env!("CARGO_BIN_EXE_write-worker"),
        &[],
        &[
            ("ADDONREG_DATABASE_URL", db.url_as("addonreg_worker")),
            ("ADDONREG_AMQP_URL", urls),
            ("ADDONREG_PREFIX", broker.prefix.to_string()),
            ("ADDONREG_METRICS_LISTEN", "0".into()),
        ],
    );
    let ids: Vec<String> = (0..5).map(|i| format!("listed-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        amo.publish(&write(
            id,
            &at(i as u32),
            json!([{"op": "register", "addon_id": "a@x", "sha256": hash(i as u32)}]),
        ))
        .await;
    }
    let receipts = wait_for_receipts(&db, &ids, Duration::from_secs(30)).await;
    assert!(
        receipts.values().all(|(s, _)| s == "applied"),
        "{receipts:?}"
    );
}
