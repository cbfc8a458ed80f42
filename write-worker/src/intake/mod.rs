//! The HTTP write intake (`write-worker intake`): AMO posts a write message
//! v1 and gets a 202 once the writes queue holds it, a 400 naming what the
//! worker would dead-letter it for, or a 503 to retry. It publishes to the
//! writes exchange only, as its own least-privilege broker user, and never
//! touches the database.
//!
//! Layout:
//! - `settings`: its flags and `ADDONREG_INTAKE_*` variables.
//! - `auth`: bearer tokens, kept as SHA-256 digests, two at once.
//! - `channels`: the pool of confirm-mode channels and the confirmed publish.
//! - `backlog`: the writes queue's backlog, read about once a second.
//! - `routes`: `POST /v1/writes`, the OpenAPI document, Dockerflow, request summaries.
//! - `errors`: every failure as its HTTP answer and metric.
//! - `metrics`: every metric it exports.

pub mod auth;
pub mod backlog;
pub mod channels;
pub mod errors;
pub mod metrics;
pub mod routes;
pub mod settings;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use shared::settings::{AmqpSettings, InvalidSetting};
use shared::topology::Topology;
use shared::version::VersionInfo;

use self::backlog::Backlog;
use self::channels::Channels;
use self::metrics::Metrics;
use self::routes::State;
use self::settings::IntakeSettings;

/// Why the intake could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A setting is wrong.
    #[error(transparent)]
    Setting(#[from] InvalidSetting),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({variable}): {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// The setting naming it.
        variable: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The channel pool could not be built.
    #[error("broker pool: {0}")]
    Pool(String),
}

/// An intake ready to run.
pub struct Intake {
    public: TcpListener,
    admin: Option<TcpListener>,
    registry: prometheus::Registry,
    state: Arc<State>,
}

impl Intake {
    /// Reads the token digests, binds both listeners and prepares the pool
    /// (which connects lazily, so the intake starts while the broker is down).
    pub async fn build(settings: &IntakeSettings, amqp: &AmqpSettings) -> Result<Self, StartError> {
        settings.validate()?;
        let tokens = settings.tokens()?;
        let bind = |addr: SocketAddr, variable| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr,
                    variable,
                    source,
                })
        };
        let public = bind(settings.listen, "ADDONREG_INTAKE_LISTEN").await?;
        let admin = match settings.metrics_listen.0 {
            Some(addr) => Some(bind(addr, "ADDONREG_INTAKE_METRICS_LISTEN").await?),
            None => None,
        };
        let registry = shared::admin::registry("addonreg_intake");
        let metrics = Metrics::register(&registry);
        let topology = Topology::new(&amqp.prefix);
        let channels = Channels::new(
            &amqp.url,
            &topology,
            settings.connections,
            settings.channels,
            settings.confirm_timeout(),
            metrics.clone(),
        )
        .map_err(StartError::Pool)?;
        let state = Arc::new(State {
            tokens,
            channels,
            backlog: Backlog::new(settings.max_backlog),
            metrics,
            version: VersionInfo::load(std::path::Path::new(crate::dockerflow::VERSION_FILE)),
        });
        Ok(Self {
            public,
            admin,
            registry,
            state,
        })
    }

    /// Where the public listener is.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.public.local_addr().ok()
    }

    /// Serves until `shutdown` resolves: then stops accepting, finishes the
    /// posts in hand (each answered after its confirm or timeout), and
    /// closes the broker connections.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let stop = CancellationToken::new();
        let admin = async {
            if let Some(listener) = self.admin {
                shared::admin::serve(
                    listener,
                    self.registry.clone(),
                    stop.clone().cancelled_owned(),
                )
                .await;
            }
        };
        let watch = tokio::spawn(self.state.backlog.clone().watch(
            self.state.channels.clone(),
            self.state.metrics.clone(),
            stop.clone(),
        ));
        let serve = warp::serve(routes::routes(self.state.clone()))
            .incoming(self.public)
            .graceful(stop.clone().cancelled_owned())
            .run();
        let signal = async {
            shutdown.await;
            tracing::info!(type = "intake.stopping", "intake stopping");
            stop.cancel();
        };
        tokio::join!(serve, admin, signal);
        let _ = watch.await;
        self.state.channels.close();
        tracing::info!(type = "intake.stop", "intake stopped");
    }
}
