//! The base: migrations, the worker's role, the broker topology, and the
//! process's start, logs, metrics and stop.

use std::time::Duration;

use harness::{TestBroker, TestDb, free_port, wait_for_http};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use crate::helpers::start_worker;

#[tokio::test]
async fn migrations_are_safe_to_run_twice() {
    let db = TestDb::new().await; // migrated once already
    let expected = shared::db::MIGRATOR.iter().count() as i64;
    for _ in 0..2 {
        let mut migrate = harness::TestProcess::start(
            env!("CARGO_BIN_EXE_write-worker"),
            &["migrate"],
            &[("ADDONREG_DATABASE_URL", db.url_as("postgres"))],
        );
        let status = migrate
            .wait_exit(Duration::from_secs(30))
            .expect("migrate exits");
        assert!(
            status.success(),
            "migrate failed: {:?}",
            migrate.stdout_lines()
        );
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&db.owner)
        .await
        .unwrap();
    assert_eq!(applied, expected);
    for table in ["records", "receipts"] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&db.owner)
            .await
            .unwrap();
        assert!(exists, "{table}");
    }
}

#[tokio::test]
async fn worker_role_changes_rows_but_not_the_schema() {
    let db = TestDb::new().await;
    let worker = db.pool_as("addonreg_worker").await;
    sqlx::query("INSERT INTO receipts (write_id, status) VALUES ('w1', 'applied')")
        .execute(&worker)
        .await
        .expect("worker inserts receipts");
    sqlx::query("UPDATE receipts SET status = 'superseded' WHERE write_id = 'w1'")
        .execute(&worker)
        .await
        .expect("worker updates receipts");
    sqlx::query("DELETE FROM receipts WHERE write_id = 'w1'")
        .execute(&worker)
        .await
        .expect("worker deletes receipts");
    for ddl in [
        "CREATE TABLE intruder (x int)",
        "ALTER TABLE records ADD COLUMN intruder int",
        "DROP TABLE receipts",
        "TRUNCATE records",
    ] {
        let err = sqlx::query(ddl).execute(&worker).await.expect_err(ddl);
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.to_string());
        assert!(
            matches!(code.as_deref(), Some("42501")),
            "{ddl}: expected permission denied, got {err}"
        );
    }
}

#[tokio::test]
async fn topology_is_declared_idempotently_on_the_broker() {
    let broker = TestBroker::new();
    let topology = broker.topology();
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    topology.declare(&channel).await.expect("first declaration");
    topology
        .declare(&channel)
        .await
        .expect("second declaration is harmless");

    // A persistent write published as AMO does lands in the quorum queue.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            topology.writes_exchange.as_str().into(),
            shared::topology::WRITE_ROUTING_KEY.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"{}",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let writes = channel
        .queue_declare(
            topology.writes_queue.as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
        .expect("writes queue exists");
    assert_eq!(writes.message_count(), 1);
    channel
        .queue_declare(
            topology.dead_queue.as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
        .expect("dead-letter queue exists");

    // Declaring it as a classic queue must clash: it is a quorum queue.
    let clash = conn.create_channel().await.unwrap();
    let classic = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let err = clash
        .queue_declare(
            topology.writes_queue.as_str().into(),
            classic,
            FieldTable::default(),
        )
        .await
        .expect_err("a classic re-declaration is refused");
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
    conn.close(0, "done".into()).await.ok();
}

#[tokio::test]
async fn worker_starts_logs_mozlog_serves_metrics_and_stops_on_sigterm() {
    let db = TestDb::new().await;
    let broker = TestBroker::new();
    let port = free_port();
    let mut worker = start_worker(&db, &broker, port, &[]);
    wait_for_http(
        &format!("http://127.0.0.1:{port}/metrics"),
        200,
        Duration::from_secs(20),
    )
    .await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("addonreg_worker_process_resident_memory_bytes")
    );

    // It declares the topology at start. A failed passive declaration closes
    // its channel, so each try gets a new one.
    let conn = broker.connect().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let channel = conn.create_channel().await.unwrap();
        let queue = broker.topology().writes_queue;
        if channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker declared no topology"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conn.close(0, "done".into()).await.ok();

    let status = worker.terminate();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    let lines = worker.stdout_lines();
    assert!(!lines.is_empty(), "it logged");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("every stdout line is JSON");
        assert_eq!(v["EnvVersion"], "2.0", "{line}");
        assert_eq!(v["Logger"], "addonreg-write-worker");
        assert!(
            v["Severity"].as_u64().unwrap() > 3,
            "a clean stop logs no error: {line}"
        );
    }
    assert!(lines.iter().any(|l| l.contains("worker.stop")));
}
