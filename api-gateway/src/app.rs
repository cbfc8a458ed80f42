//! Builds the gateway from its settings and runs it until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::Filter;

use shared::settings::InvalidSetting;
use shared::version::VersionInfo;

use shared::topology::Topology;

use crate::cache::{CacheConfig, CacheControl, CachedReads, DEFAULT_MAX_FENCES};
use crate::edge::{self, EdgeState};
use crate::http_caching::{CachePolicy, Lifetimes};
use crate::metrics::Metrics;
use crate::replicas::{self, Replica};
use crate::server::{self, ConnectionMetrics, Limits};
use crate::settings::Settings;
use crate::store::ReadStore;
use crate::summary::Summary;
use crate::{dockerflow, errors, invalidation, monitor, routes};

/// Why the gateway could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A setting is wrong.
    #[error(transparent)]
    Setting(#[from] InvalidSetting),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address that was asked for.
        addr: SocketAddr,
        /// The OS's refusal (in use, no permission, no such interface).
        source: std::io::Error,
    },
    /// A metric could not be registered (a bug: names are constants).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A gateway with its listeners bound, ready to run.
pub struct App {
    public: TcpListener,
    admin: Option<TcpListener>,
    replicas: Arc<Vec<Replica>>,
    reads: CachedReads<ReadStore>,
    store: ReadStore,
    metrics: Metrics,
    check_every: Duration,
    cache: CacheControl,
    subscription: invalidation::Subscription,
    caching: CachePolicy,
    edge: EdgeState,
    version: Arc<VersionInfo>,
    registry: prometheus::Registry,
    summary: Summary,
    limits: Limits,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

impl App {
    /// Binds the listeners and prepares the replica pools (which connect lazily).
    pub async fn build(settings: &Settings) -> Result<Self, StartError> {
        if settings.read_timeout_ms == 0 {
            return Err(InvalidSetting {
                variable: "ADDONREG_READ_TIMEOUT_MS",
                problem: "must be at least 1".into(),
            }
            .into());
        }
        let limits = settings.http_limits()?;
        // A read given up after its attempt timeout must not keep its
        // connection busy on the server for longer: under a long-held lock
        // the pool would otherwise stay empty for the whole statement
        // timeout (seen in `loadtest chaos`, primary-slow).
        let mut pool = settings.pool.clone();
        pool.statement_timeout_ms = pool.statement_timeout_ms.min(settings.read_timeout_ms);
        let replicas = Arc::new(replicas::connect(&settings.read_urls(), &pool)?);
        let public = bind("ADDONREG_LISTEN", settings.listen).await?;
        let admin = match settings.metrics_listen.0 {
            Some(addr) => Some(bind("ADDONREG_METRICS_LISTEN", addr).await?),
            None => None,
        };
        if settings.replica_check_interval_ms == 0 {
            return Err(InvalidSetting {
                variable: "ADDONREG_REPLICA_CHECK_INTERVAL_MS",
                problem: "must be at least 1".into(),
            }
            .into());
        }
        let registry = shared::admin::registry("addonreg_gateway");
        let metrics = Metrics::register(&registry)?;
        let summary = Summary::new(metrics.clone(), settings.request_log_sample)?;
        let store = ReadStore::new(replicas.clone(), settings.read_timeout());
        let edge = EdgeState::default();
        let (reads, cache) = CachedReads::new(
            store.clone(),
            CacheConfig {
                max_entries: settings.cache_max_entries,
                max_bytes: settings.cache_max_bytes,
                ttl_found: Duration::from_secs(settings.cache_ttl_found_secs.into()),
                ttl_missing: Duration::from_secs(settings.cache_ttl_missing_secs.into()),
                ttl_disconnected: Duration::from_millis(settings.cache_disconnected_ttl_ms),
                sources: replicas.len(),
                max_fences: DEFAULT_MAX_FENCES,
            },
            metrics.clone(),
        );
        Ok(Self {
            public,
            admin,
            reads,
            store: store.clone(),
            metrics,
            check_every: Duration::from_millis(settings.replica_check_interval_ms),
            cache,
            subscription: invalidation::Subscription {
                broker: invalidation::Broker {
                    urls: settings.amqp.url.clone(),
                    heartbeat_secs: settings.amqp_heartbeat_secs,
                    topology: Topology::new(&settings.amqp.prefix),
                    // Named per prefix, so SREs (and tests) can find it.
                    connection_name: format!("addonreg-gateway {}", settings.amqp.prefix.as_str()),
                },
                store: store.clone(),
                edge: edge.clone(),
            },
            caching: CachePolicy::new(
                Lifetimes {
                    found: settings.cache_ttl_found_secs,
                    missing: settings.cache_ttl_missing_secs,
                    shared: settings.shared_max_age_secs,
                    // Whole seconds, rounded down: never longer than the
                    // gateway's own disconnected lifetime.
                    disconnected: u32::try_from(settings.cache_disconnected_ttl_ms / 1000)
                        .unwrap_or(u32::MAX),
                },
                edge.clone(),
            ),
            edge,
            replicas,
            version: Arc::new(VersionInfo::load(&settings.version_file)),
            registry,
            summary,
            limits,
        })
    }

    /// Where the public listener is (port 0 resolved).
    pub fn public_addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Where the admin listener is, if on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then finishes the requests in hand.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let stop = CancellationToken::new();
        // The read API first: its record route is the hot path, and every
        // route tried before it costs each request a failed match.
        let routes = routes::routes(
            self.reads.clone(),
            self.caching.clone(),
            self.limits.body_read_timeout,
        )
        .or(dockerflow::routes(
            self.replicas.clone(),
            self.cache.clone(),
            self.version.clone(),
        ))
        .recover(errors::recover)
        .with(warp::log::custom({
            let summary = self.summary.clone();
            move |info| summary.record(&info)
        }));
        tracing::info!(
            type = "gateway.start",
            listen = %self.public_addr(),
            replicas = self.replicas.len(),
            "gateway listening"
        );
        let public = server::serve(
            self.public,
            routes,
            self.limits,
            ConnectionMetrics {
                open: self.metrics.http_connections_open.clone(),
                refused: self.metrics.http_connections_refused.clone(),
            },
            stop.clone().cancelled_owned(),
        );
        let admin = async {
            if let Some(listener) = self.admin {
                shared::admin::serve_with(
                    listener,
                    self.registry,
                    edge::admin_route(self.edge.clone()),
                    stop.clone().cancelled_owned(),
                )
                .await;
            }
        };
        let signal = async {
            shutdown.await;
            stop.cancel();
        };
        // Ends with `stop`; the cache outlives it only by the final requests.
        let subscription = invalidation::run(self.subscription, self.cache.clone(), stop.clone());
        let monitor = monitor::run(
            self.replicas.clone(),
            self.store.clone(),
            self.cache.clone(),
            self.metrics.clone(),
            self.check_every,
            stop.clone(),
        );
        tokio::join!(public, admin, signal, subscription, monitor);
        for replica in self.replicas.iter() {
            replica.pool.close().await;
        }
        tracing::info!(type = "gateway.stop", "gateway stopped");
    }
}
