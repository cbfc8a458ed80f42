//! `loadtest chaos`: faults injected one at a time into a stack of the
//! runner's own, under steady mixed load, with every write checked against
//! the contract afterwards.
//!
//! Layout:
//! - `stack`: the stack (Postgres primary and streaming replica, a RabbitMQ
//!   node or a 3-node cluster, least-privilege users, release gateways and workers), its
//!   faults' levers, and its teardown.
//! - `load`: steady writes (outage-tolerant publisher with confirms),
//!   Firefox-shaped reads in measured windows, and the probe writes that
//!   time recovery and freshness.
//! - `verify`: each scenario's writes against the contract's fold, its
//!   receipts and the dead queue.
//! - `faults`: the scenarios, and the soak.
//! - `report`: the table, report.json and the soak's SVG.

pub mod faults;
pub mod load;
pub mod report;
pub mod stack;
pub mod verify;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::BenchError;
use faults::ScenarioResult;
use stack::Stack;

/// One fault (or the soak).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// SIGKILL a worker in the middle of a large batch, several times.
    WorkerKill,
    /// SIGKILL every worker at once; restart them after the fault.
    AllWorkersKill,
    /// The RabbitMQ node stopped for the fault, then started again.
    BrokerRestart,
    /// The primary stopped for the fault.
    PrimaryStop,
    /// An ACCESS EXCLUSIVE lock on `records`, held for the fault.
    PrimarySlow,
    /// The replica stopped for the fault.
    ReplicaStop,
    /// WAL replay paused on the replica for the fault.
    ReplicaPause,
    /// WAL replay paused for longer than any window the gateway keeps
    /// (`--long-pause-seconds`, 3 minutes), freshness sampled throughout.
    ReplicaPauseLong,
    /// Gateway-1's broker connection frozen without a FIN: only its
    /// heartbeats can tell.
    GatewayBrokerSilent,
    /// A backfill of historic writes (issued over five years) while the
    /// replica's replay is paused.
    BackfillLagging,
    /// Gateway-1 SIGKILLed and restarted while clients keep asking.
    GatewayKill,
    /// Poison messages mixed into the valid stream.
    Poison,
    /// A backlog published at once, drained while reads go on.
    Burst,
    /// Mixed load for minutes, processes and queue sampled.
    Soak,
    /// Cluster: the node hosting the writes queue's leader stopped for the
    /// fault (a follower takes over).
    ClusterLeaderStop,
    /// Cluster: a node hosting only followers stopped for the fault.
    ClusterFollowerStop,
    /// Cluster: two of three nodes stopped (the queue loses its majority:
    /// publishes are not confirmed until one returns).
    ClusterMajorityStop,
    /// Cluster: each node stopped and started again in turn.
    ClusterRollingRestart,
}

impl Scenario {
    /// Every scenario, in the default order (the soak is not a default).
    pub const ALL: [Scenario; 18] = [
        Scenario::WorkerKill,
        Scenario::AllWorkersKill,
        Scenario::BrokerRestart,
        Scenario::PrimaryStop,
        Scenario::PrimarySlow,
        Scenario::ReplicaStop,
        Scenario::ReplicaPause,
        Scenario::ReplicaPauseLong,
        Scenario::GatewayBrokerSilent,
        Scenario::BackfillLagging,
        Scenario::GatewayKill,
        Scenario::Poison,
        Scenario::Burst,
        Scenario::Soak,
        Scenario::ClusterLeaderStop,
        Scenario::ClusterFollowerStop,
        Scenario::ClusterMajorityStop,
        Scenario::ClusterRollingRestart,
    ];

    /// The scenarios that need a three-node broker cluster.
    pub const CLUSTER: [Scenario; 4] = [
        Scenario::ClusterLeaderStop,
        Scenario::ClusterFollowerStop,
        Scenario::ClusterMajorityStop,
        Scenario::ClusterRollingRestart,
    ];

    /// Whether it needs a three-node broker cluster.
    pub fn needs_cluster(self) -> bool {
        Scenario::CLUSTER.contains(&self)
    }

    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::WorkerKill => "worker-kill",
            Scenario::AllWorkersKill => "all-workers-kill",
            Scenario::BrokerRestart => "broker-restart",
            Scenario::PrimaryStop => "primary-stop",
            Scenario::PrimarySlow => "primary-slow",
            Scenario::ReplicaStop => "replica-stop",
            Scenario::ReplicaPause => "replica-pause",
            Scenario::ReplicaPauseLong => "replica-pause-long",
            Scenario::GatewayBrokerSilent => "gateway-broker-silent",
            Scenario::BackfillLagging => "backfill-lagging",
            Scenario::GatewayKill => "gateway-kill",
            Scenario::Poison => "poison",
            Scenario::Burst => "burst",
            Scenario::Soak => "soak",
            Scenario::ClusterLeaderStop => "cluster-leader-stop",
            Scenario::ClusterFollowerStop => "cluster-follower-stop",
            Scenario::ClusterMajorityStop => "cluster-majority-stop",
            Scenario::ClusterRollingRestart => "cluster-rolling-restart",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scenario::ALL.iter().map(|c| c.name()).collect();
                format!("unknown scenario {s:?} (one of {})", names.join(", "))
            })
    }
}

/// `loadtest chaos`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Scenarios to run, in order (default: every one but soak).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "worker-kill,all-workers-kill,broker-restart,primary-stop,primary-slow,replica-stop,replica-pause,replica-pause-long,gateway-broker-silent,backfill-lagging,gateway-kill,poison,burst"
    )]
    pub scenarios: Vec<Scenario>,
    /// Seconds each fault lasts.
    #[arg(long, default_value_t = 30)]
    pub fault_seconds: u64,
    /// Seconds of calm load before each fault.
    #[arg(long, default_value_t = 5)]
    pub lead_seconds: u64,
    /// Minutes the soak lasts.
    #[arg(long, default_value_t = 10)]
    pub soak_minutes: u64,
    /// Seconds replica-pause-long holds replay paused (at least the fault).
    #[arg(long, default_value_t = 180)]
    pub long_pause_seconds: u64,
    /// Records in backfill-lagging (1,000-op messages).
    #[arg(long, default_value_t = 50_000)]
    pub backfill_records: usize,
    /// Steady writes per second.
    #[arg(long, default_value_t = 300.0)]
    pub write_rate: f64,
    /// Steady reads per second (open loop, over every gateway).
    #[arg(long, default_value_t = 500.0)]
    pub read_rate: f64,
    /// Share of the steady writes that carry --bulk-ops ops.
    #[arg(long, default_value_t = 0.005)]
    pub bulk_share: f64,
    /// Ops in a bulk write.
    #[arg(long, default_value_t = 1_000)]
    pub bulk_ops: usize,
    /// Worker kills in worker-kill.
    #[arg(long, default_value_t = 3)]
    pub worker_kills: usize,
    /// Poison messages in poison.
    #[arg(long, default_value_t = 10_000)]
    pub poison: usize,
    /// Writes in burst.
    #[arg(long, default_value_t = 100_000)]
    pub burst: usize,
    /// Freshness samples after each recovery.
    #[arg(long, default_value_t = 10)]
    pub freshness_samples: usize,
    /// Records seeded for the reads.
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    /// Gateways.
    #[arg(long, default_value_t = 2)]
    pub gateways: usize,
    /// Workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// RabbitMQ nodes (1, or 3 for a cluster; the cluster-* scenarios
    /// always run on 3).
    #[arg(long, default_value_t = 1)]
    pub broker_nodes: usize,
    /// Longest recovery waited for, in seconds.
    #[arg(long, default_value_t = 120)]
    pub recovery_limit_seconds: u64,
    /// Longest wait for a scenario's receipts, in seconds.
    #[arg(long, default_value_t = 300)]
    pub drain_limit_seconds: u64,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Where the run's directory (`chaos-<UTC timestamp>`) goes.
    #[arg(long, default_value = "target/loadtest")]
    pub out_dir: PathBuf,
    /// Seed of the mixes (random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// What a run does, in library form.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Each fault's length.
    pub fault: Duration,
    /// Calm before each fault.
    pub lead: Duration,
    /// The soak's length.
    pub soak: Duration,
    /// How long replica-pause-long holds replay paused.
    pub long_pause: Duration,
    /// Records in backfill-lagging.
    pub backfill_records: usize,
    /// Steady writes/s.
    pub write_rate: f64,
    /// Steady reads/s.
    pub read_rate: f64,
    /// Share of bulk writes.
    pub bulk_share: f64,
    /// Ops per bulk write.
    pub bulk_ops: usize,
    /// Kills in worker-kill.
    pub worker_kills: usize,
    /// Poison messages in poison.
    pub poison: usize,
    /// Writes in burst.
    pub burst: usize,
    /// Freshness samples per scenario.
    pub freshness_samples: usize,
    /// Records seeded for reads.
    pub records: u64,
    /// Gateways (at least 1).
    pub gateways: usize,
    /// Workers (at least 1).
    pub workers: usize,
    /// RabbitMQ nodes (3 whenever a cluster scenario is asked for).
    pub broker_nodes: usize,
    /// Longest recovery.
    pub recovery_limit: Duration,
    /// Longest wait for receipts.
    pub drain_limit: Duration,
    /// Release (or debug) binaries.
    pub bin_dir: PathBuf,
    /// Parent of the run's directory.
    pub out_dir: PathBuf,
    /// Seed.
    pub seed: u64,
}

impl From<ChaosArgs> for Settings {
    fn from(a: ChaosArgs) -> Self {
        Self {
            scenarios: a.scenarios,
            fault: Duration::from_secs(a.fault_seconds),
            lead: Duration::from_secs(a.lead_seconds),
            soak: Duration::from_secs(a.soak_minutes * 60),
            long_pause: Duration::from_secs(a.long_pause_seconds),
            backfill_records: a.backfill_records,
            write_rate: a.write_rate,
            read_rate: a.read_rate,
            bulk_share: a.bulk_share,
            bulk_ops: a.bulk_ops,
            worker_kills: a.worker_kills,
            poison: a.poison,
            burst: a.burst,
            freshness_samples: a.freshness_samples,
            records: a.records,
            gateways: a.gateways,
            workers: a.workers,
            broker_nodes: a.broker_nodes,
            recovery_limit: Duration::from_secs(a.recovery_limit_seconds),
            drain_limit: Duration::from_secs(a.drain_limit_seconds),
            bin_dir: a.bin_dir,
            out_dir: a.out_dir,
            seed: a.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
        }
    }
}

/// A run's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChaosReport {
    /// When it started (UTC, RFC 3339).
    pub started_at: String,
    /// The machine.
    pub machine: String,
    /// The seed.
    pub seed: u64,
    /// Fault seconds, rates and sizes, as run.
    pub settings: String,
    /// One row per scenario run.
    pub scenarios: Vec<ScenarioResult>,
    /// The soak's samples, when it ran.
    pub soak: Vec<faults::SoakSample>,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
    /// Where the report went.
    pub dir: PathBuf,
    /// What had to be repaired between scenarios.
    pub repairs: Vec<String>,
}

impl ChaosReport {
    /// Whether any scenario broke the contract or could not run.
    pub fn broken(&self) -> bool {
        self.scenarios.iter().any(ScenarioResult::broken)
    }
}

/// Runs the scenarios on a stack of the run's own, tearing it down at the
/// end, also when `interrupt` fires first (the report is then partial).
/// The report is written to `<out_dir>/chaos-<UTC timestamp>/`.
pub async fn run(
    settings: Settings,
    interrupt: impl Future<Output = ()>,
) -> Result<ChaosReport, BenchError> {
    if settings.gateways == 0 || settings.workers == 0 {
        return Err(BenchError::Refused(
            "at least one gateway and one worker".into(),
        ));
    }
    if !(settings.write_rate > 0.0 && settings.read_rate > 0.0) {
        return Err(BenchError::Refused("rates are positive".into()));
    }
    let broker_nodes = if settings.scenarios.iter().any(|s| s.needs_cluster()) {
        settings.broker_nodes.max(3)
    } else {
        settings.broker_nodes.max(1)
    };
    let started = chrono::Utc::now();
    let dir = settings
        .out_dir
        .join(format!("chaos-{}", started.format("%Y%m%dT%H%M%SZ")));
    std::fs::create_dir_all(&dir)
        .map_err(|e| BenchError::Process(format!("create {}", dir.display()), e))?;
    let mut report = ChaosReport {
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: crate::report::machine(),
        seed: settings.seed,
        settings: format!(
            "fault {} s, calm {} s, {} writes/s ({}% of {} ops), {} reads/s, {} gateway(s), {} worker(s), {} RabbitMQ node(s)",
            settings.fault.as_secs(),
            settings.lead.as_secs(),
            settings.write_rate,
            settings.bulk_share * 100.0,
            settings.bulk_ops,
            settings.read_rate,
            settings.gateways,
            settings.workers,
            broker_nodes
        ),
        scenarios: Vec::new(),
        soak: Vec::new(),
        interrupted: false,
        dir: dir.clone(),
        repairs: Vec::new(),
    };
    tokio::pin!(interrupt);
    eprintln!("chaos: starting the stack (logs in {})", dir.display());
    let stack = tokio::select! {
        stack = Stack::start(&settings.bin_dir, &dir, settings.gateways, settings.workers, broker_nodes) => stack?,
        () = &mut interrupt => {
            report.interrupted = true;
            report::write(&report)?;
            return Ok(report);
        }
    };
    let outcome = scenarios(&stack, &settings, &mut report, interrupt).await;
    eprintln!("chaos: tearing the stack down");
    stack.teardown().await;
    outcome?;
    report::write(&report)?;
    Ok(report)
}

async fn scenarios(
    stack: &Stack,
    settings: &Settings,
    report: &mut ChaosReport,
    interrupt: impl Future<Output = ()>,
) -> Result<(), BenchError> {
    tokio::pin!(interrupt);
    let seeded = tokio::select! {
        r = seed_records(stack, settings.records) => r,
        () = &mut interrupt => { report.interrupted = true; return Ok(()); }
    };
    seeded?;
    for (i, &scenario) in settings.scenarios.iter().enumerate() {
        eprintln!("chaos: {}", scenario.name());
        let seed = settings.seed.wrapping_add(i as u64 * 1_000_003);
        let step = async {
            if scenario == Scenario::Soak {
                faults::soak(stack, settings, seed)
                    .await
                    .map(|(r, samples)| (r, Some(samples)))
            } else {
                faults::run(stack, settings, scenario, seed)
                    .await
                    .map(|r| (r, None))
            }
        };
        let outcome = tokio::select! {
            outcome = step => outcome,
            () = &mut interrupt => {
                report.interrupted = true;
                return Ok(());
            }
        };
        match outcome {
            Ok((row, samples)) => {
                report::print_row_progress(&row);
                report.scenarios.push(row);
                if let Some(samples) = samples {
                    report.soak = samples;
                }
            }
            Err(e) => {
                eprintln!("chaos: {} failed: {e}", scenario.name());
                report
                    .scenarios
                    .push(ScenarioResult::failed(scenario, e.to_string()));
            }
        }
        for repair in stack.heal().await {
            report
                .repairs
                .push(format!("after {}: {repair}", scenario.name()));
        }
    }
    Ok(())
}

/// Seeds records 1..=`records` as every read benchmark does, so that
/// [`crate::traffic`] knows every answer.
async fn seed_records(stack: &Stack, records: u64) -> Result<(), BenchError> {
    crate::read_bench::seed(&stack.owner, records).await
}

/// `loadtest chaos`: runs, prints the table (partial after Ctrl-C), writes
/// the report, and fails when the contract broke.
pub async fn command(args: ChaosArgs) -> Result<(), BenchError> {
    let settings = Settings::from(args);
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        eprintln!("chaos: interrupted; tearing down");
    };
    let report = run(settings, interrupt).await?;
    report::print(&report);
    if report.broken() {
        return Err(BenchError::Check(
            "a scenario lost, duplicated or misfiled writes, or could not run (see the table)"
                .into(),
        ));
    }
    if report.interrupted {
        return Err(BenchError::Timeout("interrupted".into()));
    }
    Ok(())
}
