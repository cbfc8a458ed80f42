//! Postgres clusters owned by one test: a primary (initdb on a free port) that
//! the test may stop and start, and real streaming replicas of it
//! (pg_basebackup), whose replay it may pause.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::process::free_port;

/// A Postgres server of the test's own, in a temporary directory: what a
/// [`TestCluster`] and a [`TestReplica`] both are.
pub struct PgServer {
    dir: PathBuf,
    port: u16,
}

impl PgServer {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Superuser options for its `postgres` database.
    pub fn admin_options(&self) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(self.port)
            .username("postgres")
            .database("postgres")
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let log = self.dir.join("server.log");
        let mut all = vec!["-D", path_str(&data), "-l", path_str(&log)];
        all.extend_from_slice(args);
        run_as_postgres(&bin("pg_ctl"), &all);
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts it (again, after [`PgServer::stop`]).
    pub fn restart(&self) {
        self.pg_ctl(&["-w", "-t", "60", "start"]);
    }

    /// Stops it (fast shutdown): clients see it go away.
    pub fn stop(&self) {
        self.pg_ctl(&["-w", "-m", "fast", "stop"]);
    }

    /// Appends settings to the server's own postgresql.conf.
    fn configure(&self, lines: &str) {
        let conf = self.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(lines);
        std::fs::write(&conf, text).expect("write postgresql.conf");
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Immediate: the data is thrown away next.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} -D '{}' -m immediate stop >/dev/null 2>&1",
                as_postgres_prefix(&bin("pg_ctl")),
                self.data().display()
            ))
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A primary of the test's own, with trust auth and replication on.
pub struct TestCluster {
    server: PgServer,
}

impl TestCluster {
    /// initdb and start a primary on a free port.
    pub async fn start() -> Self {
        let server = PgServer {
            dir: owned_temp_dir("primary"),
            port: free_port(),
        };
        let data = server.data();
        run_as_postgres(
            &bin("initdb"),
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ],
        );
        // fsync off for speed; synchronous_commit stays on as in production, so
        // pg_current_wal_lsn() after a commit covers it (the worker relies on that).
        server.configure(&format!(
            "\n# addonreg test cluster\nport = {}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nwal_level = replica\nmax_wal_senders = 8\n\
             fsync = off\nfull_page_writes = off\n",
            server.port,
            server.dir.display()
        ));
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 trust\n",
        )
        .expect("write pg_hba.conf");
        server.restart();
        Self { server }
    }

    /// A streaming replica of this primary, started and caught up.
    pub async fn start_replica(&self) -> TestReplica {
        let server = PgServer {
            dir: owned_temp_dir("replica"),
            port: free_port(),
        };
        let port = self.port().to_string();
        run_as_postgres(
            &bin("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                path_str(&server.data()),
                "-R",
                "-X",
                "stream",
                "--no-sync",
                // The default spread checkpoint makes a backup wait ~a minute.
                "--checkpoint=fast",
            ],
        );
        // The copied postgresql.conf is the primary's; later lines win.
        server.configure(&format!(
            "\n# addonreg test replica\nport = {}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            server.port,
            server.dir.display()
        ));
        server.restart();
        let replica = TestReplica { server };
        replica.catch_up_with(self).await;
        replica
    }
}

impl std::ops::Deref for TestCluster {
    type Target = PgServer;
    fn deref(&self) -> &PgServer {
        &self.server
    }
}

/// A streaming replica of a [`TestCluster`].
pub struct TestReplica {
    server: PgServer,
}

impl TestReplica {
    /// Pauses WAL replay: the replica serves an ever older snapshot.
    pub async fn pause_replay(&self) {
        self.exec("SELECT pg_wal_replay_pause()").await;
    }

    /// Resumes WAL replay.
    pub async fn resume_replay(&self) {
        self.exec("SELECT pg_wal_replay_resume()").await;
    }

    /// Waits (up to 30 s) until the replica has replayed everything the
    /// primary had written when called.
    pub async fn catch_up_with(&self, primary: &TestCluster) {
        let mut conn = PgConnection::connect_with(&primary.admin_options())
            .await
            .expect("connect to primary");
        let (target,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut conn)
            .await
            .expect("read primary LSN");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut replica) = PgConnection::connect_with(&self.admin_options()).await {
                let caught_up: Option<bool> =
                    sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn")
                        .bind(&target)
                        .fetch_one(&mut replica)
                        .await
                        .ok()
                        .flatten();
                if caught_up == Some(true) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "replica did not reach {target} in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn exec(&self, sql: &'static str) {
        let mut conn = PgConnection::connect_with(&self.admin_options())
            .await
            .expect("connect to replica");
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
}

impl std::ops::Deref for TestReplica {
    type Target = PgServer;
    fn deref(&self) -> &PgServer {
        &self.server
    }
}

/// The directory of the Postgres server binaries (`pg_config --bindir`, else
/// the newest under /usr/lib/postgresql).
fn bin(name: &str) -> String {
    static BINDIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BINDIR.get_or_init(|| {
        let from_pg_config = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|d| d.join("initdb").exists());
        from_pg_config.unwrap_or_else(|| {
            let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
                .expect("PostgreSQL server binaries (infra/local/services ensure)")
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|d| d.join("initdb").exists())
                .collect();
            dirs.sort();
            dirs.pop().expect("initdb under /usr/lib/postgresql/*/bin")
        })
    });
    dir.join(name).display().to_string()
}

/// Postgres refuses to run as root: as root, run its tools as `postgres`.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn as_postgres_prefix(program: &str) -> String {
    if is_root() {
        format!("runuser -u postgres -- {program}")
    } else {
        program.to_string()
    }
}

fn run_as_postgres(program: &str, args: &[&str]) {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    };
    let out = cmd.args(args).output().expect("run a PostgreSQL tool");
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new directory under the temp dir that the server's user owns.
fn owned_temp_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("addonreg-{kind}-{}", crate::unique()));
    std::fs::create_dir(&dir).expect("create cluster dir");
    if is_root() {
        run(Command::new("chown").args(["postgres:postgres", path_str(&dir)]));
    }
    run(Command::new("chmod").args(["700", path_str(&dir)]));
    dir
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("run command");
    assert!(status.success(), "{cmd:?} failed");
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
