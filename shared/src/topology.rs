//! The RabbitMQ topology of the contract, as data, declared idempotently.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::settings::Prefix;

/// Routing key AMO publishes writes with.
pub const WRITE_ROUTING_KEY: &str = "write";
/// Header carrying a dead-lettered message's reason.
pub const REASON_HEADER: &str = "x-addonreg-reason";
/// Header of an invalidation event: when the worker committed the change,
/// in microseconds since the Unix epoch, so gateways can measure freshness.
pub const COMMITTED_AT_HEADER: &str = "x-addonreg-committed-at";
/// Backstop redelivery limit on the writes queue, set by the broker policy
/// `addonreg-writes` (`infra/rabbitmq/definitions.json`), never as a queue
/// argument: an argument could not change without PRECONDITION_FAILED on every
/// worker's declare. The contract asks for at least 50; RabbitMQ 4 would
/// otherwise apply 20, and crash redeliveries count.
pub const DELIVERY_LIMIT: i64 = 1_000;

/// AMQP's reply code for a normal close.
pub const REPLY_SUCCESS: u16 = 200;

/// Every exchange and queue name under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Direct exchange AMO publishes to (`<prefix>.writes`).
    pub writes_exchange: String,
    /// Quorum queue the workers consume (`<prefix>.writes`).
    pub writes_queue: String,
    /// Queue of rejected writes (`<prefix>.writes.dead`).
    pub dead_queue: String,
    /// Fanout exchange of invalidation events (`<prefix>.invalidations`).
    pub invalidations_exchange: String,
}

impl Topology {
    /// The names under `prefix`.
    pub fn new(prefix: &Prefix) -> Self {
        Self {
            writes_exchange: format!("{prefix}.writes"),
            writes_queue: format!("{prefix}.writes"),
            dead_queue: format!("{prefix}.writes.dead"),
            invalidations_exchange: format!("{prefix}.invalidations"),
        }
    }

    /// Deletes the queues and exchanges [`Topology::declare`] made, messages
    /// and all: for scratch prefixes (tests, benchmarks), never a live one.
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for queue in [&self.writes_queue, &self.dead_queue] {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [&self.writes_exchange, &self.invalidations_exchange] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Declares the whole topology; safe to repeat (after every reconnect).
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.writes_exchange.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.invalidations_exchange.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(
                self.dead_queue.as_str().into(),
                durable_queue,
                quorum_args(),
            )
            .await?;
        channel
            .queue_declare(
                self.writes_queue.as_str().into(),
                durable_queue,
                quorum_args(),
            )
            .await?;
        channel
            .queue_bind(
                self.writes_queue.as_str().into(),
                self.writes_exchange.as_str().into(),
                WRITE_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}

/// Delivery limit of the dead queue, set by the broker policy
/// `addonreg-writes-dead`: every `dlq list` returns its messages and counts
/// as a delivery; RabbitMQ 4's default of 20 would silently drop dead letters
/// that SREs merely looked at.
pub const DEAD_DELIVERY_LIMIT: i64 = 1_000_000;

/// The only argument a queue is declared with: its type, which can never
/// change anyway. Everything tunable (delivery limit, dead-lettering, overflow)
/// comes from a policy, which applies to the existing queue when it changes;
/// a declared argument would take precedence over the policy and make every
/// later change a PRECONDITION_FAILED for the workers (docs/deployment.md).
fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), long_string("quorum"));
    args
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let t = Topology::new(&"addonreg".parse().unwrap());
        assert_eq!(t.writes_exchange, "addonreg.writes");
        assert_eq!(t.writes_queue, "addonreg.writes");
        assert_eq!(t.dead_queue, "addonreg.writes.dead");
        assert_eq!(t.invalidations_exchange, "addonreg.invalidations");
    }

    #[test]
    fn queues_are_declared_with_their_type_only() {
        let args = quorum_args();
        let keys: Vec<String> = args.inner().keys().map(|k| k.to_string()).collect();
        assert_eq!(
            keys,
            ["x-queue-type"],
            "delivery limit and dead-lettering belong in a policy"
        );
    }
}
