//! What the worker's tests share on top of the harness.

use harness::{TestBroker, TestDb, TestProcess};

/// Starts the real `write-worker` binary against a test's database and broker.
pub fn start_worker(
    db: &TestDb,
    broker: &TestBroker,
    metrics_port: u16,
    args: &[&str],
) -> TestProcess {
    TestProcess::start(
        env!("CARGO_BIN_EXE_write-worker"),
        args,
        &[
            ("ADDONREG_DATABASE_URL", db.url_as("addonreg_worker")),
            ("ADDONREG_AMQP_URL", broker.url.clone()),
            ("ADDONREG_PREFIX", broker.prefix.to_string()),
            (
                "ADDONREG_METRICS_LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            ),
        ],
    )
}

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{Value, json};

/// Publishes as AMO does: persistent, JSON, `message_id` = write id, confirmed.
pub struct Amo {
    _connection: Connection,
    channel: Channel,
    exchange: String,
}

impl Amo {
    /// Connects and declares the topology (as infra would have).
    pub async fn connect(broker: &TestBroker) -> Self {
        let connection = broker.connect().await;
        let channel = connection.create_channel().await.unwrap();
        broker.topology().declare(&channel).await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            _connection: connection,
            channel,
            exchange: broker.topology().writes_exchange,
        }
    }

    /// Publishes one body with an optional message id and waits for the confirm.
    pub async fn publish_raw(&self, body: &[u8], message_id: Option<&str>) {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                "write".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "broker confirms the write");
    }

    /// Publishes a write message (its `write_id` as message id).
    pub async fn publish(&self, message: &Value) {
        let id = message["write_id"].as_str().map(str::to_string);
        self.publish_raw(message.to_string().as_bytes(), id.as_deref())
            .await;
    }
}

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

/// Makes the broker close every connection whose name mentions `prefix` (the
/// workers' own): what a broker restart or a network cut does to them.
/// Answers how many it closed.
pub fn close_broker_connections(prefix: &str) -> usize {
    let listing = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .expect("run rabbitmqctl (as root, beside the broker)");
    let text = String::from_utf8_lossy(&listing.stdout);
    let pids: Vec<&str> = text
        .lines()
        .filter(|line| line.contains(prefix))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for pid in &pids {
        let status = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "test: connection cut", "-q"])
            .status()
            .expect("run rabbitmqctl");
        assert!(status.success(), "close_connection {pid}");
    }
    pids.len()
}

/// Messages ready in a queue.
pub async fn queue_depth(broker: &TestBroker, queue: &str) -> u32 {
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count();
    channel.close(0, "done".into()).await.ok();
    conn.close(0, "done".into()).await.ok();
    count
}
