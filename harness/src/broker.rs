//! A RabbitMQ name prefix of one test, and the deletion of its names.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use shared::settings::Prefix;
use shared::topology::Topology;

/// The broker tests use; `ADDONREG_TEST_AMQP_URL` overrides it.
pub fn amqp_url() -> String {
    std::env::var("ADDONREG_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A unique prefix (`test-<random>`) whose topology is deleted on drop.
pub struct TestBroker {
    /// The prefix to configure processes with.
    pub prefix: Prefix,
    /// The broker's URL.
    pub url: String,
}

impl TestBroker {
    /// A new prefix; nothing is declared yet.
    pub fn new() -> Self {
        let prefix = format!("test-{}", crate::unique())
            .parse()
            .expect("generated prefix is valid");
        Self {
            prefix,
            url: amqp_url(),
        }
    }

    /// The contract's names under this prefix.
    pub fn topology(&self) -> Topology {
        Topology::new(&self.prefix)
    }

    /// A fresh connection to the broker.
    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ (is it running? infra/local/services ensure)")
    }
}

impl Default for TestBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let (url, topology) = (self.url.clone(), self.topology());
        crate::block_on_own_runtime(async move {
            let deleted = async {
                let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
                let channel = conn.create_channel().await?;
                for queue in [&topology.writes_queue, &topology.dead_queue] {
                    channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await?;
                }
                for exchange in [&topology.writes_exchange, &topology.invalidations_exchange] {
                    channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await?;
                }
                conn.close(shared::topology::REPLY_SUCCESS, "test done".into())
                    .await
            };
            if let Err(e) = deleted.await {
                eprintln!("harness: could not delete the test's RabbitMQ names: {e}");
            }
        });
    }
}

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
