//! How a gateway or worker process is launched: its program, arguments and
//! exactly the `ADDONREG_*` settings it gets. One place for the tests and
//! `loadtest`, so a new required setting is added once.

use std::path::PathBuf;

/// A workspace binary with the settings to start it with.
#[derive(Debug, Clone)]
pub struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Launch {
    /// A write worker committing to `database_url`, consuming the writes of
    /// `prefix` at `amqp_url`, with its admin listener off.
    pub fn worker(
        program: impl Into<PathBuf>,
        database_url: &str,
        amqp_url: &str,
        prefix: &str,
    ) -> Self {
        Self::new(program)
            .set("ADDONREG_DATABASE_URL", database_url)
            .set("ADDONREG_AMQP_URL", amqp_url)
            .set("ADDONREG_PREFIX", prefix)
            .set("ADDONREG_METRICS_LISTEN", "0")
    }

    /// A gateway reading `replica_urls`, subscribed to the events of `prefix`
    /// at `amqp_url`, answering on 127.0.0.1:`port`, with its admin listener off.
    pub fn gateway(
        program: impl Into<PathBuf>,
        replica_urls: &[String],
        amqp_url: &str,
        prefix: &str,
        port: u16,
    ) -> Self {
        Self::new(program)
            .set("ADDONREG_REPLICA_URLS", &replica_urls.join(","))
            .set("ADDONREG_AMQP_URL", amqp_url)
            .set("ADDONREG_PREFIX", prefix)
            .set("ADDONREG_LISTEN", &format!("127.0.0.1:{port}"))
            .set("ADDONREG_METRICS_LISTEN", "0")
    }

    fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Sets (or replaces) one setting.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Sets (or replaces) several settings; later ones win.
    pub fn settings<K: AsRef<str>, V: AsRef<str>>(mut self, settings: &[(K, V)]) -> Self {
        for (key, value) in settings {
            self = self.set(key.as_ref(), value.as_ref());
        }
        self
    }

    /// Appends command-line arguments (a subcommand, flags).
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// The program's path.
    pub fn program(&self) -> &std::path::Path {
        &self.program
    }

    /// The command to spawn: no `ADDONREG_*` variable of the caller's own
    /// environment leaks in, only the settings given here.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args).stdin(std::process::Stdio::null());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ADDONREG_")) {
            cmd.env_remove(key);
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_settings_replace_earlier_ones_and_the_callers_never_leak() {
        // SAFETY: set before any thread of this test reads the environment.
        unsafe { std::env::set_var("ADDONREG_LOG", "debug") };
        let launch = Launch::worker("/bin/true", "postgres://db", "amqp://b", "p")
            .set("ADDONREG_METRICS_LISTEN", "127.0.0.1:1")
            .args(&["migrate"]);
        let cmd = launch.command();
        let envs: Vec<(String, Option<String>)> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        let value = |key: &str| {
            envs.iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.clone())
        };
        assert_eq!(
            value("ADDONREG_METRICS_LISTEN").as_deref(),
            Some("127.0.0.1:1")
        );
        assert_eq!(value("ADDONREG_PREFIX").as_deref(), Some("p"));
        assert!(
            envs.contains(&("ADDONREG_LOG".to_string(), None)),
            "removed"
        );
        assert_eq!(
            cmd.get_args().collect::<Vec<_>>(),
            vec![std::ffi::OsStr::new("migrate")]
        );
    }
}
