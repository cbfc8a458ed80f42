//! A real addonreg process started by a test: its stdout is captured, and it
//! is killed on drop if the test did not stop it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running binary of this workspace.
pub struct TestProcess {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl TestProcess {
    /// Starts `program` with `args` and exactly the `ADDONREG_*` variables in
    /// `env` (none inherited, so the developer's own settings can't leak in).
    pub fn start(program: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(program);
        cmd.args(args);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ADDONREG_")) {
            cmd.env_remove(key);
        }
        for (key, value) in env {
            cmd.env(key, value);
        }
        Self::spawn(cmd)
    }

    /// Starts a launch (see [`crate::launch::Launch`]).
    pub fn launch(launch: &crate::launch::Launch) -> Self {
        Self::spawn(launch.command())
    }

    /// Starts `cmd` with its stdout captured and stderr passed through.
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start process");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout.clone();
        let pipe = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().expect("stdout lock").push(line);
            }
        });
        Self { child, stdout }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line it printed so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lock").clone()
    }

    /// Sends a signal (`TERM`, `KILL`, `STOP`, `CONT` …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits up to 20 s for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(20))
            .expect("process exits within 20 s of SIGTERM")
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port nobody listens on right now, for a process's listener.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// Polls `url` until it answers with `status` (or panics after `limit`).
pub async fn wait_for_http(url: &str, status: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = reqwest::get(url).await
            && r.status().as_u16() == status
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer {status} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The workspace's debug directory, with `write-worker` and `api-gateway`
/// built in it (once, when missing): for tests outside those two crates,
/// which cargo does not build their binaries for.
pub fn debug_bin_dir() -> std::path::PathBuf {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| workspace.join("target"));
    let dir = target.join("debug");
    for bin in ["write-worker", "api-gateway"] {
        if dir.join(bin).exists() {
            continue;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--quiet", "-p", bin, "--bin", bin])
            .current_dir(&workspace)
            .status()
            .expect("run cargo build");
        assert!(built.success(), "build {bin}");
    }
    dir
}
