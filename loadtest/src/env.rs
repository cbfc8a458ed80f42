//! A scratch environment per benchmark scenario: its own database (migrated,
//! dropped afterwards), its own broker prefix (deleted afterwards), and real
//! worker processes.

use std::path::PathBuf;
use std::str::FromStr;

use lapin::{Channel, Connection, ConnectionProperties};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use tokio::process::{Child, Command};

use shared::settings::Prefix;
use shared::topology::{REPLY_SUCCESS, Topology};

use crate::BenchError;

/// Where the benchmark's scratch things live.
#[derive(Debug, Clone)]
pub struct Target {
    /// A superuser on the Postgres that will hold the scratch databases.
    pub admin_url: String,
    /// The broker.
    pub amqp_url: String,
    /// Directory of the release binaries.
    pub bin_dir: PathBuf,
}

/// Scratch databases and prefixes created and not yet dropped, so that an
/// interrupted run can still clean up after itself ([`drop_leftovers`]).
static LIVE: std::sync::Mutex<Vec<(String, Prefix)>> = std::sync::Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<(String, Prefix)>> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Drops what scratch environments an interrupted run left: their databases
/// and their broker topologies.
pub async fn drop_leftovers(target: &Target) -> Result<usize, BenchError> {
    let leftovers: Vec<_> = live().drain(..).collect();
    if leftovers.is_empty() {
        return Ok(0);
    }
    let admin = PgConnectOptions::from_str(&target.admin_url)?;
    let mut conn = PgConnection::connect_with(&admin).await?;
    let broker = Connection::connect(&target.amqp_url, ConnectionProperties::default()).await?;
    let channel = broker.create_channel().await?;
    for (database, prefix) in &leftovers {
        drop_database(&mut conn, database).await?;
        Topology::new(prefix).delete(&channel).await?;
    }
    broker
        .close(REPLY_SUCCESS, "bench interrupted".into())
        .await?;
    Ok(leftovers.len())
}

/// Drops scratch database `database` (our own generated name: safe to
/// splice), closing whatever still uses it.
async fn drop_database(conn: &mut PgConnection, database: &str) -> Result<(), BenchError> {
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(conn)
    .await?;
    Ok(())
}

/// One scenario's database and broker names.
pub struct Scratch {
    admin: PgConnectOptions,
    /// The database's name.
    pub database: String,
    /// A pool on it as the owner.
    pub pool: PgPool,
    /// The broker prefix.
    pub prefix: Prefix,
    /// The contract's names under it.
    pub topology: Topology,
    /// A broker connection.
    pub broker: Connection,
    /// A channel on it with the topology declared.
    pub channel: Channel,
    amqp_url: String,
}

impl Scratch {
    /// Creates and migrates a database and declares a topology.
    pub async fn create(target: &Target) -> Result<Self, BenchError> {
        let admin = PgConnectOptions::from_str(&target.admin_url)?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let database = format!("addonreg_bench_{id}");
        let mut conn = PgConnection::connect_with(&admin).await?;
        // Our own generated name: safe to splice.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{database}\"")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(admin.clone().database(&database))
            .await?;
        shared::db::MIGRATOR.run(&pool).await?;
        let prefix: Prefix = format!("bench-{id}")
            .parse()
            .map_err(|e: String| BenchError::Check(e))?;
        live().push((database.clone(), prefix.clone()));
        let topology = Topology::new(&prefix);
        let broker = Connection::connect(&target.amqp_url, ConnectionProperties::default()).await?;
        let channel = broker.create_channel().await?;
        topology.declare(&channel).await?;
        Ok(Self {
            admin,
            database,
            pool,
            prefix,
            topology,
            broker,
            channel,
            amqp_url: target.amqp_url.clone(),
        })
    }

    /// The database URL for `role`, for a process.
    pub fn url_as(&self, role: &str) -> String {
        let a = &self.admin;
        format!(
            "postgres://{role}@{}:{}/{}",
            a.get_host(),
            a.get_port(),
            self.database
        )
    }

    /// Starts a worker process on this scratch environment.
    pub fn start_worker(&self, target: &Target, args: &[String]) -> Result<Child, BenchError> {
        let launch = harness::Launch::worker(
            target.bin_dir.join("write-worker"),
            &self.url_as("addonreg_worker"),
            &self.amqp_url,
            self.prefix.as_str(),
        )
        .set("ADDONREG_LOG", "warn")
        .args(args);
        spawn(&launch, std::process::Stdio::null())
    }

    /// Deletes the topology and drops the database.
    pub async fn drop(self) -> Result<(), BenchError> {
        live().retain(|(database, _)| *database != self.database);
        self.topology.delete(&self.channel).await?;
        self.broker
            .close(REPLY_SUCCESS, "bench done".into())
            .await?;
        self.pool.close().await;
        let mut conn = PgConnection::connect_with(&self.admin).await?;
        drop_database(&mut conn, &self.database).await
    }
}

/// Refuses a URL whose host is not loopback (or a Unix socket): the load
/// generator never leaves this machine.
pub fn require_loopback(what: &str, url: &str) -> Result<(), BenchError> {
    let host = if url.starts_with("amqp") {
        lapin::uri::AMQPUri::from_str(url)
            .map_err(|e| BenchError::Refused(format!("{what}: not an AMQP URL: {e}")))?
            .authority
            .host
    } else {
        PgConnectOptions::from_str(url)
            .map_err(|e| BenchError::Refused(format!("{what}: not a Postgres URL: {e}")))?
            .get_host()
            .to_string()
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare.starts_with('/')
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(BenchError::Refused(format!(
            "{what} points at {host}: loadtest targets loopback only"
        )))
    }
}

/// Where a benchmark puts its scratch databases, broker names and binaries.
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// Superuser URL of the Postgres that holds the scratch databases.
    #[arg(
        long,
        env = "ADDONREG_TEST_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub admin_url: String,
    /// The broker.
    #[arg(
        long,
        env = "ADDONREG_TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Where the release binaries are (`cargo build --release`).
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
}

impl TargetArgs {
    pub fn target(self) -> Target {
        Target {
            admin_url: self.admin_url,
            amqp_url: self.amqp_url,
            bin_dir: self.bin_dir,
        }
    }
}

/// Spawns `launch` with its stdout to `stdout`, killed when dropped.
pub fn spawn(
    launch: &harness::Launch,
    stdout: impl Into<std::process::Stdio>,
) -> Result<Child, BenchError> {
    let mut cmd = Command::from(launch.command());
    cmd.stdout(stdout).kill_on_drop(true);
    cmd.spawn()
        .map_err(|e| BenchError::Process(launch.program().display().to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::require_loopback;

    #[test]
    fn only_loopback_is_accepted() {
        for ok in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://u@localhost/db",
            "postgres://u@[::1]:5432/db",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqp://guest:guest@localhost:5672/%2f",
        ] {
            assert!(require_loopback("url", ok).is_ok(), "{ok}");
        }
        for refused in [
            "postgres://u@db.example.com/db",
            "postgres://u@10.0.0.5/db",
            "amqp://guest:guest@rabbit.example.com:5672/%2f",
        ] {
            assert!(require_loopback("url", refused).is_err(), "{refused}");
        }
    }
}
