//! Publishing as AMO does (README, "How AMO publishes a write"): persistent
//! JSON, `message_id` = `write_id`, mandatory, to `<prefix>.writes` with
//! key `write`, every publisher confirm awaited. A bounded window of
//! confirms is in flight, optionally paced to a rate, with a progress bar.

use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use shared::topology::WRITE_ROUTING_KEY;

use crate::BenchError;

/// Most publishes awaiting their confirm at once.
const IN_FLIGHT: usize = 1_000;
/// Most body bytes awaiting confirms at once: 1,000-op messages are ~150 KB,
/// and a window of 1,000 of them would hold 150 MB in the client.
const IN_FLIGHT_BYTES: usize = 16 * 1024 * 1024;

/// One message to publish.
pub struct Outgoing {
    /// The AMQP `message_id` (the write's id, or a poison message's).
    pub message_id: String,
    /// The body as sent.
    pub body: Vec<u8>,
}

/// A confirm-mode channel publishing to the writes exchange.
pub struct Publisher {
    channel: Channel,
    exchange: String,
    /// Messages per second, or as fast as confirms allow.
    rate: Option<f64>,
}

impl Publisher {
    /// Opens a channel in confirm mode. It declares nothing: on a running
    /// stack, AMO's user may only publish.
    pub async fn open(
        broker: &Connection,
        exchange: &str,
        rate: Option<f64>,
    ) -> Result<Self, BenchError> {
        let channel = broker.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            exchange: exchange.to_string(),
            rate: rate.filter(|r| *r > 0.0),
        })
    }

    /// Publishes every message and waits for each confirm; fails on a nack,
    /// an unroutable message, or when `deadline` passes. Returns the
    /// messages published.
    pub async fn publish_all(
        &self,
        messages: impl IntoIterator<Item = Outgoing>,
        total: u64,
        deadline: Instant,
    ) -> Result<u64, BenchError> {
        let bar = bar(total, "publishing");
        let started = Instant::now();
        // With a rate, confirms are checked at least ten times a second.
        let window = match self.rate {
            Some(rate) => ((rate / 10.0) as usize).clamp(1, IN_FLIGHT),
            None => IN_FLIGHT,
        };
        let mut pending = Vec::with_capacity(window);
        let mut pending_bytes = 0;
        let mut sent = 0u64;
        for message in messages {
            if let Some(rate) = self.rate {
                let due = started + Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            if Instant::now() > deadline {
                bar.abandon();
                return Err(BenchError::Timeout(format!(
                    "published {sent} of {total} messages before --max-seconds"
                )));
            }
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(message.message_id.as_str().into());
            pending_bytes += message.body.len();
            pending.push(
                self.channel
                    .basic_publish(
                        self.exchange.as_str().into(),
                        WRITE_ROUTING_KEY.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &message.body,
                        properties,
                    )
                    .await?,
            );
            sent += 1;
            if pending.len() >= window || pending_bytes >= IN_FLIGHT_BYTES {
                confirmed(std::mem::take(&mut pending)).await?;
                pending_bytes = 0;
                bar.set_position(sent);
            }
        }
        confirmed(pending).await?;
        bar.set_position(sent);
        bar.finish();
        Ok(sent)
    }
}

async fn confirmed(pending: Vec<lapin::PublisherConfirm>) -> Result<(), BenchError> {
    for confirmation in try_join_all(pending).await? {
        match confirmation {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(_)) => {
                return Err(BenchError::Check(
                    "the broker returned a write: no queue is bound to the writes exchange".into(),
                ));
            }
            Confirmation::Nack(_) | Confirmation::NotRequested => {
                return Err(BenchError::Check("the broker refused a write".into()));
            }
        }
    }
    Ok(())
}

/// A progress bar on stderr; indicatif hides it when stderr is not a
/// terminal (tests, CI, redirected runs).
pub fn bar(total: u64, what: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(total).with_prefix(what);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}
