//! The chaos runner's own stack, on its own ports: a Postgres primary and a
//! streaming replica (harness clusters, the schema migrated by the owner,
//! the contract's roles), a RabbitMQ node of its own — or a cluster of
//! three, every quorum queue with a member on each — with the contract's
//! least-privilege users, and real release gateways and workers, each
//! logging to a file in the run's directory. Everything is loopback only and
//! torn down at the end.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::broker::{BrokerRole, permissions_for};
use harness::rabbit_cluster::{QueueReplicas, RabbitCluster};
use harness::{TestCluster, TestDb, TestReplica};
use lapin::{Connection, ConnectionProperties};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::process::{Child, Command};

use shared::broker::AmqpUrls;
use shared::settings::Prefix;
use shared::topology::{REPLY_SUCCESS, Topology};

use crate::BenchError;

/// Which kind of process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `write-worker`.
    Worker,
    /// `api-gateway`.
    Gateway,
}

/// One running addonreg process.
pub struct Proc {
    /// `worker-1`, `gateway-2`, …
    pub name: String,
    /// `None` once the runner killed it, until it is started again.
    child: Option<Child>,
    /// Its pid.
    pub pid: u32,
}

/// The whole stack.
pub struct Stack {
    cluster: Arc<TestCluster>,
    replica: Arc<TestReplica>,
    broker: Arc<RabbitCluster>,
    db: Option<TestDb>,
    /// A pool on the primary as the owner (superuser): receipts, records,
    /// pg_stat_activity.
    pub owner: PgPool,
    /// The broker names.
    pub topology: Topology,
    prefix: Prefix,
    worker_url: String,
    gateway_url: String,
    /// Gateway-1's way to the broker (on a one-node stack), so that a fault
    /// can freeze it silently (no FIN, no RST) while the others stay
    /// connected.
    gateway_proxy: harness::TcpProxy,
    /// AMO's broker URLs (every node's): it may only publish to
    /// `<prefix>.writes`.
    pub amo_url: AmqpUrls,
    bin_dir: PathBuf,
    logs: PathBuf,
    workers: Mutex<Vec<Proc>>,
    gateways: Mutex<Vec<Proc>>,
    /// The gateways' public ports, by index.
    pub gateway_ports: Vec<u16>,
}

/// Runs blocking harness work (pg_ctl, rabbitmqctl) on a blocking thread;
/// a harness panic becomes an error.
pub async fn blocking<F>(what: &str, work: F) -> Result<(), BenchError>
where
    F: FnOnce() + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        let reason = e
            .try_into_panic()
            .ok()
            .and_then(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            })
            .unwrap_or_else(|| "cancelled".into());
        BenchError::Check(format!("{what}: {reason}"))
    })
}

fn password() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Stack {
    /// Starts everything: ~20 s (initdb, base backup, a RabbitMQ boot,
    /// three broker users; ~40 s more for a cluster to form), then
    /// `gateways` gateways and `workers` workers, all given every one of
    /// the `broker_nodes` nodes' URLs.
    pub async fn start(
        bin_dir: &Path,
        logs: &Path,
        gateways: usize,
        workers: usize,
        broker_nodes: usize,
    ) -> Result<Self, BenchError> {
        for bin in ["write-worker", "api-gateway"] {
            if !bin_dir.join(bin).exists() {
                return Err(BenchError::Refused(format!(
                    "{} is missing (cargo build --release -p api-gateway -p write-worker)",
                    bin_dir.join(bin).display()
                )));
            }
        }
        let prefix: Prefix = "chaos".parse().map_err(|e: String| BenchError::Check(e))?;
        // The broker boots (and forms) while Postgres is set up.
        let node_task =
            tokio::task::spawn_blocking(move || RabbitCluster::start(broker_nodes.max(1)));
        let cluster = Arc::new(TestCluster::start().await);
        let replica = Arc::new(cluster.start_replica().await);
        let db = TestDb::on(cluster.admin_options()).await;
        let broker = Arc::new(
            node_task
                .await
                .map_err(|e| BenchError::Check(format!("RabbitMQ node(s): {e}")))?,
        );
        let node = broker.nodes()[0].clone();
        let topology = Topology::new(&prefix);
        // The topology, as infra would declare it (the workers do again),
        // once the cluster is formed: the quorum queues get a member on
        // every node.
        let admin = Connection::connect(&node.amqp_url(), ConnectionProperties::default()).await?;
        let channel = admin.create_channel().await?;
        topology.declare(&channel).await?;
        let _ = admin.close(REPLY_SUCCESS, "declared".into()).await;

        let mut urls = Vec::new();
        let mut tasks = Vec::new();
        for (role, user) in [
            (BrokerRole::Amo, "chaos-amo"),
            (BrokerRole::Worker, "chaos-worker"),
            (BrokerRole::Gateway, "chaos-gateway"),
        ] {
            let secret = password();
            urls.push(broker.urls_for(user, &secret));
            let (node, prefix) = (node.clone(), prefix.to_string());
            tasks.push(tokio::task::spawn_blocking(move || {
                node.add_user(user, &secret, &permissions_for(role, &prefix));
            }));
        }
        for task in tasks {
            task.await
                .map_err(|e| BenchError::Check(format!("broker user: {e}")))?;
        }
        let owner = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .connect_with(cluster.admin_options().database(db.name()))
            .await?;
        // In front of the first node (the only one, on a one-node stack).
        let first_gateway_url = urls[2].split(',').next().unwrap_or_default();
        let gateway_proxy = harness::TcpProxy::to_amqp(first_gateway_url).await;
        let stack = Self {
            owner,
            topology,
            prefix,
            worker_url: urls[1].clone(),
            gateway_url: urls[2].clone(),
            gateway_proxy,
            amo_url: urls[0]
                .parse()
                .map_err(|e: String| BenchError::Check(format!("AMO's URLs: {e}")))?,
            bin_dir: bin_dir.to_path_buf(),
            logs: logs.to_path_buf(),
            workers: Mutex::new(Vec::new()),
            gateways: Mutex::new(Vec::new()),
            gateway_ports: (0..gateways).map(|_| harness::free_port()).collect(),
            db: Some(db),
            cluster,
            replica,
            broker,
        };
        for i in 0..workers {
            let p = stack.spawn(Kind::Worker, i)?;
            lock(&stack.workers).push(p);
        }
        for i in 0..gateways {
            let p = stack.spawn(Kind::Gateway, i)?;
            lock(&stack.gateways).push(p);
        }
        for i in 0..gateways {
            stack.wait_gateway(i, Duration::from_secs(30)).await?;
        }
        Ok(stack)
    }

    fn database(&self) -> &str {
        self.db.as_ref().map_or("postgres", |d| d.name())
    }

    /// The guest's URL on the first running node: declares, reads and
    /// purges (the runner's own view).
    pub fn admin_amqp_url(&self) -> String {
        let nodes = self.broker.nodes();
        nodes
            .iter()
            .find(|n| std::net::TcpStream::connect(("127.0.0.1", n.port())).is_ok())
            .unwrap_or(&nodes[0])
            .amqp_url()
    }

    /// How many RabbitMQ nodes the stack runs.
    pub fn broker_nodes(&self) -> usize {
        self.broker.nodes().len()
    }

    /// The database's name and the primary's superuser options.
    pub fn admin_options(&self) -> sqlx::postgres::PgConnectOptions {
        self.cluster.admin_options().database(self.database())
    }

    fn spawn(&self, kind: Kind, index: usize) -> Result<Proc, BenchError> {
        let (bin, name) = match kind {
            Kind::Worker => ("write-worker", format!("worker-{}", index + 1)),
            Kind::Gateway => ("api-gateway", format!("gateway-{}", index + 1)),
        };
        let db = self.database();
        let primary = self.cluster.port();
        let mut env: Vec<(&str, String)> = vec![
            ("ADDONREG_PREFIX", self.prefix.to_string()),
            ("ADDONREG_METRICS_LISTEN", "0".into()),
            ("ADDONREG_LOG", "warn".into()),
        ];
        match kind {
            Kind::Worker => {
                env.push((
                    "ADDONREG_DATABASE_URL",
                    format!("postgres://addonreg_worker@127.0.0.1:{primary}/{db}"),
                ));
                env.push(("ADDONREG_AMQP_URL", self.worker_url.clone()));
            }
            Kind::Gateway => {
                let replica = self.replica.port();
                // The primary last, through the read-only role: a lagging or
                // paused replica never delays freshness (docs/freshness.md).
                env.push((
                    "ADDONREG_REPLICA_URLS",
                    format!(
                        "postgres://addonreg_gateway@127.0.0.1:{replica}/{db},\
                         postgres://addonreg_gateway@127.0.0.1:{primary}/{db}"
                    ),
                ));
                env.push((
                    "ADDONREG_DATABASE_URL",
                    format!("postgres://addonreg_gateway@127.0.0.1:{primary}/{db}"),
                ));
                // A cluster's nodes are not behind the proxy: gateway-1
                // would land on it only by chance.
                let amqp = if index == 0 && self.broker_nodes() == 1 {
                    self.gateway_proxy.url.clone()
                } else {
                    self.gateway_url.clone()
                };
                env.push(("ADDONREG_AMQP_URL", amqp));
                env.push((
                    "ADDONREG_LISTEN",
                    format!("127.0.0.1:{}", self.gateway_ports[index]),
                ));
                env.push(("ADDONREG_REQUEST_LOG_SAMPLE", "0".into()));
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))
            .map_err(|e| BenchError::Process(format!("{name} log"), e))?;
        let err = log
            .try_clone()
            .map_err(|e| BenchError::Process(format!("{name} log"), e))?;
        let path = self.bin_dir.join(bin);
        let mut cmd = Command::new(&path);
        cmd.env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::Process(path.display().to_string(), e))?;
        let pid = child.id().unwrap_or(0);
        Ok(Proc {
            name,
            child: Some(child),
            pid,
        })
    }

    /// Waits until gateway `index` answers `/__heartbeat__` with the broker
    /// check `ok` (subscribed to invalidations).
    pub async fn wait_gateway(&self, index: usize, limit: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + limit;
        let addr = self.gateway_addr(index);
        loop {
            if let Some((_, body)) = super::load::http_get(addr, "/__heartbeat__").await
                && serde_json::from_slice::<serde_json::Value>(&body)
                    .is_ok_and(|v| v["checks"]["broker"] == "ok")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout(format!(
                    "gateway-{} not subscribed within {limit:?}",
                    index + 1
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The address of gateway `index`.
    pub fn gateway_addr(&self, index: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.gateway_ports[index]))
    }

    fn procs(&self, kind: Kind) -> &Mutex<Vec<Proc>> {
        match kind {
            Kind::Worker => &self.workers,
            Kind::Gateway => &self.gateways,
        }
    }

    /// SIGKILLs process `index` of `kind` and waits for it to be gone.
    pub async fn kill(&self, kind: Kind, index: usize) -> Result<(), BenchError> {
        // Taken out, to be awaited without holding the lock.
        let child = lock(self.procs(kind))[index].child.take();
        if let Some(mut child) = child {
            child.start_kill().ok();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        Ok(())
    }

    /// Starts process `index` of `kind` again (after [`Stack::kill`]).
    pub fn restart(&self, kind: Kind, index: usize) -> Result<(), BenchError> {
        let fresh = self.spawn(kind, index)?;
        lock(self.procs(kind))[index] = fresh;
        Ok(())
    }

    /// How many processes of `kind` there are.
    pub fn count(&self, kind: Kind) -> usize {
        lock(self.procs(kind)).len()
    }

    /// (name, pid) of every gateway and worker now.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut all = Vec::new();
        for kind in [Kind::Gateway, Kind::Worker] {
            for p in lock(self.procs(kind)).iter() {
                all.push((p.name.clone(), p.pid));
            }
        }
        all
    }

    /// Processes that exited without being killed by the runner, each
    /// with its exit status; they are started again.
    pub fn reap(&self) -> Result<Vec<String>, BenchError> {
        let mut exited = Vec::new();
        for kind in [Kind::Worker, Kind::Gateway] {
            let n = self.count(kind);
            for i in 0..n {
                let gone = {
                    let mut procs = lock(self.procs(kind));
                    let p = &mut procs[i];
                    match p.child.as_mut().map(|c| c.try_wait()) {
                        // Killed by the runner and not started again.
                        None => Some(None),
                        Some(Ok(Some(status))) => {
                            Some(Some(format!("{} exited by itself ({status})", p.name)))
                        }
                        Some(_) => None,
                    }
                };
                if let Some(unexpected) = gone {
                    exited.extend(unexpected);
                    self.restart(kind, i)?;
                }
            }
        }
        Ok(exited)
    }

    /// Stops every RabbitMQ node (data kept).
    pub async fn stop_broker(&self) -> Result<(), BenchError> {
        for i in 0..self.broker_nodes() {
            self.stop_node(i).await?;
        }
        Ok(())
    }

    /// Starts every stopped RabbitMQ node again, side by side (a cluster's
    /// nodes that all stopped wait for each other as they boot); returns
    /// once each accepts AMQP.
    pub async fn start_broker(&self) -> Result<(), BenchError> {
        let mut down = Vec::new();
        for i in 0..self.broker_nodes() {
            if !self.node_up(i).await {
                down.push(i);
            }
        }
        let starts: Vec<_> = down.into_iter().map(|i| self.start_node(i)).collect();
        for result in futures_util::future::join_all(starts).await {
            result?;
        }
        Ok(())
    }

    /// Stops RabbitMQ node `index` (data kept).
    pub async fn stop_node(&self, index: usize) -> Result<(), BenchError> {
        let node = self.broker.nodes()[index].clone();
        blocking("stop a broker node", move || node.stop()).await
    }

    /// Starts RabbitMQ node `index` again; returns once AMQP is accepted.
    pub async fn start_node(&self, index: usize) -> Result<(), BenchError> {
        let node = self.broker.nodes()[index].clone();
        blocking("start a broker node", move || node.restart()).await
    }

    /// Whether RabbitMQ node `index` accepts AMQP connections.
    pub async fn node_up(&self, index: usize) -> bool {
        tokio::net::TcpStream::connect(("127.0.0.1", self.broker.nodes()[index].port()))
            .await
            .is_ok()
    }

    /// Whether every RabbitMQ node accepts AMQP connections.
    pub async fn broker_up(&self) -> bool {
        for i in 0..self.broker_nodes() {
            if !self.node_up(i).await {
                return false;
            }
        }
        true
    }

    /// Where the writes queue's replicas are, asked of the first running
    /// node (rabbitmqctl, on a blocking thread).
    pub async fn writes_replicas(&self) -> Option<QueueReplicas> {
        let mut via = None;
        for i in 0..self.broker_nodes() {
            if self.node_up(i).await {
                via = Some(i);
                break;
            }
        }
        let (broker, queue) = (self.broker.clone(), self.topology.writes_queue.clone());
        tokio::task::spawn_blocking(move || broker.replicas(via?, &queue))
            .await
            .ok()
            .flatten()
    }

    /// Stops the primary (fast shutdown).
    pub async fn stop_primary(&self) -> Result<(), BenchError> {
        let c = self.cluster.clone();
        blocking("stop the primary", move || c.stop()).await
    }

    /// Starts the primary again.
    pub async fn start_primary(&self) -> Result<(), BenchError> {
        let c = self.cluster.clone();
        blocking("start the primary", move || c.restart()).await
    }

    /// Stops the replica.
    pub async fn stop_replica(&self) -> Result<(), BenchError> {
        let r = self.replica.clone();
        blocking("stop the replica", move || r.stop()).await
    }

    /// Starts the replica again.
    pub async fn start_replica(&self) -> Result<(), BenchError> {
        let r = self.replica.clone();
        blocking("start the replica", move || r.restart()).await
    }

    /// Freezes gateway-1's broker connection silently (or forwards again):
    /// a partition that only its heartbeats can tell.
    pub fn freeze_gateway_broker(&self, frozen: bool) {
        self.gateway_proxy.set(if frozen {
            harness::ProxyMode::Freeze
        } else {
            harness::ProxyMode::Forward
        });
    }

    /// Pauses (or resumes) WAL replay on the replica.
    pub async fn replay(&self, paused: bool) -> Result<(), BenchError> {
        let mut conn = PgConnection::connect_with(&self.replica.admin_options()).await?;
        let sql = if paused {
            "SELECT pg_wal_replay_pause()"
        } else {
            "SELECT pg_wal_replay_resume()"
        };
        sqlx::query(sql).execute(&mut conn).await?;
        Ok(())
    }

    async fn answers(options: sqlx::postgres::PgConnectOptions) -> bool {
        match tokio::time::timeout(Duration::from_secs(3), PgConnection::connect_with(&options))
            .await
        {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                true
            }
            _ => false,
        }
    }

    /// Puts back whatever a fault that did not end cleanly left broken:
    /// the broker, the primary, the replica (and its replay), dead processes.
    /// Returns what it had to repair.
    pub async fn heal(&self) -> Vec<String> {
        let mut repaired = Vec::new();
        if !self.broker_up().await {
            repaired.push("broker restarted".into());
            if let Err(e) = self.start_broker().await {
                repaired.push(format!("broker: {e}"));
            }
        }
        if !Self::answers(self.cluster.admin_options()).await {
            repaired.push("primary restarted".into());
            if let Err(e) = self.start_primary().await {
                repaired.push(format!("primary: {e}"));
            }
        }
        if !Self::answers(self.replica.admin_options()).await {
            repaired.push("replica restarted".into());
            if let Err(e) = self.start_replica().await {
                repaired.push(format!("replica: {e}"));
            }
        }
        let _ = self.replay(false).await;
        self.freeze_gateway_broker(false);
        match self.reap() {
            Ok(exited) => repaired.extend(exited),
            Err(e) => repaired.push(format!("restart: {e}")),
        }
        repaired
    }

    /// Kills every process, then removes the clusters and the node (their
    /// own `Drop`s, on a blocking thread).
    pub async fn teardown(mut self) {
        for kind in [Kind::Gateway, Kind::Worker] {
            let procs: Vec<Proc> = std::mem::take(&mut *lock(self.procs(kind)));
            for mut child in procs.into_iter().filter_map(|p| p.child) {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            }
        }
        self.owner.close().await;
        if let Some(db) = &self.db {
            db.owner.close().await;
        }
        let (db, replica, cluster, broker) =
            (self.db.take(), self.replica, self.cluster, self.broker);
        let _ = tokio::task::spawn_blocking(move || {
            // The database goes with its cluster: no need to drop it first.
            std::mem::forget(db);
            drop(replica);
            drop(cluster);
            drop(broker);
        })
        .await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
