//! The broker policies of `infra/rabbitmq/definitions.json` (the writes
//! queue's delivery limit and dead-lettering, the dead queue's limit), set for
//! one test's prefix as `infra/rabbitmq/load --prefix` sets them, and cleared
//! on drop. Queues are declared with their type only; these policies apply to
//! them whether they exist yet or not, and a change applies at once.

use serde_json::Value;

use crate::TestBroker;
use crate::broker::rabbitmqctl;

/// The policies set for one prefix; cleared on drop, also when the test panics.
pub struct BrokerPolicies {
    prefix: String,
    /// Names of the policies set so far.
    names: Vec<String>,
}

impl BrokerPolicies {
    /// Sets every policy of the definitions file, renamed for `broker`'s prefix.
    pub fn apply(broker: &TestBroker) -> Self {
        let mut policies = Self {
            prefix: broker.prefix.to_string(),
            names: Vec::new(),
        };
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../infra/rabbitmq/definitions.json");
        let text = std::fs::read_to_string(&path).expect("read infra/rabbitmq/definitions.json");
        let definitions: Value = serde_json::from_str(&text).expect("definitions are JSON");
        for policy in definitions["policies"].as_array().expect("a policies list") {
            let suffix = policy["name"]
                .as_str()
                .and_then(|n| n.strip_prefix("addonreg-"))
                .expect("policy names start with addonreg-");
            let mut definition = policy["definition"].clone();
            if let Some(key) = definition.get_mut("dead-letter-routing-key") {
                let renamed = policies.rename(key.as_str().expect("a queue name"));
                *key = Value::String(renamed);
            }
            let pattern = policy["pattern"]
                .as_str()
                .expect("a pattern")
                .replace(r"addonreg\.", &format!(r"{}\.", escape(&policies.prefix)));
            let priority = policy["priority"].as_i64().expect("a priority");
            policies.set(suffix, &pattern, &definition, priority);
        }
        policies
    }

    /// Sets (or replaces) the policy `<prefix>-<suffix>` on the queues
    /// matching `pattern`, as an operator would with `rabbitmqctl set_policy`.
    pub fn set(&mut self, suffix: &str, pattern: &str, definition: &Value, priority: i64) {
        let name = format!("{}-{suffix}", self.prefix);
        rabbitmqctl(
            &[
                "set_policy",
                "-p",
                "/",
                "--apply-to",
                "queues",
                "--priority",
                &priority.to_string(),
                &name,
                pattern,
                &definition.to_string(),
            ],
            None,
        );
        if !self.names.contains(&name) {
            self.names.push(name);
        }
    }

    /// `addonreg.<rest>` under this prefix.
    fn rename(&self, name: &str) -> String {
        match name.strip_prefix("addonreg.") {
            Some(rest) => format!("{}.{rest}", self.prefix),
            None => name.to_string(),
        }
    }
}

impl Drop for BrokerPolicies {
    fn drop(&mut self) {
        for name in &self.names {
            let cleared = std::process::Command::new("rabbitmqctl")
                .args(["-q", "clear_policy", "-p", "/", name])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .status();
            if !matches!(cleared, Ok(s) if s.success()) {
                eprintln!("harness: could not clear RabbitMQ policy {name}");
            }
        }
    }
}

/// Python's re.escape, as infra/rabbitmq/load uses it, less the `-` it unescapes.
pub fn escape(prefix: &str) -> String {
    prefix
        .chars()
        .flat_map(|c| {
            let plain = c.is_ascii_alphanumeric() || c == '_' || c == '-';
            (!plain).then_some('\\').into_iter().chain([c])
        })
        .collect()
}
