//! The read replicas: one pool each, and their health for the heartbeat.

use std::time::Duration;

use sqlx::PgPool;

use shared::db;
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

impl Replica {
    /// Whether it answers a trivial query within [`CHECK_TIMEOUT`].
    pub async fn check(&self) -> Health {
        let query = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool);
        match tokio::time::timeout(CHECK_TIMEOUT, query).await {
            Ok(Ok(_)) => Health::Up,
            _ => Health::Down,
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
