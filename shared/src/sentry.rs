//! Error reporting to Sentry. With `ADDONREG_SENTRY_DSN` set, error-level
//! log events become Sentry events (warnings ride along as breadcrumbs) and
//! panics are reported; without it nothing is set up and nothing changes.
//! Events name no host, address or user: they carry the log event's own
//! fields (which never hold a secret), the stack, and the OS and Rust
//! versions.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ::sentry::types::Dsn;
use ::sentry::{ClientInitGuard, ClientOptions};

use crate::settings::{InvalidSetting, SentrySettings};
use crate::version::VersionInfo;

/// Longest wait, at exit, for the queued events to reach Sentry.
// Short beside the grace a container gets between SIGTERM and SIGKILL, so
// that a Sentry outage can't hold up a shutdown (or a worker's last ack).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Error reporting, on while this lives. Dropping it sends what is queued
/// (waiting at most [`FLUSH_TIMEOUT`]) and stops reporting, so `main` holds it
/// until the process exits, SIGTERM included.
#[must_use = "reporting stops when this is dropped"]
pub struct Reporting(Option<ClientInitGuard>);

impl Reporting {
    /// No reporting: no DSN, or a command that answers a person at a terminal.
    pub fn off() -> Self {
        Self(None)
    }

    /// Whether events go to Sentry.
    pub fn is_on(&self) -> bool {
        self.0.as_ref().is_some_and(|guard| guard.is_enabled())
    }
}

/// Starts reporting for the process named `logger` (its `service` tag) when
/// a DSN is set. Called once by `main`, before the log subscriber, so that a
/// panic during start-up is reported too.
pub fn init(
    logger: &'static str,
    settings: &SentrySettings,
    version: &VersionInfo,
) -> Result<Reporting, InvalidSetting> {
    Ok(match client_options(logger, settings, version)? {
        Some(options) => Reporting(Some(::sentry::init(options))),
        None => Reporting::off(),
    })
}

/// The client's options, or none without a DSN.
pub(crate) fn client_options(
    logger: &'static str,
    settings: &SentrySettings,
    version: &VersionInfo,
) -> Result<Option<ClientOptions>, InvalidSetting> {
    let Some(dsn) = settings
        .dsn
        .as_ref()
        .map(|dsn| dsn.expose().trim())
        .filter(|dsn| !dsn.is_empty())
    else {
        return Ok(None);
    };
    // The parser's messages never quote the DSN.
    let dsn = Dsn::from_str(dsn).map_err(|e| InvalidSetting {
        variable: "ADDONREG_SENTRY_DSN",
        problem: format!("not a Sentry DSN: {e}"),
    })?;
    if settings.environment.trim().is_empty() {
        return Err(InvalidSetting {
            variable: "ADDONREG_SENTRY_ENVIRONMENT",
            problem: "must not be empty".into(),
        });
    }
    let mut options = ClientOptions::default();
    options.dsn = Some(dsn);
    options.release = Some(release(version).into());
    options.environment = Some(settings.environment.clone().into());
    options.send_default_pii = false;
    options.server_name = None;
    options.shutdown_timeout = FLUSH_TIMEOUT;
    options.before_send = Some(Arc::new(move |mut event| {
        // The contexts integration fills `server_name` with the host name
        // when it is unset, so it is taken out again here, last.
        event.server_name = None;
        event.user = None;
        event.request = None;
        event.tags.insert("service".into(), logger.into());
        Some(event)
    }));
    Ok(Some(options))
}

/// The release events are filed under: `addonreg@<version>`, with
/// `+<commit>` when the build knows its commit.
pub fn release(version: &VersionInfo) -> String {
    let commit = version.commit.trim();
    if commit.is_empty() || commit == "unknown" {
        format!("addonreg@{}", version.version)
    } else {
        format!("addonreg@{}+{commit}", version.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(commit: &str) -> VersionInfo {
        VersionInfo {
            source: "s".into(),
            version: "0.1.0".into(),
            commit: commit.into(),
            build: "b".into(),
        }
    }

    #[test]
    fn release_is_the_version_plus_the_commit_when_known() {
        assert_eq!(release(&version("abc123")), "addonreg@0.1.0+abc123");
        assert_eq!(release(&version("unknown")), "addonreg@0.1.0");
        assert_eq!(release(&version("")), "addonreg@0.1.0");
    }

    #[test]
    fn without_a_dsn_nothing_is_set_up_and_a_bad_one_is_named() {
        let mut settings = SentrySettings {
            dsn: None,
            environment: "local".into(),
        };
        assert!(!init("t", &settings, &version("c")).unwrap().is_on());
        settings.dsn = Some("  ".parse().unwrap());
        assert!(!init("t", &settings, &version("c")).unwrap().is_on());
        settings.dsn = Some("not a dsn hunter2".parse().unwrap());
        let Err(e) = init("t", &settings, &version("c")) else {
            panic!("a bad DSN is refused");
        };
        assert_eq!(e.variable, "ADDONREG_SENTRY_DSN");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
