//! `write-worker migrate`: applies the embedded schema migrations.

use sqlx::{Connection, PgConnection};

use shared::db::{self, MIGRATOR};
use shared::settings::InvalidSetting;

use crate::settings::Settings;

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A setting is wrong.
    #[error(transparent)]
    Setting(#[from] InvalidSetting),
    /// Postgres could not be reached.
    #[error("cannot connect to the database: {0}")]
    Connect(sqlx::Error),
    /// A migration failed; nothing of it was applied.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Applies every pending migration; already applied ones are skipped.
pub async fn run(settings: &Settings) -> Result<(), MigrateError> {
    let options = db::connect_options(
        &settings.database_url,
        "ADDONREG_DATABASE_URL",
        &settings.pool,
        "addonreg-migrate",
    )?;
    let mut conn = PgConnection::connect_with(&options)
        .await
        .map_err(MigrateError::Connect)?;
    MIGRATOR.run(&mut conn).await?;
    let _ = conn.close().await;
    Ok(())
}
