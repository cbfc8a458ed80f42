//! Builds a worker from its settings and runs it until told to stop: on
//! SIGTERM it stops taking messages, commits and acknowledges the batch in
//! hand, and exits.

use std::future::Future;
use std::net::SocketAddr;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use shared::db;
use shared::settings::InvalidSetting;
use shared::topology::Topology;
use shared::version::VersionInfo;

use crate::consumer::Consumer;
use crate::dockerflow::{self, Dockerflow};
use crate::janitor;
use crate::metrics::Metrics;
use crate::settings::Settings;

/// Why a worker could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A setting is wrong.
    #[error(transparent)]
    Setting(#[from] InvalidSetting),
    /// The admin listener could not be bound.
    #[error("cannot listen on {addr} (ADDONREG_METRICS_LISTEN): {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The OS's refusal (in use, no permission, no such interface).
        source: std::io::Error,
    },
}

/// A worker ready to run.
pub struct App {
    settings: Settings,
    admin: Option<TcpListener>,
    pool: sqlx::PgPool,
    registry: prometheus::Registry,
    metrics: Metrics,
}

impl App {
    /// Binds the admin listener and prepares the pool (which connects lazily,
    /// so a worker starts while Postgres is down).
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let options = db::connect_options(
            &settings.database_url,
            "ADDONREG_DATABASE_URL",
            &settings.pool,
            "addonreg-write-worker",
        )?;
        settings.batch.validate()?;
        let pool = db::lazy_pool(options, &settings.pool);
        let admin = match settings.metrics_listen.0 {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let registry = shared::admin::registry("addonreg_worker");
        let metrics = Metrics::register(&registry);
        Ok(Self {
            settings,
            admin,
            pool,
            registry,
            metrics,
        })
    }

    /// Where the admin listener is, if on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let stop = CancellationToken::new();
        let topology = Topology::new(&self.settings.amqp.prefix);
        let version = VersionInfo::load(std::path::Path::new(dockerflow::VERSION_FILE));
        let flow = Dockerflow::new(self.pool.clone(), &self.registry, version);
        // A thread of its own: it answers (with an error) even when the
        // consumer loop blocks the task below.
        let admin = self.admin.and_then(|listener| {
            shared::admin::spawn_with(listener, self.registry, flow.routes(), stop.clone())
                .inspect_err(
                    |e| tracing::error!(type = "admin.failed", error = %e, "no admin listener"),
                )
                .ok()
        });
        let consumer = Consumer {
            pool: self.pool.clone(),
            amqp_urls: self.settings.amqp.url.clone(),
            topology,
            batch: self.settings.batch.clone(),
            metrics: self.metrics,
        };
        let work = dockerflow::watched(flow.pulse(), consumer.run(&stop));
        let checks = flow.watch(&stop);
        let janitor = janitor::run(&self.pool, self.settings.janitor.retention(), &stop);
        let signal = async {
            shutdown.await;
            stop.cancel();
        };
        tokio::join!(work, janitor, checks, signal);
        if let Some(admin) = admin {
            let _ = tokio::task::spawn_blocking(move || admin.join()).await;
        }
        self.pool.close().await;
        tracing::info!(type = "worker.stop", "worker stopped");
    }
}
