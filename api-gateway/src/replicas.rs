//! The read replicas: one pool each, and their health for the heartbeat.

use std::time::Duration;

use sqlx::PgPool;

use shared::db;
use shared::event::Lsn;
use shared::settings::{InvalidSetting, PoolSettings, Secret};

/// How long a health check may take before the replica counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// One read replica (or the primary, when none is configured).
#[derive(Debug, Clone)]
pub struct Replica {
    /// Its name in heartbeats and metrics: `replica-1`, `replica-2` … never its host.
    pub name: String,
    /// Its connection pool, read-only by role.
    pub pool: PgPool,
}

/// What a health check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Answered in time.
    Up,
    /// Failed or timed out.
    Down,
}

/// What a probe found: how far a replica has replayed, if it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Not in recovery: a primary has everything; its WAL is at this LSN.
    Primary(Lsn),
    /// A standby that has replayed up to this LSN (`None`: nothing yet).
    Standby(Option<Lsn>),
    /// Failed or timed out.
    Down,
}

impl Replay {
    /// WAL bytes between `target` and what was replayed; 0 for a primary.
    /// A standby that is down or has replayed nothing is `None`: unknown.
    pub fn lag_behind(self, target: Lsn) -> Option<u64> {
        match self {
            Replay::Primary(_) => Some(0),
            Replay::Standby(Some(replayed)) => Some(target.0.saturating_sub(replayed.0)),
            Replay::Standby(None) | Replay::Down => None,
        }
    }
}

impl Replica {
    /// Whether it answers within [`CHECK_TIMEOUT`].
    pub async fn check(&self) -> Health {
        match self.probe().await {
            Replay::Down => Health::Down,
            Replay::Primary(_) | Replay::Standby(_) => Health::Up,
        }
    }

    /// How far it has replayed (a primary: how far it has written), asked
    /// within [`CHECK_TIMEOUT`].
    pub async fn probe(&self) -> Replay {
        let query = sqlx::query_as::<_, (bool, Option<String>)>(
            "SELECT pg_is_in_recovery(), \
                    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                          ELSE pg_current_wal_lsn() END)::text",
        )
        .fetch_one(&self.pool);
        match tokio::time::timeout(CHECK_TIMEOUT, query).await {
            Ok(Ok((false, current))) => {
                Replay::Primary(current.and_then(|lsn| lsn.parse().ok()).unwrap_or_default())
            }
            Ok(Ok((true, replayed))) => {
                Replay::Standby(replayed.and_then(|lsn| lsn.parse::<Lsn>().ok()))
            }
            _ => Replay::Down,
        }
    }
}

/// Builds one lazy pool per URL; nothing connects until first use, so the
/// gateway starts while a replica is down.
pub fn connect(urls: &[Secret], pool: &PoolSettings) -> Result<Vec<Replica>, InvalidSetting> {
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            let options =
                db::connect_options(url, "ADDONREG_REPLICA_URLS", pool, "addonreg-gateway")?;
            Ok(Replica {
                name: format!("replica-{}", i + 1),
                pool: db::lazy_pool(options, pool),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_measured_against_the_newest_event() {
        let target = Lsn(1_000);
        assert_eq!(Replay::Primary(Lsn(5)).lag_behind(target), Some(0));
        assert_eq!(
            Replay::Standby(Some(Lsn(400))).lag_behind(target),
            Some(600)
        );
        assert_eq!(
            Replay::Standby(Some(Lsn(2_000))).lag_behind(target),
            Some(0)
        );
        assert_eq!(Replay::Standby(None).lag_behind(target), None);
        assert_eq!(Replay::Down.lag_behind(target), None);
    }
}
