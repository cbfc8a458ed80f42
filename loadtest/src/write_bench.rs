//! The write-path benchmark: a backlog of AMO-shaped writes (persistent, with
//! confirms) drained by N real workers, timed from their start until every
//! write has a receipt, then checked.

use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use serde_json::{Value, json};

use shared::topology::WRITE_ROUTING_KEY;

use crate::BenchError;
use crate::env::{Scratch, Target};

/// Publishes in flight at once while filling the backlog.
const IN_FLIGHT: usize = 1_000;

/// One measurement's shape.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Scenario {
    /// Ops in each message.
    pub ops_per_message: usize,
    /// Messages in the backlog.
    pub messages: usize,
    /// Worker processes draining it.
    pub workers: usize,
    /// The workers' `--batch-max-messages`; their default when `None`.
    pub batch_max_messages: Option<usize>,
}

/// What one scenario measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Measured {
    /// The shape.
    pub scenario: Scenario,
    /// Seconds from the workers' start to the last receipt.
    pub seconds: f64,
    /// Backlog publish rate (messages/s), for context.
    pub publish_per_sec: f64,
}

impl Measured {
    /// Ops committed per second.
    pub fn ops_per_sec(&self) -> f64 {
        (self.scenario.messages * self.scenario.ops_per_message) as f64 / self.seconds
    }

    /// Messages committed per second.
    pub fn messages_per_sec(&self) -> f64 {
        self.scenario.messages as f64 / self.seconds
    }
}

/// The `i`-th message: distinct pairs (like a backfill), `ops` registers.
fn message(i: usize, ops: usize) -> Value {
    let ops: Vec<Value> = (0..ops)
        .map(|j| {
            json!({"op": "register", "addon_id": format!("addon{}@loadtest", i % 1000),
                   "sha256": format!("{:064x}", i * ops + j), "version": "1.0"})
        })
        .collect();
    json!({"v": 1, "write_id": format!("bench-{i}"), "issued_at": "2026-11-22T10:00:00.000001Z", "ops": ops})
}

/// Runs one scenario in a scratch environment of its own.
pub async fn run(
    target: &Target,
    scenario: Scenario,
    limit: Duration,
) -> Result<Measured, BenchError> {
    let scratch = Scratch::create(target).await?;
    let result = measure(target, &scratch, scenario, limit).await;
    scratch.drop().await?;
    result
}

async fn measure(
    target: &Target,
    scratch: &Scratch,
    scenario: Scenario,
    limit: Duration,
) -> Result<Measured, BenchError> {
    let publisher = scratch.broker.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = Instant::now();
    for chunk in (0..scenario.messages).collect::<Vec<_>>().chunks(IN_FLIGHT) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let body = message(i, scenario.ops_per_message).to_string();
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(format!("bench-{i}").into());
            confirms.push(
                publisher
                    .basic_publish(
                        scratch.topology.writes_exchange.as_str().into(),
                        WRITE_ROUTING_KEY.into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        properties,
                    )
                    .await?,
            );
        }
        for confirmation in try_join_all(confirms).await? {
            if !confirmation.is_ack() {
                return Err(BenchError::Check("the broker refused a write".into()));
            }
        }
    }
    let publish_per_sec = scenario.messages as f64 / started.elapsed().as_secs_f64();

    let batch_args: Vec<String> = scenario
        .batch_max_messages
        .map(|n| vec!["--batch-max-messages".into(), n.to_string()])
        .unwrap_or_default();
    let started = Instant::now();
    let _workers: Vec<_> = (0..scenario.workers)
        .map(|_| scratch.start_worker(target, &batch_args))
        .collect::<Result<_, _>>()?;
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM receipts")
            .fetch_one(&scratch.pool)
            .await?;
        if done as usize >= scenario.messages {
            break;
        }
        if started.elapsed() > limit {
            return Err(BenchError::Timeout(format!(
                "{done} of {} receipts after {limit:?}",
                scenario.messages
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();

    let (applied, records): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM receipts WHERE status = 'applied'), (SELECT count(*) FROM records)",
    )
    .fetch_one(&scratch.pool)
    .await?;
    let expected = (scenario.messages * scenario.ops_per_message) as i64;
    if applied as usize != scenario.messages || records != expected {
        return Err(BenchError::Check(format!(
            "{applied} applied of {} writes, {records} records of {expected}",
            scenario.messages
        )));
    }
    Ok(Measured {
        scenario,
        seconds,
        publish_per_sec,
    })
}

#[derive(Debug, clap::Args)]
pub struct WriteBenchArgs {
    #[command(flatten)]
    pub target: crate::env::TargetArgs,
    /// Single-op messages per scenario.
    #[arg(long, default_value_t = 20_000)]
    pub single_messages: usize,
    /// Bulk messages per scenario.
    #[arg(long, default_value_t = 100)]
    pub bulk_messages: usize,
    /// Ops in each bulk message.
    #[arg(long, default_value_t = 1_000)]
    pub bulk_ops: usize,
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    /// Longest a scenario may take to drain, in seconds.
    #[arg(long, default_value_t = 300)]
    pub limit_secs: u64,
}

pub async fn command(args: WriteBenchArgs) -> Result<(), crate::BenchError> {
    let target = args.target.target();
    let limit = Duration::from_secs(args.limit_secs);
    let queue = crate::baseline::quorum_queue(&target, args.single_messages).await?;
    let upsert =
        crate::baseline::upsert_rows_per_sec(&target, args.bulk_messages * args.bulk_ops).await?;
    let mut runs = Vec::new();
    for (ops_per_message, messages) in [
        (1, args.single_messages),
        (args.bulk_ops, args.bulk_messages),
    ] {
        for &workers in &args.workers {
            let scenario = Scenario {
                ops_per_message,
                messages,
                workers,
                batch_max_messages: None,
            };
            eprintln!("running {ops_per_message}-op messages x{messages}, {workers} worker(s)");
            runs.push(run(&target, scenario, limit).await?);
        }
    }
    crate::report::print_writes(queue, upsert, &runs);
    Ok(())
}
