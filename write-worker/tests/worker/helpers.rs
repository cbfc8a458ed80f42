//! What the worker's tests share on top of the harness.

pub use harness::broker::{Amo, close_broker_connections, queue_depth};
use harness::{Launch, TestBroker, TestDb, TestProcess};

/// Starts the real `write-worker` binary against a test's database and broker.
pub fn start_worker(
    db: &TestDb,
    broker: &TestBroker,
    metrics_port: u16,
    args: &[&str],
) -> TestProcess {
    TestProcess::launch(&worker(db, broker, metrics_port).args(args))
}

/// How [`start_worker`] launches a worker, for a test that adds settings.
pub fn worker(db: &TestDb, broker: &TestBroker, metrics_port: u16) -> Launch {
    Launch::worker(
        env!("CARGO_BIN_EXE_write-worker"),
        &db.url_as("addonreg_worker"),
        &broker.url,
        broker.prefix.as_str(),
    )
    .set(
        "ADDONREG_METRICS_LISTEN",
        &format!("127.0.0.1:{metrics_port}"),
    )
}

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};

/// A v1 write message.
pub fn write(write_id: &str, issued_at: &str, ops: Value) -> Value {
    json!({"v": 1, "write_id": write_id, "issued_at": issued_at, "ops": ops})
}

/// `issued_at` n seconds after a fixed instant.
pub fn at(seconds: u32) -> String {
    format!(
        "2026-11-22T10:{:02}:{:02}.000001Z",
        seconds / 60 % 60,
        seconds % 60
    )
}

/// `issued_at` this long before now: tests take their dates relative to
/// the clock, so none ages past a retention.
pub fn ago(d: Duration) -> String {
    let t = chrono::Utc::now() - chrono::Duration::from_std(d).expect("in range");
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A parsed write message.
pub fn parse(v: Value) -> shared::write::WriteMessage {
    shared::write::WriteMessage::parse(v.to_string().as_bytes()).expect("a valid write")
}

/// A digest made from a number.
pub fn hash(n: u32) -> String {
    format!("{n:064x}")
}

/// Waits until every id has a receipt; answers id → (status, reason).
pub async fn wait_for_receipts(
    db: &TestDb,
    ids: &[String],
    limit: Duration,
) -> HashMap<String, (String, Option<String>)> {
    let deadline = Instant::now() + limit;
    loop {
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT write_id, status, reason FROM receipts WHERE write_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&db.owner)
        .await
        .unwrap();
        if rows.len() == ids.len() {
            return rows.into_iter().map(|(id, s, r)| (id, (s, r))).collect();
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} receipts within {limit:?}",
            rows.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stored record, as (status, version, registered_at, updated_at) text.
pub type StoredRecord = (String, Option<String>, Option<String>, String);

/// Every stored row: (addon_id, sha256 hex) → record; tombstones have status `deleted`.
pub async fn stored_records(db: &TestDb) -> HashMap<(String, String), StoredRecord> {
    type Row = (
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT addon_id, encode(sha256, 'hex'), status, version, \
                to_char(registered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
         FROM records",
    )
    .fetch_all(&db.owner)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(a, h, s, v, r, u)| ((a, h), (s, v, r, u)))
        .collect()
}

/// A queue bound to the invalidations exchange, as a gateway's would be.
pub struct EventTap {
    consumer: lapin::Consumer,
    _connection: Connection,
}

impl EventTap {
    /// Binds an exclusive queue to the invalidations exchange.
    pub async fn bind(broker: &TestBroker) -> Self {
        let connection = broker.connect().await;
        let channel = connection.create_channel().await.unwrap();
        broker.topology().declare(&channel).await.unwrap();
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare("".into(), exclusive, FieldTable::default())
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().clone(),
                broker.topology().invalidations_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            consumer,
            _connection: connection,
        }
    }

    /// The next event, within `limit`.
    pub async fn next(&mut self, limit: Duration) -> shared::event::InvalidationEvent {
        let delivery = tokio::time::timeout(limit, self.consumer.next())
            .await
            .expect("an invalidation event in time")
            .expect("stream open")
            .expect("delivery");
        serde_json::from_slice(&delivery.data).expect("event is contract JSON")
    }
}
