//! `loadtest backfill`: N records loaded through the real write path, as a
//! first import would be: 1,000-op register messages published with
//! confirms to a scratch stack that N real workers drain while it fills,
//! timed from the first publish until every receipt is `applied`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::BenchError;
use crate::env::{Scratch, Target};
use crate::publish::{self, Outgoing, Publisher};

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
fn message(i: usize, ops: usize, records: usize) -> Outgoing {
    let write_id = format!("backfill-{i}");
    let mut body = String::with_capacity(ops * 150 + 128);
    let _ = write!(
        body,
        "{{\"v\":1,\"write_id\":\"{write_id}\",\"issued_at\":\"2026-11-22T10:00:00.000001Z\",\"ops\":["
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
    let started = Instant::now();
    let deadline = started + backfill.max;
    publisher
        .publish_all(
            (0..messages).map(|i| message(i, ops, backfill.records)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use shared::write::WriteMessage;

    #[test]
    fn messages_are_valid_and_cover_every_record_once() {
        let records: usize = 2_500;
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..records.div_ceil(1_000) {
            let out = message(i, 1_000, records);
            let parsed = WriteMessage::parse(&out.body).unwrap();
            assert_eq!(parsed.write_id.as_str(), out.message_id);
            for op in parsed.ops {
                assert!(seen.insert(op.pair), "each pair once");
            }
        }
        assert_eq!(seen.len(), records);
    }
}
