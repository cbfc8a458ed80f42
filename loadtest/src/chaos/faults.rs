//! The scenarios: one fault at a time on the running stack, under the
//! steady load. Each scenario runs the same steps:
//!
//! 1. steady writes (a plan of its own, at the write rate) and reads start;
//!    `lead` of calm;
//! 2. the fault is injected and, after `fault`, lifted (restore time noted);
//! 3. recovery: a probe write published once the fault is lifted, timed
//!    until its receipt exists on the primary and gateway-1 serves it;
//!    reads are measured from the injection to that moment ("during fault");
//! 4. freshness after recovery: sampled probe writes, receipt → served;
//! 5. every plan's writes are waited for and checked (`verify`).
//!
//! `soak` instead keeps the load up for `soak` minutes and samples the
//! processes, the database connections and the queue every 5 s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use sqlx::{Connection as _, PgConnection};
use tokio::task::JoinHandle;

use shared::domain::Timestamp;

use super::load::{Probe, Published, ReadWindow, spawn_publisher};
use super::stack::{Kind, Stack};
use super::verify::{self, Counts, Sent};
use super::{Scenario, Settings};
use crate::BenchError;
use crate::mix::{MixSettings, Plan};
use crate::reads::Measured;

/// Steady writes go on this long after the fault is lifted.
const TAIL: Duration = Duration::from_secs(5);
/// Longest one freshness sample may take.
const SAMPLE_LIMIT: Duration = Duration::from_secs(5);
/// Bulk writes in the burst that precedes each worker kill.
const KILL_BURST: usize = 40;
/// How often the soak samples.
const SOAK_EVERY: Duration = Duration::from_secs(5);
/// Pause between rounds of freshness samples during a long fault.
const DURING_EVERY: Duration = Duration::from_secs(15);

/// What one scenario measured and found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScenarioResult {
    /// The scenario's name.
    pub scenario: String,
    /// The contract's counts over every plan of the scenario.
    pub counts: Counts,
    /// Publishes made (retries included).
    pub publishes: u64,
    /// Publishes made again after a broken connection or a missing confirm.
    pub republished: u64,
    /// Reads answered during the fault (injection to recovery).
    pub reads: u64,
    /// Of which right (status and body as seeded), in %.
    pub reads_ok_pct: Option<f64>,
    /// Reads that got no answer (connection refused or reset).
    pub reads_failed: u64,
    /// Reads answered wrong (e.g. 503).
    pub reads_wrong: u64,
    /// First wrong answer seen, for a post-mortem.
    pub first_wrong_read: Option<String>,
    /// p99 of reads during the fault, ms (from the intended send time).
    pub read_p99_ms: Option<f64>,
    /// p99 of reads in the calm before the fault, ms.
    pub calm_read_p99_ms: Option<f64>,
    /// Seconds the fault lasted, restore included.
    pub fault_s: f64,
    /// Seconds lifting the fault took (a broker boot, a pg_ctl start).
    pub restore_s: f64,
    /// Seconds from the fault lifted to a new write applied and served.
    pub recovery_s: Option<f64>,
    /// Receipt-to-served delays after recovery, p99 ms.
    pub freshness_p99_ms: Option<f64>,
    /// The same, max ms.
    pub freshness_max_ms: Option<f64>,
    /// Samples taken.
    pub freshness_samples: usize,
    /// Samples never served within 5 s.
    pub freshness_missed: usize,
    /// Receipt-to-served delays sampled while the fault lasted, p99 ms.
    pub during_p99_ms: Option<f64>,
    /// The same, max ms.
    pub during_max_ms: Option<f64>,
    /// Samples taken while the fault lasted.
    pub during_samples: usize,
    /// Of which never served within 5 s.
    pub during_missed: usize,
    /// Whether the freshness promise must hold while the fault lasts (a
    /// lagging replica: yes; a silent partition, which only heartbeats
    /// tell: measured, not promised).
    pub promised_during: bool,
    /// Whether every confirmed write had its receipt within the bound.
    pub receipts_complete: bool,
    /// Gateways or workers that exited without being killed.
    pub unexpected_exits: Vec<String>,
    /// What happened along the way.
    pub notes: Vec<String>,
    /// Why the scenario could not finish, if it could not.
    pub error: Option<String>,
}

impl ScenarioResult {
    /// A row for a scenario that failed to run.
    pub fn failed(scenario: Scenario, error: String) -> Self {
        Self {
            scenario: scenario.name().into(),
            error: Some(error),
            ..Self::default()
        }
    }

    /// Whether this row fails the run.
    pub fn broken(&self) -> bool {
        self.counts.broken()
            || self.error.is_some()
            || (self.promised_during && self.during_missed > 0)
    }
}

/// One soak sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakSample {
    /// Seconds since the soak started.
    pub t_s: f64,
    /// VmRSS of each process, KiB.
    pub rss_kib: BTreeMap<String, u64>,
    /// Open file descriptors of each process.
    pub fds: BTreeMap<String, u64>,
    /// Client connections on the primary (pg_stat_activity).
    pub db_connections: i64,
    /// Messages ready in the writes queue.
    pub queue_depth: Option<u32>,
}

/// A plan of the runner: `messages` valid writes (a `bulk_share` of them
/// `bulk_ops`-op), `poison` invalid ones, a few published twice.
fn plan(
    messages: usize,
    bulk_share: f64,
    bulk_ops: usize,
    poison: usize,
    duplicate_share: f64,
    seed: u64,
) -> Result<Plan, BenchError> {
    Plan::new(
        MixSettings {
            messages,
            bulk_share,
            bulk_ops,
            duplicate_share,
            revoke_share: 0.1,
            delete_share: 0.05,
            poison,
            seed,
        },
        Timestamp::now(),
    )
}

type Publishing = (Arc<Plan>, JoinHandle<Published>);

struct Ctx<'a> {
    stack: &'a Stack,
    settings: &'a Settings,
    seed: u64,
    plans: Vec<Publishing>,
    notes: Vec<String>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
    /// Freshness sampled while the fault lasted.
    during: Option<During>,
}

/// Receipt-to-served delays sampled during a fault.
struct During {
    delays: Histogram<u64>,
    missed: usize,
    samples: usize,
    promised: bool,
}

impl During {
    fn new(promised: bool) -> Result<Self, BenchError> {
        Ok(Self {
            delays: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .map_err(|e| BenchError::Check(format!("histogram: {e}")))?,
            missed: 0,
            samples: 0,
            promised,
        })
    }

    /// Samples gateway-1 in rounds of `samples` until `until`.
    async fn sample_until(
        &mut self,
        stack: &Stack,
        probe: &mut Probe,
        samples: usize,
        until: Instant,
    ) -> Result<(), BenchError> {
        loop {
            let (delays, missed) =
                sample_freshness(stack, stack.gateway_addr(0), probe, samples.max(1)).await?;
            self.delays
                .add(&delays)
                .map_err(|e| BenchError::Check(format!("histogram: {e}")))?;
            self.missed += missed;
            self.samples += samples.max(1);
            if Instant::now() >= until {
                return Ok(());
            }
            let pause = until.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(DURING_EVERY)).await;
        }
    }

    fn note(&self) -> String {
        format!(
            "freshness during the fault: p99 {:.1} ms, max {:.1} ms over {} samples, {} never served within {:?}",
            self.delays.value_at_quantile(0.99) as f64 / 1000.0,
            self.delays.max() as f64 / 1000.0,
            self.samples,
            self.missed,
            SAMPLE_LIMIT
        )
    }
}

impl Ctx<'_> {
    fn publish(&mut self, plan: Plan, rate: Option<f64>) -> Arc<Plan> {
        let plan = Arc::new(plan);
        let handle = spawn_publisher(
            self.stack.amo_url.clone(),
            self.stack.topology.writes_exchange.clone(),
            plan.clone(),
            rate,
            self.deadline,
            self.stop.clone(),
        );
        self.plans.push((plan.clone(), handle));
        plan
    }

    fn next_seed(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.seed
    }

    async fn receipts_of(&self, plan: &Plan) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM receipts WHERE write_id LIKE $1")
            .bind(format!("{}-%", plan.run))
            .fetch_one(&self.stack.owner)
            .await
            .unwrap_or(0)
    }

    /// Publishes a burst of large writes and waits until the workers are
    /// in the middle of it: the first of them is committed (or 3 s passed).
    async fn large_batch_in_hand(&mut self) -> Result<Arc<Plan>, BenchError> {
        let seed = self.next_seed();
        let s = self.settings;
        let burst = plan(KILL_BURST, 1.0, s.bulk_ops.max(1), 0, 0.0, seed)?;
        let burst = self.publish(burst, None);
        let until = Instant::now() + Duration::from_secs(3);
        while self.receipts_of(&burst).await == 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(burst)
    }
}

/// CPU ticks (user + system) a process used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line.
    field(11) + field(12)
}

/// Publishes `samples` probe writes one after another and times each from
/// its receipt on the primary to gateway `addr` serving it: the delays, and
/// how many were never served within [`SAMPLE_LIMIT`].
async fn sample_freshness(
    stack: &Stack,
    addr: std::net::SocketAddr,
    probe: &mut Probe,
    samples: usize,
) -> Result<(Histogram<u64>, usize), BenchError> {
    let mut delays = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| BenchError::Check(format!("histogram: {e}")))?;
    let mut missed = 0;
    for _ in 0..samples {
        let (id, version) = probe
            .publish(Instant::now() + Duration::from_secs(30))
            .await?;
        let since = Instant::now();
        match probe
            .sightings(&stack.owner, addr, &id, &version, since, SAMPLE_LIMIT)
            .await
        {
            Some((receipt, served)) => {
                delays.saturating_record((served.saturating_sub(receipt).as_micros() as u64).max(1))
            }
            None => missed += 1,
        }
    }
    Ok((delays, missed))
}

/// Injects `scenario`'s fault and returns once it is lifted, with the
/// seconds lifting took.
async fn inject(ctx: &mut Ctx<'_>, scenario: Scenario) -> Result<f64, BenchError> {
    let stack = ctx.stack;
    let fault = ctx.settings.fault;
    let timed = |since: Instant| since.elapsed().as_secs_f64();
    match scenario {
        Scenario::WorkerKill => {
            let kills = ctx.settings.worker_kills.max(1);
            let slot = fault / kills as u32;
            for round in 1..=kills {
                let start = Instant::now();
                let workers: Vec<(String, u32)> = stack
                    .pids()
                    .into_iter()
                    .filter(|(n, _)| n.starts_with("worker"))
                    .collect();
                let before: Vec<u64> = workers.iter().map(|(_, p)| cpu_ticks(*p)).collect();
                let burst = ctx.large_batch_in_hand().await?;
                // The busiest worker since the burst is the one with a
                // large batch in hand.
                let victim = workers
                    .iter()
                    .zip(&before)
                    .enumerate()
                    .max_by_key(|(_, ((_, pid), b))| cpu_ticks(*pid).saturating_sub(**b))
                    .map_or(0, |(i, _)| i);
                let committed = ctx.receipts_of(&burst).await;
                stack.kill(Kind::Worker, victim).await?;
                ctx.notes.push(format!(
                    "kill {round}: SIGKILL worker-{} with {committed} of {KILL_BURST} large writes committed",
                    victim + 1
                ));
                stack.restart(Kind::Worker, victim)?;
                tokio::time::sleep_until((start + slot).into()).await;
            }
            Ok(0.0)
        }
        Scenario::AllWorkersKill => {
            let burst = ctx.large_batch_in_hand().await?;
            let committed = ctx.receipts_of(&burst).await;
            let start = Instant::now();
            for i in 0..stack.count(Kind::Worker) {
                stack.kill(Kind::Worker, i).await?;
            }
            ctx.notes.push(format!(
                "SIGKILL every worker with {committed} of {KILL_BURST} large writes committed"
            ));
            tokio::time::sleep_until((start + fault).into()).await;
            let lift = Instant::now();
            for i in 0..stack.count(Kind::Worker) {
                stack.restart(Kind::Worker, i)?;
            }
            Ok(timed(lift))
        }
        Scenario::BrokerRestart => {
            let start = Instant::now();
            stack.stop_broker().await?;
            tokio::time::sleep_until((start + fault).into()).await;
            let lift = Instant::now();
            stack.start_broker().await?;
            Ok(timed(lift))
        }
        Scenario::PrimaryStop => {
            let start = Instant::now();
            stack.stop_primary().await?;
            tokio::time::sleep_until((start + fault).into()).await;
            let lift = Instant::now();
            stack.start_primary().await?;
            Ok(timed(lift))
        }
        Scenario::PrimarySlow => {
            let mut conn = PgConnection::connect_with(&stack.admin_options()).await?;
            let start = Instant::now();
            sqlx::query("BEGIN").execute(&mut conn).await?;
            sqlx::query("LOCK TABLE records IN ACCESS EXCLUSIVE MODE")
                .execute(&mut conn)
                .await?;
            tokio::time::sleep_until((start + fault).into()).await;
            let lift = Instant::now();
            sqlx::query("COMMIT").execute(&mut conn).await?;
            let _ = conn.close().await;
            Ok(timed(lift))
        }
        Scenario::ReplicaStop => {
            let start = Instant::now();
            stack.stop_replica().await?;
            tokio::time::sleep_until((start + fault).into()).await;
            let lift = Instant::now();
            stack.start_replica().await?;
            Ok(timed(lift))
        }
        Scenario::ReplicaPause | Scenario::ReplicaPauseLong => {
            let start = Instant::now();
            let hold = match scenario {
                Scenario::ReplicaPauseLong => ctx.settings.long_pause.max(fault),
                _ => fault,
            };
            stack.replay(true).await?;
            // The freshness promise holds while a replica lags, however
            // long: the gateway reads what the replica has not replayed from
            // a source that has (the primary, listed last).
            sample_during(ctx, scenario, true, start + hold).await?;
            tokio::time::sleep_until((start + hold).into()).await;
            let lift = Instant::now();
            stack.replay(false).await?;
            Ok(timed(lift))
        }
        Scenario::GatewayBrokerSilent if stack.broker_nodes() > 1 => Err(BenchError::Refused(
            "gateway-broker-silent needs a one-node stack (its proxy is in front of one node)"
                .into(),
        )),
        Scenario::GatewayBrokerSilent => {
            let start = Instant::now();
            stack.freeze_gateway_broker(true);
            // Until its heartbeats time out, gateway-1 hears no events and
            // cannot know it: what that costs is measured, not promised.
            sample_during(ctx, scenario, false, start + fault).await?;
            tokio::time::sleep_until((start + fault).into()).await;
            let lift = Instant::now();
            stack.freeze_gateway_broker(false);
            stack.wait_gateway(0, Duration::from_secs(30)).await?;
            Ok(timed(lift))
        }
        Scenario::BackfillLagging => {
            let start = Instant::now();
            stack.replay(true).await?;
            let applied = backfill(ctx).await?;
            ctx.notes.push(applied);
            sample_during(ctx, scenario, true, start + fault).await?;
            tokio::time::sleep_until((start + fault).into()).await;
            let lift = Instant::now();
            stack.replay(false).await?;
            Ok(timed(lift))
        }
        Scenario::GatewayKill => {
            let start = Instant::now();
            stack.kill(Kind::Gateway, 0).await?;
            // A supervisor's restart delay.
            tokio::time::sleep(Duration::from_secs(2).min(fault)).await;
            let lift = Instant::now();
            stack.restart(Kind::Gateway, 0)?;
            stack.wait_gateway(0, Duration::from_secs(30)).await?;
            let restore = timed(lift);
            ctx.notes.push(format!(
                "gateway-1 back and subscribed {restore:.2} s after its restart"
            ));
            tokio::time::sleep_until((start + fault).into()).await;
            Ok(restore)
        }
        Scenario::Poison => {
            let s = ctx.settings;
            let seed = ctx.next_seed();
            let valid = (s.poison / 10).max(1);
            let mixed = plan(valid, 0.0, 1, s.poison, 0.0, seed)?;
            let rate = (valid + s.poison) as f64 / fault.as_secs_f64().max(0.1);
            ctx.publish(mixed, Some(rate));
            tokio::time::sleep(fault).await;
            Ok(0.0)
        }
        Scenario::Burst => {
            let seed = ctx.next_seed();
            let backlog = plan(ctx.settings.burst.max(1), 0.0, 1, 0, 0.0, seed)?;
            ctx.publish(backlog, None);
            let start = Instant::now();
            // Published at once; the fault ends when the last is confirmed
            // (recovery then times the drain).
            let until = start + fault.max(Duration::from_secs(1)) * 10;
            while ctx.plans.last().is_some_and(|(_, h)| !h.is_finished()) && Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ctx.notes.push(format!(
                "{} writes published in {:.1} s",
                ctx.settings.burst,
                start.elapsed().as_secs_f64()
            ));
            Ok(0.0)
        }
        Scenario::Soak => Err(BenchError::Refused("soak is not a fault".into())),
        Scenario::ClusterLeaderStop
        | Scenario::ClusterFollowerStop
        | Scenario::ClusterMajorityStop => {
            let replicas = writes_replicas(ctx).await?;
            let Some(leader) = replicas.leader else {
                return Err(BenchError::Check("the writes queue has no leader".into()));
            };
            let follower = replicas
                .members
                .iter()
                .copied()
                .find(|&m| m != leader)
                .ok_or_else(|| BenchError::Check("the writes queue has no follower".into()))?;
            let victims = match scenario {
                Scenario::ClusterLeaderStop => vec![leader],
                Scenario::ClusterFollowerStop => vec![follower],
                _ => vec![follower, leader],
            };
            let start = Instant::now();
            for &victim in &victims {
                stack.stop_node(victim).await?;
            }
            ctx.notes.push(format!(
                "stopped {} (writes queue: leader on node-{}, members on {})",
                victims
                    .iter()
                    .map(|v| format!("node-{}", v + 1))
                    .collect::<Vec<_>>()
                    .join(" and "),
                leader + 1,
                replicas
                    .members
                    .iter()
                    .map(|m| format!("node-{}", m + 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            if scenario == Scenario::ClusterMajorityStop {
                // No majority, no confirms: nothing to sample but the wait.
                tokio::time::sleep_until((start + fault).into()).await;
            } else {
                // The queue keeps its majority: writes go on through the
                // fault. How long the failover took, and freshness while
                // clients moved to another node (measured, not promised:
                // a gateway re-subscribing drops its cache and reads
                // replicas until then).
                failover(ctx, scenario, Instant::now()).await?;
                sample_during(ctx, scenario, false, start + fault).await?;
                tokio::time::sleep_until((start + fault).into()).await;
                if let Some(now) = stack.writes_replicas().await {
                    ctx.notes.push(format!(
                        "during the fault: leader on {}",
                        now.leader
                            .map_or("none".into(), |l| format!("node-{}", l + 1))
                    ));
                }
            }
            let lift = Instant::now();
            stack.start_broker().await?;
            Ok(timed(lift))
        }
        Scenario::ClusterRollingRestart => {
            // Each node down for a third of the fault, one after another,
            // as an upgrade would; the next only once the writes queue has
            // a leader again.
            let nodes = stack.broker_nodes();
            let down = fault / nodes as u32;
            let mut restore = 0.0;
            for i in 0..nodes {
                let start = Instant::now();
                stack.stop_node(i).await?;
                tokio::time::sleep_until((start + down).into()).await;
                let lift = Instant::now();
                stack.start_node(i).await?;
                restore += timed(lift);
                let until = Instant::now() + ctx.settings.recovery_limit;
                while !stack
                    .writes_replicas()
                    .await
                    .is_some_and(|r| r.leader.is_some() && r.members.len() == nodes)
                {
                    if Instant::now() > until {
                        return Err(BenchError::Timeout(format!(
                            "the writes queue had no leader after node-{} restarted",
                            i + 1
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                ctx.notes.push(format!(
                    "node-{} stopped for {:.1} s, back in {:.1} s",
                    i + 1,
                    down.as_secs_f64(),
                    lift.elapsed().as_secs_f64()
                ));
            }
            Ok(restore)
        }
    }
}

/// Where the writes queue's replicas are; refused on a one-node stack.
async fn writes_replicas(
    ctx: &Ctx<'_>,
) -> Result<harness::rabbit_cluster::QueueReplicas, BenchError> {
    if ctx.stack.broker_nodes() < 3 {
        return Err(BenchError::Refused(
            "a cluster scenario needs 3 RabbitMQ nodes".into(),
        ));
    }
    ctx.stack
        .writes_replicas()
        .await
        .ok_or_else(|| BenchError::Check("rabbitmqctl list_queues did not answer".into()))
}

/// Times a probe write published once the node(s) stopped (`since`: the
/// stop returned, the VM gone) to its receipt and gateway-1 serving it: the
/// failover's length as writers and readers see it.
async fn failover(ctx: &mut Ctx<'_>, scenario: Scenario, since: Instant) -> Result<(), BenchError> {
    let stack = ctx.stack;
    let mut probe = Probe::new(
        scenario.name(),
        &stack.amo_url,
        &stack.topology.writes_exchange,
    );
    let limit = ctx.settings.recovery_limit;
    let (id, version) = probe.publish(since + limit).await?;
    let seen = probe
        .sightings(
            &stack.owner,
            stack.gateway_addr(0),
            &id,
            &version,
            since,
            limit,
        )
        .await;
    ctx.notes.push(match seen {
        Some((receipt, served)) => format!(
            "failover: a write published once the node was down was applied after {:.2} s and served after {:.2} s",
            receipt.as_secs_f64(),
            served.as_secs_f64()
        ),
        None => format!("failover: a write published once the node was down was not served within {limit:?}"),
    });
    Ok(())
}

fn read_stats(result: &mut ScenarioResult, reads: &Measured) {
    let asked = reads.requests + reads.failed;
    result.reads = reads.requests;
    result.reads_failed = reads.failed;
    result.reads_wrong = reads.wrong;
    result.first_wrong_read = reads.first_wrong.clone();
    if asked > 0 {
        result.reads_ok_pct = Some(100.0 * (reads.requests - reads.wrong) as f64 / asked as f64);
    }
    if reads.requests > 0 {
        result.read_p99_ms = Some(reads.percentile_ms(0.99));
    }
}

/// Samples gateway-1's freshness with probe writes until `until`, into the
/// scenario's row (`promised`: whether a stale sample fails it).
async fn sample_during(
    ctx: &mut Ctx<'_>,
    scenario: Scenario,
    promised: bool,
    until: Instant,
) -> Result<(), BenchError> {
    let stack = ctx.stack;
    let mut probe = Probe::new(
        scenario.name(),
        &stack.amo_url,
        &stack.topology.writes_exchange,
    );
    let mut during = During::new(promised)?;
    during
        .sample_until(stack, &mut probe, ctx.settings.freshness_samples, until)
        .await?;
    ctx.notes.push(during.note());
    ctx.during = Some(during);
    Ok(())
}

/// Publishes `backfill_records` registrations issued over five years (as
/// AMO's launch-day import) and waits until every one is applied: none may
/// be superseded for its age.
async fn backfill(ctx: &mut Ctx<'_>) -> Result<String, BenchError> {
    const OPS: usize = 1_000;
    let stack = ctx.stack;
    let records = ctx.settings.backfill_records.max(1);
    let messages = records.div_ceil(OPS);
    let run = format!("backfill{:08x}", ctx.next_seed() as u32);
    let connection = Connection::connect(
        stack.amo_url.first().expose(),
        ConnectionProperties::default(),
    )
    .await?;
    let publisher =
        crate::publish::Publisher::open(&connection, &stack.topology.writes_exchange, None).await?;
    let started = Instant::now();
    let deadline = started + ctx.settings.drain_limit;
    let now = Timestamp::now();
    publisher
        .publish_all(
            (0..messages).map(|i| {
                crate::backfill::message_of(
                    &run,
                    i,
                    OPS,
                    records,
                    crate::backfill::issued_at(now, i, messages),
                )
            }),
            messages as u64,
            deadline,
        )
        .await?;
    let _ = connection.close(0, "published".into()).await;
    loop {
        let (applied, other): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'applied'), count(*) FILTER (WHERE status <> 'applied') \
             FROM receipts WHERE write_id LIKE $1",
        )
        .bind(format!("{run}-%"))
        .fetch_one(&stack.owner)
        .await?;
        if other > 0 {
            return Err(BenchError::Check(format!(
                "{other} historic backfill writes were not applied"
            )));
        }
        if applied as usize >= messages {
            break;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "{applied} of {messages} backfill writes applied within {:?}",
                ctx.settings.drain_limit
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(format!(
        "{records} records issued over five years, all applied in {:.1} s with replay paused",
        started.elapsed().as_secs_f64()
    ))
}

/// Runs one fault scenario on the stack.
pub async fn run(
    stack: &Stack,
    settings: &Settings,
    scenario: Scenario,
    seed: u64,
) -> Result<ScenarioResult, BenchError> {
    let mut result = ScenarioResult {
        scenario: scenario.name().into(),
        ..ScenarioResult::default()
    };
    let lead = settings.lead;
    let fault = settings.fault;
    let mut ctx = Ctx {
        stack,
        settings,
        seed,
        plans: Vec::new(),
        notes: Vec::new(),
        stop: Arc::new(AtomicBool::new(false)),
        deadline: Instant::now() + lead + fault * 12 + settings.long_pause + settings.drain_limit,
        during: None,
    };
    // Steady writes cover the whole fault, however long it is held.
    let held = match scenario {
        Scenario::ReplicaPauseLong => settings.long_pause.max(fault),
        _ => fault,
    };
    let steady_seconds = (lead + held + TAIL).as_secs_f64();
    let seed = ctx.next_seed();
    let steady = plan(
        ((settings.write_rate * steady_seconds) as usize).max(1),
        settings.bulk_share,
        settings.bulk_ops,
        0,
        0.02,
        seed,
    )?;
    ctx.publish(steady, Some(settings.write_rate));
    let addrs: Vec<_> = (0..stack.gateway_ports.len())
        .map(|i| stack.gateway_addr(i))
        .collect();

    let calm = ReadWindow::start(&addrs, settings.read_rate, settings.records, seed);
    tokio::time::sleep(lead).await;
    let calm = calm.finish().await?;
    if calm.requests > 0 {
        result.calm_read_p99_ms = Some(calm.percentile_ms(0.99));
    }

    let window = ReadWindow::start(&addrs, settings.read_rate, settings.records, seed ^ 1);
    let injected = Instant::now();
    let injection = inject(&mut ctx, scenario).await;
    let lifted = Instant::now();
    result.fault_s = lifted.duration_since(injected).as_secs_f64();
    match injection {
        Ok(restore) => result.restore_s = restore,
        Err(e) => {
            let _ = window.finish().await;
            ctx.stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
    }

    let mut probe = Probe::new(
        scenario.name(),
        &stack.amo_url,
        &stack.topology.writes_exchange,
    );
    let (id, version) = probe.publish(lifted + settings.recovery_limit).await?;
    let seen = probe
        .sightings(
            &stack.owner,
            addrs[0],
            &id,
            &version,
            lifted,
            settings.recovery_limit,
        )
        .await;
    result.recovery_s = seen.map(|(r, s)| r.max(s).as_secs_f64());
    let during = window.finish().await?;
    read_stats(&mut result, &during);

    if result.recovery_s.is_some() {
        let (delays, missed) =
            sample_freshness(stack, addrs[0], &mut probe, settings.freshness_samples).await?;
        result.freshness_samples = settings.freshness_samples;
        result.freshness_missed = missed;
        if !delays.is_empty() {
            result.freshness_p99_ms = Some(delays.value_at_quantile(0.99) as f64 / 1000.0);
            result.freshness_max_ms = Some(delays.max() as f64 / 1000.0);
        }
    }

    if let Some(during) = ctx.during.take() {
        result.during_samples = during.samples;
        result.during_missed = during.missed;
        result.promised_during = during.promised;
        if !during.delays.is_empty() {
            result.during_p99_ms = Some(during.delays.value_at_quantile(0.99) as f64 / 1000.0);
            result.during_max_ms = Some(during.delays.max() as f64 / 1000.0);
        }
    }
    finish(&mut ctx, &mut result).await?;
    Ok(result)
}

/// Waits for every plan's publisher, then its receipts, then checks.
async fn finish(ctx: &mut Ctx<'_>, result: &mut ScenarioResult) -> Result<(), BenchError> {
    let mut published = Vec::new();
    let (mut nacked, mut confirm_timeouts) = (0, 0);
    for (plan, handle) in std::mem::take(&mut ctx.plans) {
        let done = handle
            .await
            .map_err(|e| BenchError::Check(format!("publisher: {e}")))?;
        result.publishes += done.attempts;
        result.republished += done.retried;
        nacked += done.nacked;
        confirm_timeouts += done.confirm_timeouts;
        published.push((plan, done));
    }
    let sent: Vec<Sent<'_>> = published
        .iter()
        .map(|(plan, done)| Sent {
            plan,
            confirmed: &done.confirmed,
        })
        .collect();
    result.receipts_complete =
        verify::wait_for_receipts(&ctx.stack.owner, &sent, ctx.settings.drain_limit).await;
    let poison: usize = published
        .iter()
        .map(|(plan, done)| {
            plan.poison
                .iter()
                .filter(|p| done.confirmed.contains(&p.message_id))
                .count()
        })
        .sum();
    let letters =
        verify::take_dead_letters(&ctx.stack.admin_amqp_url(), &ctx.stack.topology, poison).await?;
    result.counts = verify::check(&ctx.stack.owner, &sent, &letters).await?;
    result.unexpected_exits = ctx.stack.reap()?;
    result.notes.append(&mut ctx.notes);
    if nacked + confirm_timeouts > 0 {
        // Publishes the broker could not take, seen by the publisher (and
        // published again): the visible failure AMO would see.
        result.notes.push(format!(
            "{nacked} publishes nacked and {confirm_timeouts} unconfirmed within {:?}, all published again",
            super::load::CONFIRM_LIMIT
        ));
    }
    if !result.receipts_complete {
        result.notes.push(format!(
            "not every receipt arrived within {:?}",
            ctx.settings.drain_limit
        ));
    }
    Ok(())
}

fn proc_value(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn open_fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

async fn queue_depth(url: &str, queue: &str) -> Option<u32> {
    let probe = async {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let n = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?
            .message_count();
        let _ = conn.close(0, "sampled".into()).await;
        Ok::<u32, lapin::Error>(n)
    };
    tokio::time::timeout(Duration::from_secs(5), probe)
        .await
        .ok()
        .and_then(Result::ok)
}

/// The soak: the steady load for `settings.soak`, sampled every 5 s.
pub async fn soak(
    stack: &Stack,
    settings: &Settings,
    seed: u64,
) -> Result<(ScenarioResult, Vec<SoakSample>), BenchError> {
    let mut result = ScenarioResult {
        scenario: Scenario::Soak.name().into(),
        ..ScenarioResult::default()
    };
    let mut ctx = Ctx {
        stack,
        settings,
        seed,
        plans: Vec::new(),
        notes: Vec::new(),
        stop: Arc::new(AtomicBool::new(false)),
        deadline: Instant::now() + settings.soak * 2 + settings.drain_limit,
        during: None,
    };
    let seed = ctx.next_seed();
    let steady = plan(
        ((settings.write_rate * settings.soak.as_secs_f64()) as usize).max(1),
        settings.bulk_share,
        settings.bulk_ops,
        0,
        0.02,
        seed,
    )?;
    ctx.publish(steady, Some(settings.write_rate));
    let addrs: Vec<_> = (0..stack.gateway_ports.len())
        .map(|i| stack.gateway_addr(i))
        .collect();
    let window = ReadWindow::start(&addrs, settings.read_rate, settings.records, seed);
    let started = Instant::now();
    let admin = stack.admin_amqp_url();
    let mut samples = Vec::new();
    loop {
        let t = started.elapsed();
        let mut rss_kib = BTreeMap::new();
        let mut fds = BTreeMap::new();
        for (name, pid) in stack.pids() {
            if let Some(v) = proc_value(pid, "VmRSS:") {
                rss_kib.insert(name.clone(), v);
            }
            if let Some(v) = open_fds(pid) {
                fds.insert(name, v);
            }
        }
        let db_connections: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
        )
        .fetch_one(&stack.owner)
        .await
        .unwrap_or(-1);
        let depth = queue_depth(&admin, &stack.topology.writes_queue).await;
        samples.push(SoakSample {
            t_s: t.as_secs_f64(),
            rss_kib,
            fds,
            db_connections,
            queue_depth: depth,
        });
        eprintln!(
            "soak {:>5.0} s: {} db connections, queue {:?}",
            t.as_secs_f64(),
            db_connections,
            depth
        );
        if t >= settings.soak {
            break;
        }
        let next = started + SOAK_EVERY * samples.len() as u32;
        tokio::time::sleep_until(next.into()).await;
    }
    let during = window.finish().await?;
    read_stats(&mut result, &during);
    result.fault_s = started.elapsed().as_secs_f64();
    finish(&mut ctx, &mut result).await?;
    Ok((result, samples))
}
