//! What the gateway's tests share on top of the harness.

use std::time::Duration;

use harness::{
    Launch, TestBroker, TestCluster, TestDb, TestProcess, TestReplica, free_port, wait_for_http,
};

/// A real `api-gateway` process and its two addresses.
pub struct Gateway {
    /// The process.
    pub process: TestProcess,
    /// `http://127.0.0.1:<public port>`.
    pub public: String,
    /// `http://127.0.0.1:<admin port>`.
    pub admin: String,
}

/// Starts the gateway reading from `replica_urls`, and waits until it listens.
pub async fn start_gateway(replica_urls: &[String], prefix: &str) -> Gateway {
    start_gateway_with(replica_urls, prefix, &[]).await
}

/// The same with more `ADDONREG_*` settings (which win over the defaults here).
pub async fn start_gateway_with(
    replica_urls: &[String],
    prefix: &str,
    settings: &[(&str, String)],
) -> Gateway {
    let (public, admin) = (free_port(), free_port());
    let launch = Launch::gateway(
        env!("CARGO_BIN_EXE_api-gateway"),
        replica_urls,
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        prefix,
        public,
    )
    .set("ADDONREG_METRICS_LISTEN", &format!("127.0.0.1:{admin}"))
    .set("ADDONREG_DB_ACQUIRE_TIMEOUT_MS", "500")
    .settings(settings);
    let process = TestProcess::launch(&launch);
    let gateway = Gateway {
        process,
        public: format!("http://127.0.0.1:{public}"),
        admin: format!("http://127.0.0.1:{admin}"),
    };
    wait_for_http(
        &format!("{}/__lbheartbeat__", gateway.public),
        200,
        Duration::from_secs(20),
    )
    .await;
    gateway
}

/// GET `url`, returning the status and the JSON body.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// A record to insert as the owner, as a worker would have stored it.
#[derive(Debug, Clone)]
pub struct SeedRecord {
    pub addon_id: String,
    /// 64 hex digits.
    pub sha256: String,
    /// `registered`, `revoked` or `deleted` (a tombstone).
    pub status: &'static str,
    pub version: Option<String>,
    /// RFC 3339.
    pub registered_at: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
}

impl SeedRecord {
    /// A registered record of version 1.0, registered and updated at the same time.
    pub fn registered(addon_id: &str, sha256: &str) -> Self {
        Self {
            addon_id: addon_id.into(),
            sha256: sha256.into(),
            status: "registered",
            version: Some("1.0".into()),
            registered_at: Some("2026-11-22T10:00:00.123456Z".into()),
            updated_at: "2026-11-22T10:00:00.123456Z".into(),
        }
    }
}

/// Inserts (or replaces) records as the schema's owner.
pub async fn insert_records(owner: &sqlx::PgPool, records: &[SeedRecord]) {
    for r in records {
        sqlx::query(
            "INSERT INTO records (addon_id, sha256, status, version, registered_at, updated_at, \
                                  last_write_id, last_op_index, ops) \
             VALUES ($1, decode($2, 'hex'), $3, $4, $5::timestamptz, $6::timestamptz, 'seed', 0, '[]'::jsonb) \
             ON CONFLICT (addon_id, sha256) DO UPDATE SET status = EXCLUDED.status, \
                 version = EXCLUDED.version, registered_at = EXCLUDED.registered_at, \
                 updated_at = EXCLUDED.updated_at",
        )
        .bind(&r.addon_id)
        .bind(&r.sha256)
        .bind(r.status)
        .bind(&r.version)
        .bind(&r.registered_at)
        .bind(&r.updated_at)
        .execute(owner)
        .await
        .expect("insert record");
    }
}

/// Inserts a receipt as the schema's owner.
pub async fn insert_receipt(
    owner: &sqlx::PgPool,
    write_id: &str,
    status: &str,
    reason: Option<&str>,
    processed_at: &str,
) {
    sqlx::query(
        "INSERT INTO receipts (write_id, status, reason, processed_at) \
         VALUES ($1, $2, $3, $4::timestamptz)",
    )
    .bind(write_id)
    .bind(status)
    .bind(reason)
    .bind(processed_at)
    .execute(owner)
    .await
    .expect("insert receipt");
}

pub use harness::broker::{Amo, close_broker_connections};

/// Publishes one `register` of (`addon_id`, `sha256`, `version`) as a new
/// write issued now, as AMO would, and returns its `write_id`.
pub async fn register(amo: &Amo, addon_id: &str, sha256: &str, version: &str) -> String {
    let write_id = uuid::Uuid::new_v4().to_string();
    let issued_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    amo.publish(
        &serde_json::json!({"v": 1, "write_id": write_id, "issued_at": issued_at,
        "ops": [{"op": "register", "addon_id": addon_id, "sha256": sha256, "version": version}]}),
    )
    .await;
    write_id
}

/// A real write worker, run in this test process on a thread and runtime of
/// its own (no second binary to build), stopped by `terminate` or on drop.
pub struct Worker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Stops it as SIGTERM would (the batch in hand is committed and
    /// acknowledged) and waits until it has.
    pub fn terminate(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("worker thread");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Starts a write worker committing to `database_url` and consuming the
/// writes of `broker`'s prefix, with its admin listener off.
pub fn start_worker(database_url: String, broker: &harness::TestBroker) -> Worker {
    use clap::Parser;
    let cli = write_worker::settings::Cli::try_parse_from([
        "write-worker",
        "--database-url",
        &database_url,
        "--amqp-url",
        &broker.url,
        "--prefix",
        broker.prefix.as_str(),
        "--metrics-listen",
        "0",
    ])
    .expect("worker settings");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("worker runtime");
        runtime.block_on(async move {
            let app = write_worker::App::build(cli.settings)
                .await
                .expect("worker starts");
            app.run(async move {
                let _ = stopped.await;
            })
            .await;
        });
    });
    Worker {
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// The value of one sample on the admin `/metrics` (0 when absent), e.g.
/// `addonreg_gateway_store_queries_total{kind="record"}`.
pub async fn metric(gateway: &Gateway, sample: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", gateway.admin))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Polls `check` every 10 ms until it holds, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (up to 20 s) until the write's receipt exists on the primary.
pub async fn wait_receipt(primary: &sqlx::PgPool, write_id: &str) {
    eventually(Duration::from_secs(20), "receipt", || async {
        sqlx::query("SELECT 1 FROM receipts WHERE write_id = $1")
            .bind(write_id)
            .fetch_optional(primary)
            .await
            .unwrap()
            .is_some()
    })
    .await;
}

/// Waits until the gateway says it is subscribed to invalidations.
pub async fn wait_subscribed(gateway: &Gateway) {
    let url = format!("{}/__heartbeat__", gateway.public);
    eventually(Duration::from_secs(20), "broker ok", || async {
        get_json(&url).await.1["checks"]["broker"] == "ok"
    })
    .await;
}

/// What the replica-lag tests stand on: a Postgres primary of the test's own
/// with one streaming replica, a migrated database on it, a broker prefix,
/// AMO's publisher and a real worker. Fields drop in order: the worker
/// first, the cluster last.
pub struct ReplicaStack {
    /// A real `write-worker` on the primary.
    pub worker: Worker,
    /// Publishes as AMO does.
    pub amo: Amo,
    /// The test's broker prefix.
    pub broker: TestBroker,
    /// The streaming replica, whose replay the test may pause.
    pub replica: TestReplica,
    /// The database, on the primary.
    pub db: TestDb,
    /// The primary.
    pub cluster: TestCluster,
}

impl ReplicaStack {
    /// Starts it all.
    pub async fn start() -> Self {
        let cluster = TestCluster::start().await;
        let db = TestDb::on(cluster.admin_options()).await;
        let replica = cluster.start_replica().await;
        let broker = TestBroker::new();
        let amo = Amo::connect(&broker).await;
        let worker = start_worker(db.url_as("addonreg_worker"), &broker);
        Self {
            worker,
            amo,
            broker,
            replica,
            db,
            cluster,
        }
    }

    /// The replica's URL for the gateway's read-only role.
    pub fn replica_url(&self) -> String {
        format!(
            "postgres://addonreg_gateway@127.0.0.1:{}/{}",
            self.replica.port(),
            self.db.name()
        )
    }
}
