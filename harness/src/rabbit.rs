//! A RabbitMQ node of the caller's own: `rabbitmq-server -detached` with its
//! own node name, AMQP and distribution ports, data, logs, configuration and
//! (empty) plugin list, in a temporary directory. A test or the chaos runner
//! may stop it (the data stays: quorum queues keep their messages) and start
//! it again, without touching the machine's own node.
//!
//! As root, the Debian wrappers (`/usr/sbin/rabbitmq-server`,
//! `/usr/sbin/rabbitmqctl`) run the node and every CLI call as the
//! `rabbitmq` user, so the node and its CLI share that user's Erlang cookie
//! (`/var/lib/rabbitmq/.erlang.cookie`), like the machine's node does; root's
//! own `~/.erlang.cookie`, if any, is never read. As another user, the tools
//! run as that user, with that user's cookie on both sides.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::process::free_port;

/// Longest a start may take: a boot takes ~7 s on the 2-core dev machine,
/// more while builds run beside it.
const START_LIMIT: Duration = Duration::from_secs(90);
/// Longest a stop may take (a second or two, unloaded).
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// A RabbitMQ node of our own, stopped and removed on drop.
pub struct RabbitNode {
    name: String,
    dir: PathBuf,
    port: u16,
    dist_port: u16,
}

impl RabbitNode {
    /// Starts a new node and waits until it accepts AMQP connections.
    /// Blocking (seconds): from async code, call it on a blocking thread.
    pub fn start() -> Self {
        let node = Self::prepare();
        node.restart();
        node
    }

    /// A new node's directory, configuration and ports, not started yet
    /// ([`RabbitNode::restart`] starts it).
    pub fn prepare() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let dir = std::env::temp_dir().join(format!("addonreg-rabbit-{id}"));
        for sub in ["", "mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create the node's directory");
        }
        // No plugins: the management and prometheus listeners would collide
        // with the machine's node.
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("write enabled_plugins");
        // guest may connect from loopback only (the default, said aloud).
        std::fs::write(
            dir.join("rabbitmq.conf"),
            "loopback_users.guest = true\nlog.console = false\n",
        )
        .expect("write rabbitmq.conf");
        // An env file of its own, so /etc/rabbitmq/rabbitmq-env.conf (the
        // machine's NODENAME) is not read.
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("write rabbitmq-env.conf");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(&dir)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown the node's directory to rabbitmq");
        }
        Self {
            name: format!("addonreg-{id}@localhost"),
            dir,
            port: free_port(),
            dist_port: free_port(),
        }
    }

    /// The node's Erlang name (`addonreg-<id>@localhost`), for `rabbitmqctl -n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its AMQP port (loopback only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The guest's URL (guest may connect from loopback).
    pub fn amqp_url(&self) -> String {
        self.url_for("guest", "guest")
    }

    /// The URL of `user` with `password` (`[A-Za-z0-9-_]`, nothing to encode).
    pub fn url_for(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the node, keeping its data (and returns once its VM exited):
    /// clients see their connections close, and nothing accepts AMQP until
    /// [`RabbitNode::restart`]. Blocking.
    pub fn stop(&self) {
        let stopped = self.stop_within(STOP_LIMIT);
        assert!(stopped, "rabbitmqctl stop {} failed", self.name);
    }

    /// `rabbitmqctl stop <pid file>`, which waits for the VM to exit, given
    /// at most `limit`. Answers whether the node stopped. Without a pid file
    /// the node is not running (it removes the file as it stops), and
    /// `stop` would wait for the file to appear: nothing is run then.
    fn stop_within(&self, limit: Duration) -> bool {
        let pid_file = self.pid_file();
        if !pid_file.exists() {
            return true;
        }
        let mut cmd = Command::new(tool("rabbitmqctl"));
        cmd.args(["-n", &self.name, "-q", "stop", path_str(&pid_file)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A group of its own, to end the wrapper's whole chain (su, sh,
            // the CLI's VM) if it outlives the limit.
            .process_group(0);
        self.environment(&mut cmd);
        let Ok(mut child) = cmd.spawn() else {
            return false;
        };
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = Command::new("kill")
                        .args(["-KILL", &format!("-{}", child.id())])
                        .status();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// Starts the node (again, after [`RabbitNode::stop`]) on the same ports
    /// and data, and waits until it accepts AMQP connections. Blocking.
    pub fn restart(&self) {
        let mut cmd = Command::new(tool("rabbitmq-server"));
        cmd.arg("-detached")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.environment(&mut cmd);
        let status = cmd.status().expect("run rabbitmq-server");
        assert!(status.success(), "rabbitmq-server -detached failed");
        let deadline = Instant::now() + START_LIMIT;
        loop {
            // The AMQP listener starts last in the boot: once it accepts,
            // the node is up. A TCP connect is cheap; rabbitmqctl costs a
            // second of CPU per call.
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline && !self.dir.join("log/erl_crash.dump").exists(),
                "RabbitMQ node {} did not start within {START_LIMIT:?}:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = self.ctl(&["await_startup", "--timeout", "60"], None);
        assert!(
            out.status.success(),
            "rabbitmqctl await_startup {} failed: {}\n{}",
            self.name,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    /// Runs `rabbitmqctl -n <node> -q <args>`, with `stdin` as its standard
    /// input (e.g. a password, which never goes on a command line).
    pub fn ctl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(tool("rabbitmqctl"));
        cmd.args(["-n", &self.name, "-q"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.environment(&mut cmd);
        let mut child = cmd.spawn().expect("run rabbitmqctl");
        let mut pipe = child.stdin.take().expect("piped stdin");
        if let Some(input) = stdin {
            writeln!(pipe, "{input}").expect("write to rabbitmqctl");
        }
        drop(pipe);
        child.wait_with_output().expect("wait for rabbitmqctl")
    }

    /// Adds `user` with `password` and the (configure, write, read)
    /// permissions on vhost `/`. Blocking (two rabbitmqctl runs).
    pub fn add_user(&self, user: &str, password: &str, permissions: &[String; 3]) {
        let out = self.ctl(&["add_user", user], Some(password));
        assert!(
            out.status.success(),
            "rabbitmqctl add_user {user} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let [configure, write, read] = permissions;
        let out = self.ctl(
            &["set_permissions", "-p", "/", user, configure, write, read],
            None,
        );
        assert!(
            out.status.success(),
            "rabbitmqctl set_permissions {user} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The last lines of the node's log, for a failure message.
    pub fn log_tail(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.name));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("mnesia").join(format!("{}.pid", self.name))
    }

    /// Every variable that makes the node (and its CLI) this one.
    fn environment(&self, cmd: &mut Command) {
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("RABBITMQ_")) {
            cmd.env_remove(key);
        }
        let path = |p: &str| self.dir.join(p).display().to_string();
        cmd.env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf"))
            // Erlang distribution on loopback only, as the machine's node.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
    }

    /// The VM's OS pid, while it runs.
    fn os_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// A memory alarm on a node of the caller's own: the broker stops reading
/// from every connection that publishes, so nothing is confirmed. Cleared
/// when dropped, even if the test fails.
pub struct MemoryAlarm<'a>(&'a RabbitNode);

impl<'a> MemoryAlarm<'a> {
    /// Raises it (`set_vm_memory_high_watermark` to almost nothing). Blocking.
    pub fn raise(node: &'a RabbitNode) -> Self {
        let out = node.ctl(&["set_vm_memory_high_watermark", "0.0000001"], None);
        assert!(out.status.success(), "{out:?}");
        Self(node)
    }
}

impl Drop for MemoryAlarm<'_> {
    fn drop(&mut self) {
        let _ = self.0.ctl(&["set_vm_memory_high_watermark", "0.4"], None);
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        // A stop that waits for the VM (when it runs); a SIGKILL when that
        // fails or takes too long.
        let pid = self.os_pid();
        if !self.stop_within(STOP_LIMIT)
            && let Some(pid) = pid
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The RabbitMQ tool to run: as root the Debian wrapper on the PATH (it
/// switches to the `rabbitmq` user, keeping the environment); otherwise the
/// scripts themselves, which the wrapper refuses to run for other users.
fn tool(name: &str) -> String {
    let direct = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if !is_root() && direct.exists() {
        direct.display().to_string()
    } else {
        name.to_string()
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
