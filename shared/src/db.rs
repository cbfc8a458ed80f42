//! Postgres pools with bounded waits, and the embedded migrations.

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::settings::{InvalidSetting, PoolSettings, Secret};

/// The schema, embedded at build time from `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Connection options from a URL plus the pool's statement timeout, naming
/// `variable` when the URL is not a Postgres URL.
pub fn connect_options(
    url: &Secret,
    variable: &'static str,
    pool: &PoolSettings,
    application: &str,
) -> Result<PgConnectOptions, InvalidSetting> {
    let options = PgConnectOptions::from_str(url.expose()).map_err(|e| InvalidSetting {
        variable,
        // sqlx's message can quote the URL; say only what kind of problem it is.
        problem: match e {
            sqlx::Error::Configuration(_) => "not a valid postgres:// URL".into(),
            _ => "unusable database URL".into(),
        },
    })?;
    Ok(options
        .application_name(application)
        .options([("statement_timeout", pool.statement_timeout_ms.to_string())]))
}

/// A pool that connects on first use, so a process starts while Postgres is
/// down and recovers by itself when it comes back.
pub fn lazy_pool(options: PgConnectOptions, pool: &PoolSettings) -> PgPool {
    PgPoolOptions::new()
        .max_connections(pool.max_connections)
        .acquire_timeout(pool.acquire_timeout())
        .connect_lazy_with(options)
}
