//! A RabbitMQ name prefix of one test, and the deletion of its names; the
//! contract's least-privilege broker users, made for one test's prefix.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use shared::settings::Prefix;
use shared::topology::Topology;

/// The broker tests use; `ADDONREG_TEST_AMQP_URL` overrides it.
pub fn amqp_url() -> String {
    std::env::var("ADDONREG_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A unique prefix (`test-<random>`) whose topology is deleted on drop.
pub struct TestBroker {
    /// The prefix to configure processes with.
    pub prefix: Prefix,
    /// The broker's URL.
    pub url: String,
}

impl TestBroker {
    /// A new prefix; nothing is declared yet.
    pub fn new() -> Self {
        let prefix = format!("test-{}", crate::unique())
            .parse()
            .expect("generated prefix is valid");
        Self {
            prefix,
            url: amqp_url(),
        }
    }

    /// The contract's names under this prefix.
    pub fn topology(&self) -> Topology {
        Topology::new(&self.prefix)
    }

    /// A fresh connection to the broker.
    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ (is it running? infra/local/services ensure)")
    }
}

impl Default for TestBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let (url, topology) = (self.url.clone(), self.topology());
        crate::block_on_own_runtime(async move {
            let deleted = async {
                let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
                let channel = conn.create_channel().await?;
                topology.delete(&channel).await?;
                conn.close(shared::topology::REPLY_SUCCESS, "test done".into())
                    .await
            };
            if let Err(e) = deleted.await {
                eprintln!("harness: could not delete the test's RabbitMQ names: {e}");
            }
        });
    }
}

/// Publishes as AMO does: persistent, JSON, `message_id` = write id, confirmed.
pub struct Amo {
    _connection: Connection,
    channel: Channel,
    exchange: String,
}

impl Amo {
    /// Connects and declares the topology (as infra would have).
    pub async fn connect(broker: &TestBroker) -> Self {
        let connection = broker.connect().await;
        let channel = connection.create_channel().await.unwrap();
        broker.topology().declare(&channel).await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            _connection: connection,
            channel,
            exchange: broker.topology().writes_exchange,
        }
    }

    /// Publishes one body with an optional message id and waits for the confirm.
    pub async fn publish_raw(&self, body: &[u8], message_id: Option<&str>) {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                "write".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "broker confirms the write");
    }

    /// Publishes a write message (its `write_id` as message id).
    pub async fn publish(&self, message: &Value) {
        let id = message["write_id"].as_str().map(str::to_string);
        self.publish_raw(message.to_string().as_bytes(), id.as_deref())
            .await;
    }
}

/// Makes the broker close every connection whose name mentions `prefix` (the
/// workers' own): what a broker restart or a network cut does to them.
/// Answers how many it closed.
pub fn close_broker_connections(prefix: &str) -> usize {
    let listing = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .expect("run rabbitmqctl (as root, beside the broker)");
    let text = String::from_utf8_lossy(&listing.stdout);
    let pids: Vec<&str> = text
        .lines()
        .filter(|line| line.contains(prefix))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for pid in &pids {
        let status = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "test: connection cut", "-q"])
            .status()
            .expect("run rabbitmqctl");
        assert!(status.success(), "close_connection {pid}");
    }
    pids.len()
}

/// Messages ready in a queue.
pub async fn queue_depth(broker: &TestBroker, queue: &str) -> u32 {
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count();
    channel.close(0, "done".into()).await.ok();
    conn.close(0, "done".into()).await.ok();
    count
}

/// The least-privilege broker users of `infra/rabbitmq/definitions.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerRole {
    /// `addonreg_amo`: publishes writes, nothing else.
    Amo,
    /// `addonreg_worker`: declares the topology, consumes writes, publishes
    /// dead letters and invalidations.
    Worker,
    /// `addonreg_gateway`: its own exclusive queues on the invalidations exchange.
    Gateway,
    /// `addonreg_intake`: the HTTP intake, publishing writes as AMO does.
    Intake,
    /// `addonreg_monitoring`: no permission at all (KEDA's passive declare).
    Monitoring,
}

impl BrokerRole {
    /// The user's name in the definitions file.
    pub fn definitions_user(self) -> &'static str {
        match self {
            BrokerRole::Amo => "addonreg_amo",
            BrokerRole::Worker => "addonreg_worker",
            BrokerRole::Gateway => "addonreg_gateway",
            BrokerRole::Intake => "addonreg_intake",
            BrokerRole::Monitoring => "addonreg_monitoring",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            BrokerRole::Amo => "amo",
            BrokerRole::Worker => "worker",
            BrokerRole::Gateway => "gateway",
            BrokerRole::Intake => "intake",
            BrokerRole::Monitoring => "monitoring",
        }
    }
}

/// A throwaway RabbitMQ user `<prefix>-<role>` with a random password and
/// exactly the permissions `infra/rabbitmq/definitions.json` gives its role,
/// rewritten for the test's prefix (as `infra/rabbitmq/load --prefix` does).
/// Deleted on drop, also when the test panics.
pub struct BrokerUser {
    /// The user's name.
    pub name: String,
    password: String,
    base_url: String,
    /// (configure, write, read) as set on vhost `/`.
    pub permissions: [String; 3],
}

impl BrokerUser {
    /// Creates the user of `role` for `broker`'s prefix (rabbitmqctl, beside
    /// the broker). The password goes to rabbitmqctl on stdin, never on a
    /// command line.
    pub fn create(broker: &TestBroker, role: BrokerRole) -> Self {
        let name = format!("{}-{}", broker.prefix, role.suffix());
        let password = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let permissions = permissions_for(role, broker.prefix.as_str());
        // The guard exists before the user does: a failure below still deletes it.
        let user = Self {
            name,
            password,
            base_url: broker.url.clone(),
            permissions,
        };
        rabbitmqctl(&["add_user", &user.name], Some(&user.password));
        let [configure, write, read] = &user.permissions;
        rabbitmqctl(
            &[
                "set_permissions",
                "-p",
                "/",
                &user.name,
                configure,
                write,
                read,
            ],
            None,
        );
        user
    }

    /// Creates the users of several roles at once (each rabbitmqctl run
    /// takes seconds).
    pub fn create_all(broker: &TestBroker, roles: &[BrokerRole]) -> Vec<Self> {
        std::thread::scope(|scope| {
            let threads: Vec<_> = roles
                .iter()
                .map(|&role| scope.spawn(move || Self::create(broker, role)))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("create broker user"))
                .collect()
        })
    }

    /// The password, for a test that checks where it does not show up.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The broker's URL with this user's credentials.
    pub fn url(&self) -> String {
        let (scheme, rest) = self
            .base_url
            .split_once("://")
            .expect("the broker URL has a scheme");
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        // Name and password are `[A-Za-z0-9-]`: nothing to percent-encode.
        format!("{scheme}://{}:{}@{host}", self.name, self.password)
    }

    /// Connects as this user.
    pub async fn connect(&self) -> lapin::Result<Connection> {
        Connection::connect(&self.url(), ConnectionProperties::default()).await
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let deleted = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_user", &self.name])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status();
        if !matches!(deleted, Ok(s) if s.success()) {
            eprintln!("harness: could not delete RabbitMQ user {}", self.name);
        }
    }
}

/// Runs rabbitmqctl quietly, with `stdin` as its standard input, and panics
/// (naming the command, never the input) when it fails.
pub(crate) fn rabbitmqctl(args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rabbitmqctl (as root, beside the broker)");
    let mut pipe = child.stdin.take().expect("piped stdin");
    if let Some(input) = stdin {
        writeln!(pipe, "{input}").expect("write to rabbitmqctl");
    }
    drop(pipe);
    let output = child.wait_with_output().expect("wait for rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {} failed: {}",
        args[0],
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The (configure, write, read) permissions `infra/rabbitmq/definitions.json`
/// gives `role`, with `addonreg` renamed to `prefix` and escaped as the file
/// escapes it (as `infra/rabbitmq/load --prefix` rewrites them).
pub fn permissions_for(role: BrokerRole, prefix: &str) -> [String; 3] {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/rabbitmq/definitions.json");
    let text = std::fs::read_to_string(&path).expect("read infra/rabbitmq/definitions.json");
    let definitions: Value = serde_json::from_str(&text).expect("definitions are JSON");
    let entry = definitions["permissions"]
        .as_array()
        .expect("a permissions list")
        .iter()
        .find(|p| p["user"] == role.definitions_user() && p["vhost"] == "/")
        .unwrap_or_else(|| panic!("no permissions for {}", role.definitions_user()));
    // Python's re.escape, as infra/rabbitmq/load uses it, less the `-` it unescapes.
    let escaped: String = prefix
        .chars()
        .flat_map(|c| {
            let plain = c.is_ascii_alphanumeric() || c == '_' || c == '-';
            (!plain).then_some('\\').into_iter().chain([c])
        })
        .collect();
    ["configure", "write", "read"].map(|k| {
        entry[k]
            .as_str()
            .expect("a permission regex")
            .replace(r"addonreg\.", &format!(r"{escaped}\."))
    })
}

/// Whether `error` is the broker's ACCESS_REFUSED (403), on the channel or
/// the connection.
pub fn is_access_refused(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 403)
}
