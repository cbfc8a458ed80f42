//! `loadtest backfill`: N records loaded through the real write path, as a
//! first import would be: 1,000-op register messages published with
//! confirms to a scratch stack that N real workers drain while it fills,
//! timed from the first publish until every receipt is `applied`. Like AMO's
//! launch-day import, each message carries its files' real registration
//! time: `issued_at`s spread over the last [`HISTORY`], oldest first. Every
//! one must be `applied` (compaction is per pair, never by the clock).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use shared::domain::Timestamp;

use crate::BenchError;
use crate::env::{Scratch, Target};
use crate::publish::{self, Outgoing, Publisher};

/// How far back the backfilled registrations go.
pub const HISTORY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// `issued_at` of the `i`-th of `messages`: spread evenly over [`HISTORY`]
/// before `now`, oldest first.
pub fn issued_at(now: Timestamp, i: usize, messages: usize) -> Timestamp {
    let span = HISTORY.as_micros() as i64;
    let behind = span - span / messages.max(1) as i64 * i as i64;
    chrono::DateTime::from_timestamp_micros(now.unix_micros() - behind)
        .map_or(now, Timestamp::from_utc)
}

/// What to load.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Backfill {
    /// Records (distinct pairs), one register op each.
    pub records: usize,
    /// Ops per message.
    pub ops_per_message: usize,
    /// Worker processes.
    pub workers: usize,
    /// Longest the whole load may take.
    pub max: Duration,
}

/// What a backfill measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Backfilled {
    /// The shape.
    pub backfill: Backfill,
    /// Messages published.
    pub messages: usize,
    /// Seconds to publish them, confirms included.
    pub publish_seconds: f64,
    /// Seconds from the first publish to the last `applied` receipt.
    pub seconds: f64,
    /// Records in the database afterwards.
    pub records_found: i64,
}

impl Backfilled {
    /// Ops committed per second, end to end.
    pub fn ops_per_sec(&self) -> f64 {
        self.backfill.records as f64 / self.seconds
    }
}

/// The `i`-th message: registers of records `i * ops ..` (at most `records`).
fn message(i: usize, ops: usize, records: usize, issued_at: Timestamp) -> Outgoing {
    message_of("backfill", i, ops, records, issued_at)
}

/// [`message`] with write ids `<run>-<i>`.
pub fn message_of(
    run: &str,
    i: usize,
    ops: usize,
    records: usize,
    issued_at: Timestamp,
) -> Outgoing {
    let write_id = format!("{run}-{i}");
    let mut body = String::with_capacity(ops * 150 + 128);
    let _ = write!(
        body,
        "{{\"v\":1,\"write_id\":\"{write_id}\",\"issued_at\":\"{issued_at}\",\"ops\":["
    );
    for (n, k) in (i * ops..((i + 1) * ops).min(records)).enumerate() {
        if n > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            "{{\"op\":\"register\",\"addon_id\":\"addon{}@backfill\",\"sha256\":\"{k:064x}\",\"version\":\"1.0\"}}",
            k % 10_000
        );
    }
    body.push_str("]}");
    Outgoing {
        message_id: write_id,
        body: body.into_bytes(),
    }
}

/// Runs a backfill in a scratch stack of its own.
pub async fn run(target: &Target, backfill: Backfill) -> Result<Backfilled, BenchError> {
    let scratch = Scratch::create(target).await?;
    let result = load(target, &scratch, backfill).await;
    scratch.drop().await?;
    result
}

async fn load(
    target: &Target,
    scratch: &Scratch,
    backfill: Backfill,
) -> Result<Backfilled, BenchError> {
    let ops = backfill.ops_per_message.max(1);
    let messages = backfill.records.div_ceil(ops);
    // Killed when this function returns, before the database is dropped.
    let _workers = (0..backfill.workers)
        .map(|_| scratch.start_worker(target, &[]))
        .collect::<Result<Vec<_>, _>>()?;
    let publisher =
        Publisher::open(&scratch.broker, &scratch.topology.writes_exchange, None).await?;
    let now = Timestamp::now();
    let started = Instant::now();
    let deadline = started + backfill.max;
    publisher
        .publish_all(
            (0..messages).map(|i| message(i, ops, backfill.records, issued_at(now, i, messages))),
            messages as u64,
            deadline,
        )
        .await?;
    let publish_seconds = started.elapsed().as_secs_f64();

    let bar = publish::bar(backfill.records as u64, "applied");
    loop {
        let (applied, other): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'applied'), count(*) FILTER (WHERE status <> 'applied') \
             FROM receipts",
        )
        .fetch_one(&scratch.pool)
        .await?;
        bar.set_position(((applied as usize) * ops).min(backfill.records) as u64);
        if other > 0 {
            bar.abandon();
            return Err(BenchError::Check(format!(
                "{other} receipts are not applied"
            )));
        }
        if applied as usize >= messages {
            break;
        }
        if Instant::now() > deadline {
            bar.abandon();
            return Err(BenchError::Timeout(format!(
                "{applied} of {messages} writes applied after {:?}",
                backfill.max
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish();

    let (records_found, registered): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'registered') FROM records",
    )
    .fetch_one(&scratch.pool)
    .await?;
    if records_found as usize != backfill.records || registered != records_found {
        return Err(BenchError::Check(format!(
            "{records_found} records ({registered} registered), expected {}",
            backfill.records
        )));
    }
    Ok(Backfilled {
        backfill,
        messages,
        publish_seconds,
        seconds,
        records_found,
    })
}

#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub target: crate::env::TargetArgs,
    /// Records loaded (one register op each).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: usize,
    /// Ops per message.
    #[arg(long, default_value_t = 1_000)]
    pub ops_per_message: usize,
    /// Workers started.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Longest the load may take.
    #[arg(long, default_value_t = 300)]
    pub max_seconds: u64,
}

pub async fn command(args: BackfillArgs) -> Result<(), BenchError> {
    crate::env::require_loopback("--amqp-url", &args.target.amqp_url)?;
    crate::env::require_loopback("--admin-url", &args.target.admin_url)?;
    if !(1..=shared::write::MAX_OPS).contains(&args.ops_per_message) {
        return Err(BenchError::Refused("--ops-per-message 1 to 10000".into()));
    }
    let target = args.target.target();
    let shape = Backfill {
        records: args.records,
        ops_per_message: args.ops_per_message,
        workers: args.workers,
        max: Duration::from_secs(args.max_seconds),
    };
    eprintln!(
        "backfill: {} records in {}-op messages, {} worker(s)",
        shape.records, shape.ops_per_message, shape.workers
    );
    let done = run(&target, shape).await?;
    crate::report::print_backfill(&done);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::write::WriteMessage;

    #[test]
    fn messages_are_valid_and_cover_every_record_once() {
        let records: usize = 2_500;
        let mut seen = std::collections::BTreeSet::new();
        let now = Timestamp::now();
        let messages = records.div_ceil(1_000);
        for i in 0..messages {
            let out = message(i, 1_000, records, issued_at(now, i, messages));
            let parsed = WriteMessage::parse(&out.body).unwrap();
            let age = now.unix_micros() - parsed.issued_at.unix_micros();
            assert!(
                age > 0 && age as u128 <= HISTORY.as_micros(),
                "within the history"
            );
            if i == 0 {
                assert!(age as u128 > HISTORY.as_micros() * 9 / 10, "years old");
            }
            assert_eq!(parsed.write_id.as_str(), out.message_id);
            for op in parsed.ops {
                assert!(seen.insert(op.pair), "each pair once");
            }
        }
        assert_eq!(seen.len(), records);
    }
}
