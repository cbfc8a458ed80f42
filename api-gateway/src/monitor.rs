//! Background checks: every `ADDONREG_REPLICA_CHECK_INTERVAL_MS` each
//! replica is probed, so that a dead one leaves the rotation before a
//! request stumbles on it and one that recovered comes back; its replay
//! position goes to the cache's fences (dropping those every source has
//! replayed); its health and its lag behind the newest position known
//! become metrics, as does the cache's size.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::cache::CacheControl;
use crate::metrics::Metrics;
use crate::replicas::{Replay, Replica};
use crate::store::ReadStore;

/// Probes until `stop`.
pub async fn run(
    replicas: Arc<Vec<Replica>>,
    store: ReadStore,
    cache: CacheControl,
    metrics: Metrics,
    every: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let probes = join_all(replicas.iter().map(Replica::probe)).await;
        // Lag is measured against the newest position known: the newest
        // event's (or resubscription's) LSN, or a primary's own WAL position
        // when one is among the sources, so that a replica stuck while no
        // event comes keeps showing its lag.
        let primary = probes.iter().filter_map(|replay| match replay {
            Replay::Primary(lsn) => Some(*lsn),
            _ => None,
        });
        let target = primary.chain(cache.latest_lsn()).max();
        for (i, (replica, replay)) in replicas.iter().zip(probes).enumerate() {
            let up = replay != Replay::Down;
            store.mark_health(i, up);
            if up {
                store.mark_primary(i, matches!(replay, Replay::Primary(_)));
            }
            cache.replayed(i, replay);
            let name = replica.name.as_str();
            metrics
                .replica_healthy
                .with_label_values(&[name])
                .set(i64::from(up));
            // Nothing known yet: nothing to be behind. Unknown lag leaves
            // the last figure; `replica_healthy` tells why.
            let lag = match target {
                None => Some(0),
                Some(lsn) => replay.lag_behind(lsn),
            };
            if let Some(lag) = lag {
                metrics
                    .replica_lag_bytes
                    .with_label_values(&[name])
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
        }
        cache.report_size().await;
    }
}
