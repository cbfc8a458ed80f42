//! The edge purger (`edge-purger`): hears every invalidation event and
//! purges its surrogate keys from the CDN, so that the edge may keep
//! answers for `s-maxage` (an hour) and still stop serving an old value
//! within the freshness promise. See `docs/edge.md` for the reasoning.
//!
//! The trap is the edge's refetch right after a purge: from a gateway that
//! has not applied the event yet, or reads a lagging replica without
//! knowing it, it would store the old answer for an hour. So a key is
//! purged:
//! 1. once every gateway reports (on its admin listener, `edge`) that it
//!    has applied the event: from then on each answers from a source that
//!    has replayed the event's LSN, so a refetch is fresh;
//! 2. again `ADDONREG_EDGE_REPURGE_AFTER_MS` later: a refetch that had
//!    already reached a gateway before it applied the event may land after
//!    the first purge; the edge gives up on a fetch before that bound
//!    (the VCL's first-byte and between-bytes timeouts), so none is left;
//! 3. early, at `ADDONREG_EDGE_MAX_WAIT_MS`, when some gateway has not
//!    confirmed by then (slow, partitioned): the edge then stops serving
//!    the old answer on time from every gateway that has applied it; the
//!    confirmed purge and its repeat still follow.
//!
//! A gateway that refuses connections serves nothing, and one that is not
//! subscribed gives the edge only short lifetimes: neither holds a purge.
//! After (re)subscribing the purger missed events, so it purges everything,
//! and again after the same bound.

pub mod cdn;
pub mod gateways;
pub mod settings;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use shared::broker::Reconnect;
use shared::event::InvalidationEvent;
use shared::topology::{REPLY_SUCCESS, Topology};

use crate::edge::{self, AppliedItem};
use crate::invalidation::{self, Broker, SubscriptionError};
use cdn::Cdn;
use gateways::Gateways;

/// Most items asked of the gateways in one round.
pub const ASK_MAX_ITEMS: usize = 5_000;

/// Longest a pair waits for every gateway's confirmation before the
/// purger stops waiting (after its early purge): a gateway down or cut off
/// for that long has dropped its cache on the way.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// How long a failed purge waits before it is tried again (a CDN API
/// refusing for its rate limit is not asked again at every poll).
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The purger's metrics (prefix `addonreg_edge_purger_`).
#[derive(Clone)]
pub struct PurgeMetrics {
    /// `purges_total{kind}`: purge calls that succeeded; `kind` is
    /// `confirmed`, `early`, `repeat` or `all`.
    pub purges: IntCounterVec,
    /// `purged_keys_total{kind}`: keys in them.
    pub purged_keys: IntCounterVec,
    /// `purge_failures_total{kind}`: purge calls that failed (retried).
    pub failures: IntCounterVec,
    /// `pending_pairs`: pairs waiting for every gateway's confirmation.
    pub pending: IntGauge,
    /// `confirm_seconds`: from an event's arrival to its confirmed purge.
    pub confirm: Histogram,
    /// `abandoned_total`: pairs given up on after [`GIVE_UP_AFTER`].
    pub abandoned: IntCounterVec,
}

impl PurgeMetrics {
    /// Registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let purges = IntCounterVec::new(
            Opts::new("purges_total", "Purge calls that succeeded, by kind"),
            &["kind"],
        )?;
        let purged_keys = IntCounterVec::new(
            Opts::new("purged_keys_total", "Surrogate keys purged, by kind"),
            &["kind"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new("purge_failures_total", "Purge calls that failed, by kind"),
            &["kind"],
        )?;
        let pending = IntGauge::new(
            "pending_pairs",
            "Pairs waiting for every gateway to confirm",
        )?;
        let confirm = Histogram::with_opts(
            HistogramOpts::new(
                "confirm_seconds",
                "From an event's arrival to its confirmed purge",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
        )?;
        let abandoned = IntCounterVec::new(
            Opts::new("abandoned_total", "Pairs never confirmed by every gateway"),
            &["reason"],
        )?;
        registry.register(Box::new(purges.clone()))?;
        registry.register(Box::new(purged_keys.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(confirm.clone()))?;
        registry.register(Box::new(abandoned.clone()))?;
        Ok(Self {
            purges,
            purged_keys,
            failures,
            pending,
            confirm,
            abandoned,
        })
    }
}

/// How the purger waits and repeats.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often the gateways are asked while pairs wait.
    pub poll: Duration,
    /// When a pair not yet confirmed by every gateway is purged anyway.
    pub max_wait: Duration,
    /// When a confirmed purge is repeated.
    pub repurge_after: Duration,
}

/// What the subscription hands the pipeline.
#[derive(Debug)]
pub enum Heard {
    /// An event.
    Event(InvalidationEvent),
    /// (Re)subscribed: events may have been missed.
    Subscribed,
}

/// A pair waiting for every gateway.
#[derive(Debug)]
struct Pending {
    item: AppliedItem,
    arrived: Instant,
    purged_early: bool,
}

/// What a purge is for (its metric label).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Confirmed,
    Early,
    Repeat,
    All,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Confirmed => "confirmed",
            Kind::Early => "early",
            Kind::Repeat => "repeat",
            Kind::All => "all",
        }
    }
}

/// Purges to make: keys (or everything, `None`), each with its kind.
type Batch = Vec<(Kind, Option<Vec<String>>)>;

/// The purge pipeline: pending pairs, repeats due, and the CDN.
pub struct Pipeline {
    cdn: Arc<dyn Cdn>,
    gateways: Gateways,
    timing: Timing,
    metrics: PurgeMetrics,
    pending: VecDeque<Pending>,
    /// Repeats, in due order (every one is `repurge_after` after its purge).
    repeats: VecDeque<(Instant, Option<Vec<String>>)>,
    /// Purges that failed, retried from `retry_at` on.
    retries: Batch,
    retry_at: Instant,
}

impl Pipeline {
    /// A pipeline purging `cdn` once `gateways` confirm.
    pub fn new(
        cdn: Arc<dyn Cdn>,
        gateways: Gateways,
        timing: Timing,
        metrics: PurgeMetrics,
    ) -> Self {
        Self {
            cdn,
            gateways,
            timing,
            metrics,
            pending: VecDeque::new(),
            repeats: VecDeque::new(),
            retries: Vec::new(),
            retry_at: Instant::now(),
        }
    }

    /// Runs until `heard` closes or `stop` fires.
    pub async fn run(mut self, mut heard: mpsc::Receiver<Heard>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.timing.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                next = heard.recv() => match next {
                    Some(first) => {
                        self.hear(first);
                        // Take what else arrived at once: one round for all.
                        while let Ok(more) = heard.try_recv() {
                            self.hear(more);
                        }
                        self.round().await;
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    if !self.pending.is_empty() || !self.repeats.is_empty() || !self.retries.is_empty() {
                        self.round().await;
                    }
                }
            }
        }
    }

    fn hear(&mut self, heard: Heard) {
        let now = Instant::now();
        match heard {
            Heard::Event(event) => {
                for pair in event.keys {
                    self.pending.push_back(Pending {
                        item: AppliedItem {
                            pair,
                            lsn: event.lsn,
                        },
                        arrived: now,
                        purged_early: false,
                    });
                }
            }
            Heard::Subscribed => {
                self.retries.push((Kind::All, None));
                self.repeats
                    .push_back((now + self.timing.repurge_after, None));
            }
        }
        self.metrics.pending.set(self.pending.len() as i64);
    }

    /// Asks the gateways about the oldest pending pairs, purges what they
    /// confirmed (and what waited too long), and the repeats that are due.
    async fn round(&mut self) {
        let now = Instant::now();
        let mut batch: Batch = if now >= self.retry_at {
            std::mem::take(&mut self.retries)
        } else {
            Vec::new()
        };
        if !self.pending.is_empty() {
            let asked = self.pending.len().min(ASK_MAX_ITEMS);
            let items: Vec<AppliedItem> = self
                .pending
                .iter()
                .take(asked)
                .map(|p| p.item.clone())
                .collect();
            let confirmed = self.gateways.confirmed(items).await;
            let mut kept = VecDeque::with_capacity(self.pending.len());
            let (mut fresh, mut early) = (Vec::new(), Vec::new());
            for (i, mut pending) in std::mem::take(&mut self.pending).into_iter().enumerate() {
                let age = now.duration_since(pending.arrived);
                if i < asked && confirmed[i] {
                    self.metrics.confirm.observe(age.as_secs_f64());
                    fresh.push(pending.item.pair);
                    continue;
                }
                if age >= GIVE_UP_AFTER {
                    self.metrics
                        .abandoned
                        .with_label_values(&["unconfirmed"])
                        .inc();
                    continue;
                }
                if !pending.purged_early && age >= self.timing.max_wait {
                    pending.purged_early = true;
                    early.push(pending.item.pair.clone());
                }
                kept.push_back(pending);
            }
            self.pending = kept;
            self.metrics.pending.set(self.pending.len() as i64);
            if !fresh.is_empty() {
                let keys = edge::keys_of(&fresh);
                self.repeats
                    .push_back((now + self.timing.repurge_after, Some(keys.clone())));
                batch.push((Kind::Confirmed, Some(keys)));
            }
            if !early.is_empty() {
                batch.push((Kind::Early, Some(edge::keys_of(&early))));
            }
        }
        while self.repeats.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, keys)) = self.repeats.pop_front() {
                let kind = if keys.is_some() {
                    Kind::Repeat
                } else {
                    Kind::All
                };
                batch.push((kind, keys));
            }
        }
        if !batch.is_empty() {
            let failed = purge(self.cdn.clone(), batch, self.metrics.clone()).await;
            if !failed.is_empty() {
                self.retry_at = now + RETRY_AFTER;
            }
            self.retries.extend(failed);
        }
    }
}

/// Makes the purges of `batch` on the blocking pool, in CDN-sized calls;
/// returns those that failed.
async fn purge(cdn: Arc<dyn Cdn>, batch: Batch, metrics: PurgeMetrics) -> Batch {
    let joined = tokio::task::spawn_blocking(move || {
        let mut failed = Vec::new();
        for (kind, keys) in batch {
            let outcome = match &keys {
                None => cdn.purge_all().map(|()| 0),
                Some(keys) => keys
                    .chunks(cdn.batch_size().max(1))
                    .try_for_each(|chunk| cdn.purge(chunk))
                    .map(|()| keys.len()),
            };
            match outcome {
                Ok(n) => {
                    metrics.purges.with_label_values(&[kind.label()]).inc();
                    metrics
                        .purged_keys
                        .with_label_values(&[kind.label()])
                        .inc_by(n as u64);
                }
                Err(e) => {
                    metrics.failures.with_label_values(&[kind.label()]).inc();
                    tracing::warn!(
                        type = "purge.failed",
                        cdn = cdn.name(),
                        kind = kind.label(),
                        error = %e,
                        "purge failed; retrying"
                    );
                    failed.push((kind, keys));
                }
            }
        }
        failed
    })
    .await;
    joined.unwrap_or_default()
}

/// Hears invalidations into `heard` until `stop`, resubscribing with a
/// jittered backoff over the broker's nodes ([`Reconnect`]); says
/// [`Heard::Subscribed`] after each (re)subscription.
pub async fn listen(subscription: Broker, heard: mpsc::Sender<Heard>, stop: CancellationToken) {
    let mut reconnect = Reconnect::new(subscription.urls.clone());
    while let Some(connection) = reconnect
        .connect("edge purger invalidations", &stop, |url| {
            invalidation::connect(url, &subscription)
        })
        .await
    {
        let outcome = listen_once(connection, &subscription, &heard, &stop).await;
        let worked = match outcome {
            Ok(true) => true,
            Ok(false) => break,
            Err(e) => {
                tracing::warn!(type = "purge.unsubscribed", error = %e, "not subscribed to invalidations");
                false
            }
        };
        if !reconnect.lost(worked, &stop).await {
            break;
        }
    }
}

/// One session; `Ok(true)` when it was subscribed and then lost, `Ok(false)`
/// when told to stop.
async fn listen_once(
    connection: lapin::Connection,
    subscription: &Broker,
    heard: &mpsc::Sender<Heard>,
    stop: &CancellationToken,
) -> Result<bool, SubscriptionError> {
    let outcome = async {
        let mut events = invalidation::consume_events(&connection, &subscription.topology).await?;
        if heard.send(Heard::Subscribed).await.is_err() {
            return Ok(false);
        }
        tracing::info!(type = "purge.subscribed", "subscribed to invalidations");
        loop {
            let delivery = tokio::select! {
                _ = stop.cancelled() => return Ok(false),
                next = events.next() => match next {
                    Some(delivery) => delivery?,
                    None => return Ok(true),
                },
            };
            match serde_json::from_slice::<InvalidationEvent>(&delivery.data) {
                Ok(event) => {
                    if heard.send(Heard::Event(event)).await.is_err() {
                        return Ok(false);
                    }
                }
                Err(e) => {
                    // Some keys changed and we can't tell which.
                    tracing::error!(type = "purge.unreadable", error = %e, "unreadable invalidation event");
                    if heard.send(Heard::Subscribed).await.is_err() {
                        return Ok(false);
                    }
                }
            }
        }
    }
    .await;
    let _ = connection
        .close(REPLY_SUCCESS, "edge purger subscription ends".into())
        .await;
    outcome
}

/// Why the purger could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong.
    #[error(transparent)]
    Setting(#[from] shared::settings::InvalidSetting),
    /// The admin listener could not be bound.
    #[error("cannot listen on ADDONREG_METRICS_LISTEN: {0}")]
    Bind(std::io::Error),
    /// A metric could not be registered (a bug: names are constants).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Runs the purger of `settings` until `shutdown` resolves.
pub async fn run(
    settings: &settings::PurgerSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let cdn = settings.cdn()?;
    let timing = settings.timing()?;
    let registry = shared::admin::registry("addonreg_edge_purger");
    let metrics = PurgeMetrics::register(&registry)?;
    let admin = match settings.metrics_listen.0 {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(StartError::Bind)?,
        ),
        None => None,
    };
    let stop = CancellationToken::new();
    // Room for a burst of events while a round runs; a full channel holds
    // the consumer back (the broker buffers), it never drops an event.
    let (heard_tx, heard_rx) = mpsc::channel(10_000);
    let subscription = Broker {
        urls: settings.amqp.url.clone(),
        heartbeat_secs: settings.amqp_heartbeat_secs,
        topology: Topology::new(&settings.amqp.prefix),
        connection_name: format!("addonreg-edge-purger {}", settings.amqp.prefix.as_str()),
    };
    let pipeline = Pipeline::new(
        cdn.clone(),
        Gateways::new(settings.edge_gateways.clone()),
        timing,
        metrics,
    );
    tracing::info!(
        type = "purge.start",
        cdn = cdn.name(),
        gateways = settings.edge_gateways.len(),
        "edge purger running"
    );
    let admin = async {
        if let Some(listener) = admin {
            shared::admin::serve(listener, registry, stop.clone().cancelled_owned()).await;
        }
    };
    let signal = async {
        shutdown.await;
        stop.cancel();
    };
    tokio::join!(
        admin,
        signal,
        listen(subscription, heard_tx, stop.clone()),
        pipeline.run(heard_rx, stop.clone()),
    );
    tracing::info!(type = "purge.stop", "edge purger stopped");
    Ok(())
}
