//! Nothing lost under faults (issue 14): a refused write whose dead letter
//! failed, a dead letter no queue takes, a commit that names no pair, a NUL
//! in a version, a broker that blocks publishers, and a backlog of 4 MiB
//! messages against the memory budget.

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use harness::rabbit::{MemoryAlarm, RabbitNode};
use harness::{TestBroker, TestDb, TestProcess, free_port};
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};

use shared::topology::REASON_HEADER;

use crate::helpers::*;

/// An `issued_at` of now, so that no test depends on today's date.
fn issued() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The worker binary with extra `ADDONREG_*` variables (variables, not flags:
/// a worker that does not know one still starts, so a test shows what it lacks).
fn worker_with(
    db: &TestDb,
    broker: &TestBroker,
    metrics_port: u16,
    env: &[(&str, String)],
) -> TestProcess {
    TestProcess::launch(&worker(db, broker, metrics_port).settings(env))
}

/// The value of one metric line (name with labels), 0 when absent.
async fn metric(port: u16, line: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Messages ready in `queue`, or `None` while it does not exist.
async fn depth(broker: &TestBroker, queue: &str) -> Option<u32> {
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .ok()
        .map(|q| q.message_count());
    conn.close(0, "done".into()).await.ok();
    count
}

/// Waits until `queue` exists and holds exactly `n` ready messages.
async fn wait_depth(broker: &TestBroker, queue: &str, n: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let depth = depth(broker, queue).await;
        if depth == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} holds {depth:?}, not {n}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes every dead letter; answers their reason headers.
async fn take_dead_reasons(broker: &TestBroker) -> Vec<String> {
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut reasons = Vec::new();
    while let Some(message) = channel
        .basic_get(
            broker.topology().dead_queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let reason = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(REASON_HEADER).cloned())
            .and_then(|v| v.as_long_string().map(|s| s.to_string()))
            .unwrap_or_default();
        reasons.push(reason);
    }
    conn.close(0, "done".into()).await.ok();
    reasons
}

/// Deletes the dead queue, as an operator cleaning up by hand might.
async fn delete_dead_queue(broker: &TestBroker) {
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_delete(
            broker.topology().dead_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    conn.close(0, "done".into()).await.ok();
}

fn register(n: u32, version: &str) -> Value {
    json!([{"op": "register", "addon_id": "a@x", "sha256": hash(n), "version": version}])
}

/// Starts the worker and waits until it has committed one write: it is
/// connected and its topology declared.
async fn started_worker(db: &TestDb, broker: &TestBroker, amo: &Amo, port: u16) -> TestProcess {
    let worker = worker_with(db, broker, port, &[]);
    amo.publish(&write("warm-up", &issued(), register(0, "1")))
        .await;
    wait_for_receipts(db, &["warm-up".to_string()], Duration::from_secs(30)).await;
    worker
}

#[tokio::test]
async fn a_nul_in_a_version_is_dead_lettered_as_invalid_input_without_splitting_the_batch() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    // Queued before the worker starts, so they are one batch.
    amo.publish(&write("ok-1", &issued(), register(1, "1.0")))
        .await;
    amo.publish(&write("nul", &issued(), register(2, "1.0\u{0}evil")))
        .await;
    amo.publish(&write("ok-2", &issued(), register(3, "2.0")))
        .await;
    let port = free_port();
    let _worker = worker_with(
        &db,
        &broker,
        port,
        &[("ADDONREG_BATCH_MAX_WAIT_MS", "200".to_string())],
    );
    let ids: Vec<String> = ["ok-1", "nul", "ok-2"].map(String::from).to_vec();
    let receipts = wait_for_receipts(&db, &ids, Duration::from_secs(30)).await;
    assert_eq!(receipts["ok-1"].0, "applied");
    assert_eq!(receipts["ok-2"].0, "applied");
    assert_eq!(
        receipts["nul"],
        (
            "rejected".to_string(),
            Some("invalid ops[0].version: must not contain U+0000 (NUL)".to_string())
        )
    );
    wait_depth(
        &broker,
        &broker.topology().dead_queue,
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        take_dead_reasons(&broker).await,
        ["invalid_field: invalid ops[0].version: must not contain U+0000 (NUL)"]
    );
    assert_eq!(
        metric(
            port,
            "addonreg_worker_commit_errors_total{kind=\"refused\"}"
        )
        .await,
        0.0,
        "the database never saw it: the batch was not split"
    );
}

#[tokio::test]
async fn a_batch_that_only_rejects_still_publishes_an_event_with_its_lsn() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    let mut events = EventTap::bind(&broker).await;
    let before: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&db.owner)
        .await
        .unwrap();
    let bad = json!([{"op": "register", "addon_id": "a@x", "sha256": "nope"}]);
    amo.publish(&write("only-bad", &issued(), bad)).await;
    let _worker = worker_with(&db, &broker, free_port(), &[]);

    let event = events.next(Duration::from_secs(20)).await;
    assert!(event.keys.is_empty(), "{event:?}");
    let receipts = wait_for_receipts(&db, &["only-bad".to_string()], Duration::from_secs(5)).await;
    assert_eq!(receipts["only-bad"].0, "rejected");
    // The event's LSN is after the rejected receipt's commit (which wrote WAL
    // after `before`), and no later than the primary is now.
    let (after_before, at_most_now): (bool, bool) =
        sqlx::query_as("SELECT $1::pg_lsn > $2::pg_lsn, $1::pg_lsn <= pg_current_wal_lsn()")
            .bind(event.lsn.to_string())
            .bind(&before)
            .fetch_one(&db.owner)
            .await
            .unwrap();
    assert!(after_before && at_most_now, "{} vs {before}", event.lsn);
}

#[tokio::test]
async fn a_refused_write_whose_dead_letter_failed_is_dead_lettered_when_redelivered() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    // A refusal the parser can't foresee: Postgres alone says no (SQLSTATE 23514).
    sqlx::query(
        "ALTER TABLE records ADD CONSTRAINT test_refuses CHECK (version IS DISTINCT FROM 'refuse-me')",
    )
    .execute(&db.owner)
    .await
    .unwrap();
    let amo = Amo::connect(&broker).await;
    let port = free_port();
    let _worker = started_worker(&db, &broker, &amo, port).await;

    // The dead letter can't be placed: the receipt is committed first, the
    // publish fails, and the redelivery meets a `rejected` receipt.
    delete_dead_queue(&broker).await;
    amo.publish(&write("refused", &issued(), register(1, "refuse-me")))
        .await;
    let receipts = wait_for_receipts(&db, &["refused".to_string()], Duration::from_secs(30)).await;
    assert_eq!(receipts["refused"].0, "rejected");

    // The worker re-declares the dead queue when it reconnects.
    wait_depth(
        &broker,
        &broker.topology().dead_queue,
        1,
        Duration::from_secs(30),
    )
    .await;
    let reasons = take_dead_reasons(&broker).await;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with("database_refused: database refused the write (SQLSTATE 23514)"),
        "{reasons:?}"
    );
    wait_depth(
        &broker,
        &broker.topology().writes_queue,
        0,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test]
async fn a_dead_letter_no_queue_takes_is_not_acknowledged_but_retried() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    let port = free_port();
    let _worker = started_worker(&db, &broker, &amo, port).await;

    delete_dead_queue(&broker).await;
    let bad = json!([{"op": "register", "addon_id": "a@x", "sha256": "nope"}]);
    amo.publish(&write("unroutable", &issued(), bad)).await;

    wait_depth(
        &broker,
        &broker.topology().dead_queue,
        1,
        Duration::from_secs(30),
    )
    .await;
    let reasons = take_dead_reasons(&broker).await;
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].starts_with("invalid_field: "), "{reasons:?}");
    assert!(
        metric(port, "addonreg_worker_broker_reconnects_total").await >= 1.0,
        "the returned dead letter ended the session"
    );
    wait_depth(
        &broker,
        &broker.topology().writes_queue,
        0,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test]
async fn a_broker_alarm_blocking_publishers_neither_hangs_the_worker_nor_acks_anything() {
    let node = tokio::task::spawn_blocking(RabbitNode::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let mut broker = TestBroker::new();
    broker.url = node.amqp_url();
    let amo = Amo::connect(&broker).await;
    let ids: Vec<String> = (0..5).map(|i| format!("blocked-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        amo.publish(&write(id, &issued(), register(i as u32, "1")))
            .await;
    }
    drop(amo);

    let alarm = MemoryAlarm::raise(&node);
    let port = free_port();
    let timeout = [("ADDONREG_PUBLISH_TIMEOUT_MS", "1000".to_string())];
    let mut worker = worker_with(&db, &broker, port, &timeout);
    // It commits, then cannot publish the event: it gives up on the blocked
    // connection and starts over, and the unacknowledged writes come back.
    wait_for_receipts(&db, &ids, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(port, "addonreg_worker_redeliveries_total").await < ids.len() as f64 {
        assert!(
            Instant::now() < deadline,
            "the writes never came back while the broker blocks publishers (a hung publish, or acks blocked with it)\n{}",
            worker.stdout_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(port, "addonreg_worker_broker_reconnects_total").await >= 1.0);

    worker.signal("TERM");
    let status = worker
        .wait_exit(Duration::from_secs(15))
        .expect("SIGTERM stops a worker blocked by the broker");
    assert!(status.success(), "{status:?}");
    wait_depth(
        &broker,
        &broker.topology().writes_queue,
        ids.len() as u32,
        Duration::from_secs(10),
    )
    .await;

    drop(alarm);
    let mut events = EventTap::bind(&broker).await;
    let _next = worker_with(&db, &broker, free_port(), &[]);
    let event = events.next(Duration::from_secs(30)).await;
    assert!(!event.keys.is_empty(), "the duplicates are announced");
    wait_depth(
        &broker,
        &broker.topology().writes_queue,
        0,
        Duration::from_secs(30),
    )
    .await;
}

/// The peak resident set of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// A write of `ops` ops with the longest versions, padded with JSON
/// whitespace to just under the contract's 4 MiB.
fn big_write(n: u32, ops: u32) -> Vec<u8> {
    let version = "v".repeat(128);
    let ops: Vec<Value> = (0..ops)
        .map(|k| json!({"op": "register", "addon_id": "big@x", "sha256": hash(n * 10_000 + k), "version": version}))
        .collect();
    let mut body = write(&format!("big-{n:03}"), &issued(), Value::Array(ops))
        .to_string()
        .into_bytes();
    let limit = shared::write::MAX_BODY_BYTES - 64;
    assert!(body.len() <= limit);
    body.resize(limit, b' ');
    body
}

#[tokio::test]
async fn a_backlog_of_4_mib_messages_stays_within_the_memory_budget() {
    const BUDGET: u64 = 256 * 1024 * 1024;
    const MESSAGES: u32 = 300;
    // The node of its own: 1.2 GB of backlog is not for the shared broker.
    let node = tokio::task::spawn_blocking(RabbitNode::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let mut broker = TestBroker::new();
    broker.url = node.amqp_url();
    let amo = Amo::connect(&broker).await;
    let ids: Vec<String> = (0..MESSAGES).map(|n| format!("big-{n:03}")).collect();
    for n in 0..MESSAGES {
        // Mostly padding; every 30th is as dense in ops as 4 MiB allows.
        let ops = if n % 30 == 0 { 10_000 } else { 100 };
        amo.publish_raw(&big_write(n, ops), Some(&ids[n as usize]))
            .await;
    }
    drop(amo);

    let budget = [("ADDONREG_MEMORY_BUDGET_BYTES", BUDGET.to_string())];
    let mut worker = worker_with(&db, &broker, free_port(), &budget);
    let receipts = wait_for_receipts(&db, &ids, Duration::from_secs(300)).await;
    let peak = peak_rss(worker.pid());
    eprintln!(
        "peak RSS {} MiB for a budget of {} MiB",
        peak >> 20,
        BUDGET >> 20
    );
    assert!(
        receipts.values().all(|(s, _)| s == "applied"),
        "{receipts:?}"
    );
    assert!(
        peak < BUDGET,
        "peak RSS {peak} bytes over the budget of {BUDGET}"
    );
    wait_depth(
        &broker,
        &broker.topology().writes_queue,
        0,
        Duration::from_secs(30),
    )
    .await;
    let status = worker.terminate();
    assert!(status.success(), "{status:?}");
}
