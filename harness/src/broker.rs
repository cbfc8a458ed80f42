//! A RabbitMQ name prefix of one test, and the deletion of its names.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
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
