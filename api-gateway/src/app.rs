//! Builds the gateway from its settings and runs it until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::Filter;

use shared::settings::InvalidSetting;
use shared::version::VersionInfo;

use crate::http_caching::CachePolicy;
use crate::replicas::{self, Replica};
use crate::settings::Settings;
use crate::store::ReadStore;
use crate::{dockerflow, errors, routes};

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
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A gateway with its listeners bound, ready to run.
pub struct App {
    public: TcpListener,
    admin: Option<TcpListener>,
    replicas: Arc<Vec<Replica>>,
    store: ReadStore,
    caching: CachePolicy,
    version: Arc<VersionInfo>,
    registry: prometheus::Registry,
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
        let replicas = Arc::new(replicas::connect(&settings.read_urls(), &settings.pool)?);
        let public = bind("ADDONREG_LISTEN", settings.listen).await?;
        let admin = match settings.metrics_listen.0 {
            Some(addr) => Some(bind("ADDONREG_METRICS_LISTEN", addr).await?),
            None => None,
        };
        Ok(Self {
            public,
            admin,
            store: ReadStore::new(replicas.clone(), settings.read_timeout()),
            caching: CachePolicy::new(
                settings.cache_ttl_found_secs,
                settings.cache_ttl_missing_secs,
            ),
            replicas,
            version: Arc::new(VersionInfo::load(&settings.version_file)),
            registry: shared::admin::registry("addonreg_gateway"),
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
        let routes = dockerflow::routes(self.replicas.clone(), self.version.clone())
            .or(routes::routes(self.store.clone(), self.caching.clone()))
            .recover(errors::recover);
        tracing::info!(
            type = "gateway.start",
            listen = %self.public_addr(),
            replicas = self.replicas.len(),
            "gateway listening"
        );
        let public = warp::serve(routes)
            .incoming(self.public)
            .graceful(stop.clone().cancelled_owned())
            .run();
        let admin = async {
            if let Some(listener) = self.admin {
                shared::admin::serve(listener, self.registry, stop.clone().cancelled_owned()).await;
            }
        };
        let signal = async {
            shutdown.await;
            stop.cancel();
        };
        tokio::join!(public, admin, signal);
        for replica in self.replicas.iter() {
            replica.pool.close().await;
        }
        tracing::info!(type = "gateway.stop", "gateway stopped");
    }
}
