//! Backpressure: the writes queue's backlog, read from the broker about
//! once a second in the background (so requests never wait for it), and
//! whether the broker answered lately (the heartbeat's check).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::channels::Channels;
use super::metrics::Metrics;

/// How often the backlog is read: the bound is enforced about this late.
pub const REFRESH: Duration = Duration::from_secs(1);
/// A read older than this no longer counts: the broker is not answering.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// The last backlog read, shared by the requests.
#[derive(Debug)]
pub struct Backlog {
    origin: Instant,
    /// Messages ready, as last read; -1 before any read.
    ready: AtomicI64,
    /// Milliseconds since `origin` + 1 of the last good read; 0: none yet.
    read_at: AtomicU64,
    max: u64,
}

impl Backlog {
    /// No read yet; `max` is `ADDONREG_INTAKE_MAX_BACKLOG`.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            ready: AtomicI64::new(-1),
            read_at: AtomicU64::new(0),
            max,
        })
    }

    /// Whether the queue, as last read, holds more than the bound. Unknown
    /// (no recent read) is not "over": the publish itself then finds out
    /// whether the broker takes the write.
    pub fn over(&self) -> bool {
        self.fresh()
            && u64::try_from(self.ready.load(Ordering::Acquire)).is_ok_and(|n| n > self.max)
    }

    /// Whether the broker answered a read within the last few seconds.
    pub fn fresh(&self) -> bool {
        match self.read_at.load(Ordering::Acquire) {
            0 => false,
            at => self.elapsed_ms().saturating_sub(at) < STALE_AFTER.as_millis() as u64,
        }
    }

    /// The backlog as last read, while fresh (the heartbeat's detail).
    pub fn ready(&self) -> Option<i64> {
        self.fresh().then(|| self.ready.load(Ordering::Acquire))
    }

    fn elapsed_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    /// Reads the backlog every [`REFRESH`] until `stop` fires.
    pub async fn watch(
        self: Arc<Self>,
        channels: Channels,
        metrics: Metrics,
        stop: CancellationToken,
    ) {
        metrics
            .max_backlog
            .set(i64::try_from(self.max).unwrap_or(i64::MAX));
        let mut failing = false;
        loop {
            match channels.backlog(REFRESH).await {
                Ok(ready) => {
                    failing = false;
                    self.ready.store(i64::from(ready), Ordering::Release);
                    self.read_at.store(self.elapsed_ms(), Ordering::Release);
                    metrics.backlog.set(i64::from(ready));
                }
                Err(error) => {
                    if !self.fresh() {
                        metrics.backlog.set(-1);
                    }
                    // Once per outage; lapin's errors name no credentials.
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(type = "intake.backlog_unknown", error, "cannot read the writes backlog");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
    }
}
