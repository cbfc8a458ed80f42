//! `loadtest writes`: publishes the mix (`mix`) to a stack, waits for every
//! receipt, then checks the stack against the contract: each touched pair's
//! record equals the fold of the ops sent for it, each op is kept exactly
//! once, each write id has one receipt of the right kind, and the dead
//! queue holds every poison message (with its reason) and no valid write.
//!
//! The stack is either a scratch one (database, prefix and workers of its
//! own, removed afterwards) or a running one, which is only read: its dead
//! letters are put back where they were.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use shared::settings::Prefix;
use shared::topology::{REASON_HEADER, REPLY_SUCCESS, Topology};
use shared::write::Action;

use crate::BenchError;
use crate::env::{Scratch, Target};
use crate::mix::{self, PairKey, Plan};
use crate::publish::{self, Publisher};

/// How long dead letters may trail the last receipt: a worker commits a
/// batch (receipts included) before it publishes the batch's dead letters.
const DEAD_LETTER_GRACE: Duration = Duration::from_secs(10);
/// Examples of each failure printed, to start an investigation from.
const EXAMPLES: usize = 5;

/// A stack to check: the owner's view of its database, a broker
/// connection, and its names.
pub struct Stack<'a> {
    /// Reads receipts and records (the owner or an admin).
    pub pool: &'a PgPool,
    /// Publishes the mix and reads the dead queue.
    pub broker: &'a Connection,
    /// The stack's names.
    pub topology: &'a Topology,
}

/// The bounds of a run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Bounds {
    /// Messages per second, or as fast as confirms allow.
    pub rate: Option<f64>,
    /// Longest the run may take, publishing and waiting together.
    pub max: Duration,
}

/// What went wrong, by kind; all zero on a correct stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Valid writes with no receipt, or with an op missing from its pair.
    pub lost: usize,
    /// Writes with an op kept twice in its pair's history.
    pub duplicated: usize,
    /// Valid writes found in the dead queue.
    pub wrongly_dead_lettered: usize,
    /// Poison messages not in the dead queue with their reason and body.
    pub poison_not_dead_lettered: usize,
    /// Pairs whose record (or tombstone) or kept ops differ from the fold
    /// of the ops sent, and pairs of the run that no valid write touched.
    pub records_differing: usize,
    /// Receipts missing, rejected for a valid write, not rejected for a
    /// poison message, unknown, or not `applied` for a write that holds
    /// its pair's newest op.
    pub receipts_wrong: usize,
}

impl Counts {
    /// Every count, with its name as printed.
    pub fn rows(&self) -> [(&'static str, usize); 6] {
        [
            ("lost", self.lost),
            ("duplicated effects", self.duplicated),
            ("wrongly dead-lettered", self.wrongly_dead_lettered),
            ("poison not dead-lettered", self.poison_not_dead_lettered),
            ("records differing from the fold", self.records_differing),
            ("receipts wrong", self.receipts_wrong),
        ]
    }

    /// Whether anything went wrong.
    pub fn any(&self) -> bool {
        self.rows().iter().any(|(_, n)| *n > 0)
    }
}

/// What a run published, measured and found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The run's tag (every id and add-on id starts with it).
    pub run: String,
    /// The mix's seed.
    pub seed: u64,
    /// Workers started, when the stack was a scratch one.
    pub workers: Option<usize>,
    /// Distinct valid writes.
    pub writes: usize,
    /// Their ops.
    pub ops: usize,
    /// Pairs they touched.
    pub pairs: usize,
    /// Writes published twice.
    pub duplicates: usize,
    /// Poison messages.
    pub poison: usize,
    /// Messages published in all.
    pub published: u64,
    /// Seconds to publish them (confirms included).
    pub publish_seconds: f64,
    /// Seconds from the first publish to the last receipt.
    pub seconds: f64,
    /// Whether `--max-seconds` passed before every receipt existed.
    pub timed_out: bool,
    /// The checks.
    pub counts: Counts,
}

/// Runs the mix on a scratch stack with `workers` real workers.
pub async fn run_scratch(
    target: &Target,
    workers: usize,
    plan: &Plan,
    seed: u64,
    bounds: Bounds,
) -> Result<Outcome, BenchError> {
    let scratch = Scratch::create(target).await?;
    let result = async {
        // Dropped (killed) when this block ends, before the database goes.
        let _workers = (0..workers)
            .map(|_| scratch.start_worker(target, &[]))
            .collect::<Result<Vec<_>, _>>()?;
        let stack = Stack {
            pool: &scratch.pool,
            broker: &scratch.broker,
            topology: &scratch.topology,
        };
        let mut outcome = run(&stack, plan, seed, bounds).await?;
        outcome.workers = Some(workers);
        Ok(outcome)
    }
    .await;
    scratch.drop().await?;
    result
}

/// Runs the mix on a running stack. Nothing is declared, purged or
/// dropped there: the run's writes stay (under its tag), and its poison
/// messages stay in the dead queue with every other dead letter.
pub async fn run_existing(
    database_url: &str,
    amqp_url: &str,
    prefix: &Prefix,
    plan: &Plan,
    seed: u64,
    bounds: Bounds,
) -> Result<Outcome, BenchError> {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(database_url)
        .await?;
    let broker = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let topology = Topology::new(prefix);
    let stack = Stack {
        pool: &pool,
        broker: &broker,
        topology: &topology,
    };
    let result = run(&stack, plan, seed, bounds).await;
    // The run's channels are still closing as they were dropped, and lapin
    // then reports the connection's close as failed: nothing is lost by it.
    let _ = broker.close(REPLY_SUCCESS, "loadtest done".into()).await;
    pool.close().await;
    result
}

/// Publishes the plan, waits for its receipts and checks everything.
pub async fn run(
    stack: &Stack<'_>,
    plan: &Plan,
    seed: u64,
    bounds: Bounds,
) -> Result<Outcome, BenchError> {
    let dead = DeadQueue::open(stack).await?;
    let dead_before = dead.count().await?;
    let started = Instant::now();
    let deadline = started + bounds.max;
    let publisher =
        Publisher::open(stack.broker, &stack.topology.writes_exchange, bounds.rate).await?;
    let published = publisher
        .publish_all(plan.outgoing(), plan.publishes() as u64, deadline)
        .await?;
    let publish_seconds = started.elapsed().as_secs_f64();

    let expected_receipts = (plan.writes.len() + plan.poison.len()) as u64;
    let tag = format!("{}-%", plan.run);
    let bar = publish::bar(expected_receipts, "receipts");
    let mut timed_out = false;
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM receipts WHERE write_id LIKE $1")
            .bind(&tag)
            .fetch_one(stack.pool)
            .await?;
        bar.set_position(done as u64);
        if done as u64 >= expected_receipts {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    if timed_out {
        bar.abandon();
        eprintln!(
            "timed out after {:?}: checking what arrived ({} of {expected_receipts} receipts)",
            bounds.max,
            bar.position()
        );
    } else {
        bar.finish();
    }

    let grace = Instant::now() + DEAD_LETTER_GRACE;
    let wanted = dead_before + plan.poison.len() as u32;
    while dead.count().await? < wanted && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let letters = dead.read_all().await?;

    let mut counts = Counts::default();
    check_dead_letters(plan, &letters, &mut counts);
    let pairs = check_store(stack.pool, plan, &mut counts).await?;
    Ok(Outcome {
        run: plan.run.clone(),
        seed,
        workers: None,
        writes: plan.writes.len(),
        ops: plan.ops(),
        pairs,
        duplicates: plan.duplicates(),
        poison: plan.poison.len(),
        published,
        publish_seconds,
        seconds,
        timed_out,
        counts,
    })
}

/// One dead letter as read.
pub struct DeadLetter {
    /// Its AMQP `message_id`.
    pub message_id: Option<String>,
    /// The worker's reason header.
    pub reason: Option<String>,
    /// Its body, as published.
    pub body: Vec<u8>,
}

impl DeadLetter {
    /// The dead letter `delivery` carries.
    pub fn of(delivery: lapin::message::Delivery) -> Self {
        let reason = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(REASON_HEADER))
            .and_then(|v| match v {
                AMQPValue::LongString(s) => Some(s.to_string()),
                AMQPValue::ShortString(s) => Some(s.to_string()),
                _ => None,
            });
        Self {
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string()),
            reason,
            body: delivery.data,
        }
    }
}

/// The dead queue, read without declaring it.
struct DeadQueue {
    channel: Channel,
    name: String,
}

impl DeadQueue {
    async fn open(stack: &Stack<'_>) -> Result<Self, BenchError> {
        Ok(Self {
            channel: stack.broker.create_channel().await?,
            name: stack.topology.dead_queue.clone(),
        })
    }

    /// Messages ready; the declare is passive.
    async fn count(&self) -> Result<u32, BenchError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let queue = self
            .channel
            .queue_declare(self.name.as_str().into(), passive, FieldTable::default())
            .await?;
        Ok(queue.message_count())
    }

    /// Every dead letter ready now, each put back afterwards (one nack with
    /// `multiple` and `requeue`), so a running stack's dead queue keeps
    /// what it held.
    async fn read_all(&self) -> Result<Vec<DeadLetter>, BenchError> {
        let ready = self.count().await?;
        let mut letters = Vec::new();
        let mut last_tag = None;
        for _ in 0..ready {
            let Some(got) = self
                .channel
                .basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            let delivery = got.delivery;
            last_tag = Some(delivery.delivery_tag);
            letters.push(DeadLetter::of(delivery));
        }
        if let Some(tag) = last_tag {
            self.channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await?;
        }
        Ok(letters)
    }
}

fn check_dead_letters(plan: &Plan, letters: &[DeadLetter], counts: &mut Counts) {
    let valid: BTreeSet<&str> = plan
        .writes
        .iter()
        .map(|w| w.message.write_id.as_str())
        .collect();
    let wrongly: BTreeSet<&str> = letters
        .iter()
        .filter_map(|l| l.message_id.as_deref())
        .filter(|id| valid.contains(id))
        .collect();
    report_examples("valid write dead-lettered", wrongly.iter());
    counts.wrongly_dead_lettered = wrongly.len();

    let by_id: HashMap<&str, Vec<&DeadLetter>> =
        letters.iter().fold(HashMap::new(), |mut map, l| {
            if let Some(id) = l.message_id.as_deref() {
                map.entry(id).or_insert_with(Vec::new).push(l);
            }
            map
        });
    let missing: Vec<String> = plan
        .poison
        .iter()
        .filter(|p| {
            let prefix = format!("{}: ", p.code);
            !by_id.get(p.message_id.as_str()).is_some_and(|found| {
                found.iter().any(|l| {
                    l.body == p.body && l.reason.as_deref().is_some_and(|r| r.starts_with(&prefix))
                })
            })
        })
        .map(|p| format!("{} (expected reason {})", p.message_id, p.code))
        .collect();
    report_examples("poison not dead-lettered with its reason", missing.iter());
    counts.poison_not_dead_lettered = missing.len();
}

/// A record row as stored.
struct Row {
    status: String,
    version: Option<String>,
    registered_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    ops: String,
}

/// Compares receipts and records with the plan; returns the pairs touched.
async fn check_store(pool: &PgPool, plan: &Plan, counts: &mut Counts) -> Result<usize, BenchError> {
    let tag = format!("{}-%", plan.run);
    let receipts: HashMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT write_id, status FROM receipts WHERE write_id LIKE $1",
    )
    .bind(&tag)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    type RowTuple = (
        String,
        String,
        String,
        Option<String>,
        Option<DateTime<Utc>>,
        DateTime<Utc>,
        String,
    );
    let mut rows: HashMap<PairKey, Row> = sqlx::query_as::<_, RowTuple>(
        "SELECT addon_id, encode(sha256, 'hex'), status, version, registered_at, updated_at, ops::text \
         FROM records WHERE addon_id LIKE $1",
    )
    .bind(&tag)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(addon, sha, status, version, registered_at, updated_at, ops)| {
        let row = Row {
            status,
            version,
            registered_at,
            updated_at,
            ops,
        };
        ((addon, sha), row)
    })
    .collect();

    let mut lost: BTreeSet<usize> = BTreeSet::new();
    let mut duplicated: BTreeSet<usize> = BTreeSet::new();
    let mut differing: Vec<String> = Vec::new();
    let mut receipts_wrong: Vec<String> = Vec::new();

    for (w, write) in plan.writes.iter().enumerate() {
        match receipts
            .get(write.message.write_id.as_str())
            .map(String::as_str)
        {
            None => {
                lost.insert(w);
            }
            Some("rejected") => {
                receipts_wrong.push(format!("{}: rejected", write.message.write_id))
            }
            Some(_) => {}
        }
    }
    for p in &plan.poison {
        match receipts.get(&p.message_id).map(String::as_str) {
            Some("rejected") => {}
            other => {
                receipts_wrong.push(format!("{}: poison with receipt {other:?}", p.message_id))
            }
        }
    }
    let known: BTreeSet<&str> = plan
        .writes
        .iter()
        .map(|w| w.message.write_id.as_str())
        .chain(plan.poison.iter().map(|p| p.message_id.as_str()))
        .collect();
    for id in receipts.keys().filter(|id| !known.contains(id.as_str())) {
        receipts_wrong.push(format!("{id}: receipt of a write never sent"));
    }

    let by_pair = plan.ops_by_pair();
    let pairs = by_pair.len();
    for (pair, ops) in &by_pair {
        let writes_of = || ops.values().map(|(_, w)| *w);
        // The newest op of a pair was the newest when its write was processed.
        if let Some((_, (_, w))) = ops.iter().next_back() {
            let id = plan.writes[*w].message.write_id.as_str();
            if let Some(status) = receipts.get(id).filter(|s| s.as_str() != "applied") {
                receipts_wrong.push(format!(
                    "{id}: {status}, but it holds the newest op of {pair:?}"
                ));
            }
        }
        let Some(row) = rows.remove(pair) else {
            lost.extend(writes_of());
            differing.push(format!("{pair:?}: no row"));
            continue;
        };
        let kept = match parse_kept(&row.ops) {
            Ok(kept) => kept,
            Err(e) => {
                differing.push(format!("{pair:?}: unreadable ops: {e}"));
                continue;
            }
        };
        let mut seen: HashMap<(i64, &str, u32), usize> = HashMap::new();
        for op in &kept {
            *seen.entry((op.t, op.w.as_str(), op.i)).or_default() += 1;
        }
        for (key, (action, w)) in ops {
            let k = (
                key.issued_at.unix_micros(),
                key.write_id.as_str(),
                key.index,
            );
            match seen.remove(&k) {
                None => {
                    lost.insert(*w);
                }
                Some(n) => {
                    if n > 1 {
                        duplicated.insert(*w);
                    }
                    let same = kept
                        .iter()
                        .find(|o| (o.t, o.w.as_str(), o.i) == k)
                        .is_some_and(|o| o.matches(action));
                    if !same {
                        differing.push(format!("{pair:?}: op {k:?} kept with other content"));
                    }
                }
            }
        }
        if !seen.is_empty() {
            differing.push(format!(
                "{pair:?}: ops never sent kept: {:?}",
                seen.keys().collect::<Vec<_>>()
            ));
        }
        let expected = mix::expected(ops);
        if let Some(problem) = compare(&row, expected.as_ref()) {
            differing.push(format!("{pair:?}: {problem}"));
        }
    }
    for pair in rows.keys() {
        differing.push(format!("{pair:?}: a record no valid write touched"));
    }

    report_examples(
        "lost write",
        lost.iter()
            .map(|w| plan.writes[*w].message.write_id.as_str()),
    );
    report_examples(
        "duplicated effect",
        duplicated
            .iter()
            .map(|w| plan.writes[*w].message.write_id.as_str()),
    );
    report_examples("record differing", differing.iter());
    report_examples("receipt wrong", receipts_wrong.iter());
    counts.lost = lost.len();
    counts.duplicated = duplicated.len();
    counts.records_differing = differing.len();
    counts.receipts_wrong = receipts_wrong.len();
    Ok(pairs)
}

/// Where a stored record differs from the contract's fold, if it does.
fn compare(row: &Row, expected: Option<&shared::record::RecordState>) -> Option<String> {
    let Some(state) = expected else {
        return (row.status != "deleted")
            .then(|| format!("{} where the fold gives a tombstone", row.status));
    };
    let want = (
        state.status.as_str(),
        state.version.as_ref().map(|v| v.as_str()),
        state.registered_at.map(|t| t.as_utc()),
        state.updated_at.as_utc(),
    );
    let got = (
        row.status.as_str(),
        row.version.as_deref(),
        row.registered_at,
        row.updated_at,
    );
    (want != got).then(|| format!("stored {got:?}, fold {want:?}"))
}

/// One op of `records.ops`: `{"t": micros, "w", "i", "op", "v"}`.
struct KeptOp {
    t: i64,
    w: String,
    i: u32,
    op: String,
    v: Option<String>,
}

impl KeptOp {
    fn matches(&self, action: &Action) -> bool {
        let version = match action {
            Action::Register { version } => version.as_ref().map(|v| v.as_str()),
            _ => None,
        };
        self.op == action.name() && self.v.as_deref() == version
    }
}

fn parse_kept(text: &str) -> Result<Vec<KeptOp>, String> {
    let Value::Array(items) = serde_json::from_str(text).map_err(|e| e.to_string())? else {
        return Err("not an array".into());
    };
    items
        .iter()
        .map(|item| {
            let field = |name: &str| item.get(name).ok_or_else(|| format!("no {name}"));
            Ok(KeptOp {
                t: field("t")?.as_i64().ok_or("t")?,
                w: field("w")?.as_str().ok_or("w")?.to_string(),
                i: field("i")?
                    .as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or("i")?,
                op: field("op")?.as_str().ok_or("op")?.to_string(),
                v: item.get("v").and_then(Value::as_str).map(str::to_string),
            })
        })
        .collect()
}

fn report_examples<T: std::fmt::Display>(what: &str, items: impl Iterator<Item = T>) {
    for item in items.take(EXAMPLES) {
        eprintln!("{what}: {item}");
    }
}

#[derive(Debug, clap::Args)]
pub struct WritesArgs {
    #[command(flatten)]
    pub target: crate::env::TargetArgs,
    /// Workers started on the scratch stack (not with --database-url).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Check a running stack instead of a scratch one: its database URL as
    /// the owner or an admin (receipts and records are only read). Needs
    /// --prefix, and an --amqp-url that may publish to `<prefix>.writes`
    /// and read `<prefix>.writes.dead` (e.g. a worker's).
    #[arg(long, requires = "prefix")]
    pub database_url: Option<String>,
    /// The running stack's prefix (with --database-url).
    #[arg(long, requires = "database_url")]
    pub prefix: Option<String>,
    /// Distinct valid writes published.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Share of the writes that carry --bulk-ops ops (at least one if > 0).
    #[arg(long, default_value_t = 0.005)]
    pub bulk_share: f64,
    /// Ops in a bulk write.
    #[arg(long, default_value_t = 1_000)]
    pub bulk_ops: usize,
    /// Share of the writes published twice (same id and body).
    #[arg(long, default_value_t = 0.05)]
    pub duplicate_share: f64,
    /// Share of ops that revoke.
    #[arg(long, default_value_t = 0.1)]
    pub revoke_share: f64,
    /// Share of ops that delete.
    #[arg(long, default_value_t = 0.05)]
    pub delete_share: f64,
    /// Invalid messages mixed in; each must be dead-lettered with its reason.
    #[arg(long, default_value_t = 100)]
    pub poison: usize,
    /// Messages per second; as fast as confirms allow when absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Longest the run may take, publishing and waiting together.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// Seed of the mix (printed with the results); random when absent.
    #[arg(long)]
    pub seed: Option<u64>,
}

pub async fn command(args: WritesArgs) -> Result<(), BenchError> {
    let shares = [
        args.bulk_share,
        args.duplicate_share,
        args.revoke_share,
        args.delete_share,
    ];
    if shares.iter().any(|s| !(0.0..=1.0).contains(s))
        || args.revoke_share + args.delete_share > 1.0
    {
        return Err(BenchError::Refused(
            "shares are between 0 and 1, and --revoke-share + --delete-share at most 1".into(),
        ));
    }
    if args.messages == 0 || !(1..=shared::write::MAX_OPS).contains(&args.bulk_ops) {
        return Err(BenchError::Refused(
            "--messages at least 1, --bulk-ops 1 to 10000".into(),
        ));
    }
    crate::env::require_loopback("--amqp-url", &args.target.amqp_url)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let settings = crate::mix::MixSettings {
        messages: args.messages,
        bulk_share: args.bulk_share,
        bulk_ops: args.bulk_ops,
        duplicate_share: args.duplicate_share,
        revoke_share: args.revoke_share,
        delete_share: args.delete_share,
        poison: args.poison,
        seed,
    };
    let bounds = Bounds {
        rate: args.rate,
        max: Duration::from_secs(args.max_seconds),
    };
    let plan = Plan::new(settings, shared::domain::Timestamp::now())?;
    eprintln!(
        "run {} (seed {seed}): {} writes ({} ops), {} published twice, {} poison",
        plan.run,
        plan.writes.len(),
        plan.ops(),
        plan.duplicates(),
        plan.poison.len()
    );
    let outcome = match (&args.database_url, &args.prefix) {
        (Some(database_url), Some(prefix)) => {
            crate::env::require_loopback("--database-url", database_url)?;
            let prefix: Prefix = prefix
                .parse()
                .map_err(|e: String| BenchError::Refused(format!("--prefix: {e}")))?;
            run_existing(
                database_url,
                &args.target.amqp_url,
                &prefix,
                &plan,
                seed,
                bounds,
            )
            .await?
        }
        _ => {
            crate::env::require_loopback("--admin-url", &args.target.admin_url)?;
            let target = args.target.target();
            run_scratch(&target, args.workers, &plan, seed, bounds).await?
        }
    };
    crate::report::print_check(&outcome);
    if outcome.counts.any() {
        return Err(BenchError::Check(
            "the stack broke the contract (see the counts above)".into(),
        ));
    }
    if outcome.timed_out {
        return Err(BenchError::Timeout(format!(
            "not every receipt arrived within {} s",
            args.max_seconds
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domain::{Timestamp, Version};
    use shared::record::{RecordState, Status};

    fn at(micros: i64) -> Timestamp {
        Timestamp::from_utc(DateTime::from_timestamp_micros(micros).unwrap())
    }

    fn row(status: &str, version: Option<&str>, registered: Option<i64>, updated: i64) -> Row {
        Row {
            status: status.into(),
            version: version.map(str::to_string),
            registered_at: registered.map(|t| at(t).as_utc()),
            updated_at: at(updated).as_utc(),
            ops: "[]".into(),
        }
    }

    #[test]
    fn compare_sees_every_field_and_tombstones() {
        let state = RecordState {
            status: Status::Revoked,
            version: Some(Version::parse("1.0").unwrap()),
            registered_at: Some(at(1)),
            updated_at: at(2),
        };
        assert_eq!(
            compare(&row("revoked", Some("1.0"), Some(1), 2), Some(&state)),
            None
        );
        for wrong in [
            row("registered", Some("1.0"), Some(1), 2),
            row("revoked", None, Some(1), 2),
            row("revoked", Some("1.0"), None, 2),
            row("revoked", Some("1.0"), Some(1), 3),
            row("deleted", Some("1.0"), Some(1), 2),
        ] {
            assert!(compare(&wrong, Some(&state)).is_some());
        }
        assert_eq!(compare(&row("deleted", None, None, 2), None), None);
        assert!(compare(&row("registered", None, None, 2), None).is_some());
    }

    #[test]
    fn kept_ops_read_the_stored_form() {
        let kept = parse_kept(
            r#"[{"t": 5, "w": "a", "i": 0, "op": "register", "v": "1.0"},
                {"t": 6, "w": "b", "i": 2, "op": "delete"}]"#,
        )
        .unwrap();
        assert_eq!((kept[0].t, kept[0].w.as_str(), kept[0].i), (5, "a", 0));
        assert!(kept[0].matches(&Action::Register {
            version: Some(Version::parse("1.0").unwrap())
        }));
        assert!(!kept[0].matches(&Action::Register { version: None }));
        assert!(kept[1].matches(&Action::Delete));
        assert!(parse_kept(r#"{"t": 5}"#).is_err());
    }
}
