//! Dockerflow on the worker's admin listener: `/__heartbeat__` (the consumer
//! loop, the database, the janitor) and `/__version__`.
//!
//! Liveness uses `/__heartbeat__`, so only what a restart cures fails it
//! (HTTP 500): a consumer loop stuck inside one step, i.e. one poll of its
//! future that does not return (a blocked thread, a loop that never yields).
//! A database or broker outage is a warning: the worker waits it out and
//! resumes by itself.
//!
//! The consumer loop runs inside [`watched`], which records on the [`Pulse`]
//! when a poll of it began. A stuck poll freezes the task that runs the
//! loop, so the admin listener runs on a thread of its own and reads only
//! shared state: the pulse, and the database check that [`Dockerflow::watch`]
//! refreshes from the main runtime (its age shows when that stalls too).
//! An await inside the loop that never completes is not seen from here: the
//! loop would have to beat the pulse itself (docs/deployment.md).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Gauge, Registry};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::{Filter, Reply};

use shared::admin::ExtraRoutes;
use shared::version::VersionInfo;

/// Where container images keep `version.json` (as `main.rs` reads it).
pub const VERSION_FILE: &str = "/app/version.json";
/// A single poll of the consumer loop longer than this is a wedge.
pub const STUCK_AFTER: Duration = Duration::from_secs(30);
/// How often the database check (and the janitor gauge) is refreshed.
const REFRESH: Duration = Duration::from_secs(15);
/// Longest the check waits for the database.
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// When the consumer loop was last seen working, as the admin task sees it.
#[derive(Debug)]
pub struct Pulse {
    origin: Instant,
    /// Milliseconds since `origin` + 1 at which the poll in progress began; 0: none.
    polling_since: AtomicU64,
}

impl Default for Pulse {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            polling_since: AtomicU64::new(0),
        }
    }
}

impl Pulse {
    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    /// How long the poll in progress has run, if one is.
    pub fn stuck_for(&self) -> Option<Duration> {
        match self.polling_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_millis(self.now().saturating_sub(since))),
        }
    }
}

/// Runs `work`, recording each poll of it on `pulse`.
pub async fn watched<F: Future>(pulse: Arc<Pulse>, work: F) -> F::Output {
    let mut work = pin!(work);
    std::future::poll_fn(|cx| {
        pulse.polling_since.store(pulse.now(), Ordering::Release);
        let polled = work.as_mut().poll(cx);
        pulse.polling_since.store(0, Ordering::Release);
        polled
    })
    .await
}

/// The last database check, as [`Dockerflow::watch`] left it.
#[derive(Debug, Clone)]
struct DbCheck {
    at: Instant,
    /// Seconds since a janitor round, or why the database did not answer.
    result: Result<f64, String>,
}

/// The worker's Dockerflow endpoints and the janitor gauge.
#[derive(Clone)]
pub struct Dockerflow {
    pool: PgPool,
    pulse: Arc<Pulse>,
    version: Arc<VersionInfo>,
    janitor_round_age: Gauge,
    db: Arc<Mutex<Option<DbCheck>>>,
    stuck_after: Duration,
}

impl Dockerflow {
    /// Registers `janitor_round_age_seconds` in `registry`.
    pub fn new(pool: PgPool, registry: &Registry, version: VersionInfo) -> Self {
        // Start-up: the name is a constant, registered once.
        let janitor_round_age = Gauge::new(
            "janitor_round_age_seconds",
            "Seconds since any worker's janitor last completed a round.",
        )
        .expect("metric definition");
        registry
            .register(Box::new(janitor_round_age.clone()))
            .expect("unique metric");
        Self {
            pool,
            pulse: Arc::new(Pulse::default()),
            version: Arc::new(version),
            janitor_round_age,
            db: Arc::new(Mutex::new(None)),
            stuck_after: STUCK_AFTER,
        }
    }

    /// Another threshold than [`STUCK_AFTER`] for one stuck step (tests).
    pub fn stuck_after(mut self, after: Duration) -> Self {
        self.stuck_after = after;
        self
    }

    /// The pulse to run the consumer loop with ([`watched`]).
    pub fn pulse(&self) -> Arc<Pulse> {
        self.pulse.clone()
    }

    /// Seconds since any worker's janitor last completed a round; before
    /// any round ever did, seconds since this worker started.
    async fn janitor_round_age(&self) -> Result<f64, String> {
        let query = sqlx::query_scalar::<_, Option<f64>>(
            "SELECT CASE WHEN isfinite(last_round_at) \
                 THEN extract(epoch FROM now() - last_round_at)::float8 END FROM janitor",
        )
        .fetch_one(&self.pool);
        match tokio::time::timeout(DB_CHECK_TIMEOUT, query).await {
            Ok(Ok(Some(age))) => Ok(age.max(0.0)),
            Ok(Ok(None)) => Ok(self.pulse.origin.elapsed().as_secs_f64()),
            Ok(Err(e)) => Err(format!("database unavailable, waiting: {e}")),
            Err(_) => Err("database did not answer within 2 s".into()),
        }
    }

    /// Checks the database (and sets the janitor gauge) every few seconds
    /// until `stop` fires, on the main runtime.
    pub async fn watch(&self, stop: &CancellationToken) {
        loop {
            let result = self.janitor_round_age().await;
            if let Ok(age) = result {
                self.janitor_round_age.set(age);
            }
            if let Ok(mut db) = self.db.lock() {
                *db = Some(DbCheck {
                    at: Instant::now(),
                    result,
                });
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
    }

    /// The heartbeat's status and body, from shared state only.
    pub fn heartbeat(&self) -> (StatusCode, serde_json::Value) {
        let consumer = match self.pulse.stuck_for() {
            Some(d) if d >= self.stuck_after => json!({"status": "error",
                "detail": format!("consumer loop stuck in one step for {} s", d.as_secs())}),
            _ => json!({"status": "ok"}),
        };
        let db = self.db.lock().ok().and_then(|db| db.clone());
        let database = match db {
            None => json!({"status": "warning", "detail": "not checked yet"}),
            Some(c) if c.at.elapsed() > 4 * REFRESH => json!({"status": "warning",
                "detail": format!("last checked {} s ago", c.at.elapsed().as_secs())}),
            Some(DbCheck {
                result: Ok(age), ..
            }) => {
                json!({"status": "ok", "janitor_round_age_seconds": age.round()})
            }
            Some(DbCheck { result: Err(e), .. }) => json!({"status": "warning", "detail": e}),
        };
        let error = consumer["status"] == "error";
        let status = if error {
            "error"
        } else if database["status"] == "warning" {
            "warning"
        } else {
            "ok"
        };
        let code = if error {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        let body = json!({
            "status": status,
            "checks": {"consumer": consumer["status"], "database": database["status"]},
            "details": {"consumer": consumer, "database": database},
        });
        (code, body)
    }

    /// `GET /__heartbeat__` and `GET /__version__`.
    pub fn routes(&self) -> ExtraRoutes {
        let this = self.clone();
        let heartbeat = warp::path!("__heartbeat__").and(warp::get()).map(move || {
            let (code, body) = this.heartbeat();
            Box::new(warp::reply::with_status(warp::reply::json(&body), code)) as Box<dyn Reply>
        });
        let version = self.version.clone();
        let version = warp::path!("__version__")
            .and(warp::get())
            .map(move || Box::new(warp::reply::json(version.as_ref())) as Box<dyn Reply>);
        heartbeat.or(version).unify().boxed()
    }
}
