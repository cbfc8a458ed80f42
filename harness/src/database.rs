//! A fresh, migrated database per test.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The superuser connection tests use on the machine's own cluster.
/// `ADDONREG_TEST_ADMIN_URL` overrides it.
pub fn machine_admin_options() -> PgConnectOptions {
    let url = std::env::var("ADDONREG_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    PgConnectOptions::from_str(&url).expect("ADDONREG_TEST_ADMIN_URL is a postgres:// URL")
}

/// A database of one test, migrated, dropped when the test passes.
pub struct TestDb {
    name: String,
    admin: PgConnectOptions,
    /// A pool connected as the owner (the superuser that ran the migrations).
    pub owner: PgPool,
}

impl TestDb {
    /// A new database on the machine's cluster.
    pub async fn new() -> Self {
        Self::on(machine_admin_options()).await
    }

    /// A new database on the cluster `admin` connects to (as a superuser).
    pub async fn on(admin: PgConnectOptions) -> Self {
        let name = format!("addonreg_test_{}", crate::unique());
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .expect("connect to Postgres as the test superuser (is it running? infra/local/services ensure)");
        // The name is ours (letters, digits, underscore): safe to splice.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let owner = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(admin.clone().database(&name))
            .await
            .expect("connect to the test database");
        shared::db::MIGRATOR
            .run(&owner)
            .await
            .expect("migrate test database");
        Self { name, admin, owner }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Options to connect to this database as `role` (e.g. `addonreg_gateway`).
    pub fn options_as(&self, role: &str) -> PgConnectOptions {
        self.admin.clone().database(&self.name).username(role)
    }

    /// The same as a URL, for a process started by a test.
    pub fn url_as(&self, role: &str) -> String {
        let o = &self.admin;
        format!(
            "postgres://{role}@{}:{}/{}",
            o.get_host(),
            o.get_port(),
            self.name
        )
    }

    /// A pool connected as `role`.
    pub async fn pool_as(&self, role: &str) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect_with(self.options_as(role))
            .await
            .expect("connect as role")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("harness: kept database {} of the failed test", self.name);
            return;
        }
        // The pool is not closed here: its connections belong to the test's
        // runtime, which is blocked until this returns. FORCE ends them.
        let (name, admin) = (self.name.clone(), self.admin.clone());
        crate::block_on_own_runtime(async move {
            let dropped = async {
                let mut conn = PgConnection::connect_with(&admin).await?;
                sqlx::query(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
            };
            if let Err(e) = dropped.await {
                eprintln!("harness: could not drop database {name}: {e}");
            }
        });
    }
}
