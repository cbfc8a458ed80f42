//! MozLog JSON logging on stdout: one object per line with `Timestamp` (ns),
//! `Type`, `Logger`, `Hostname`, `EnvVersion` "2.0", `Pid`, `Severity` (syslog
//! levels) and `Fields`. An event's `type` field becomes its `Type`. With
//! error reporting on (`crate::sentry`), errors also go to Sentry.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use ::sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer};
use serde_json::{Map, Value, json};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterFn, Filtered, filter_fn};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::sentry::Reporting;
use crate::settings::{InvalidSetting, LogSettings};
use crate::version::VersionInfo;

/// Installs the MozLog subscriber for the process named `logger`, and error
/// reporting when `ADDONREG_SENTRY_DSN` is set (`version` names the release).
/// Called once by `main`, which holds the returned [`Reporting`] until it
/// exits; tests stay quiet unless they install it themselves.
pub fn init(
    logger: &'static str,
    settings: &LogSettings,
    version: &VersionInfo,
) -> Result<Reporting, InvalidSetting> {
    let filter = EnvFilter::try_new(&settings.filter).map_err(|e| InvalidSetting {
        variable: "ADDONREG_LOG",
        problem: e.to_string(),
    })?;
    let reporting = crate::sentry::init(logger, &settings.sentry, version)?;
    let on = reporting.is_on();
    tracing_subscriber::registry()
        .with(filter)
        .with(MozLog::new(logger))
        // Nothing at all when reporting is off.
        .with(on.then(sentry_breadcrumbs))
        .with(on.then(sentry_errors))
        .try_init()
        .map_err(|e| InvalidSetting {
            variable: "ADDONREG_LOG",
            problem: e.to_string(),
        })?;
    Ok(reporting)
}

// What of the logs goes to Sentry: errors become events; warnings are kept
// (in memory, the last 100 per thread) as breadcrumbs sent with the next
// error; info and below stay out. Two layers added one by one: per-layer
// filters joined with `Layer::and_then` disable the warnings (tried).

/// Warnings, as Sentry breadcrumbs.
fn sentry_breadcrumbs<S>() -> Filtered<BreadcrumbLayer, FilterFn, S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn warning(metadata: &Metadata<'_>) -> bool {
        *metadata.level() == Level::WARN
    }
    BreadcrumbLayer::new().with_filter(filter_fn(warning as fn(&Metadata<'_>) -> bool))
}

/// Errors, as Sentry events; but not the HTTP server's connection errors,
/// which any client can cause (a malformed request head is logged at error
/// by warp) and would otherwise flood Sentry.
fn sentry_errors<S>() -> Filtered<ErrorLayer, FilterFn, S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    ErrorLayer::new().with_filter(filter_fn(is_ours_to_report as fn(&Metadata<'_>) -> bool))
}

/// Whether an event is an error worth a Sentry event.
fn is_ours_to_report(metadata: &Metadata<'_>) -> bool {
    *metadata.level() == Level::ERROR
        && !CLIENT_CAUSED
            .iter()
            .any(|t| metadata.target().starts_with(t))
}

/// Targets whose errors clients cause: connection-level HTTP errors.
const CLIENT_CAUSED: &[&str] = &["warp::server", "hyper"];

/// The layer that writes MozLog lines.
pub struct MozLog {
    logger: &'static str,
    hostname: String,
    pid: u32,
}

impl MozLog {
    /// A layer for the process named `logger`.
    pub fn new(logger: &'static str) -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Self {
            logger,
            hostname,
            pid: std::process::id(),
        }
    }

    /// The JSON line for one event's fields.
    fn line(&self, level: &Level, target: &str, mut fields: Map<String, Value>) -> Value {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let kind = match fields.remove("type") {
            Some(Value::String(t)) => t,
            _ => target.to_string(),
        };
        json!({
            "Timestamp": nanos,
            "Type": kind,
            "Logger": self.logger,
            "Hostname": self.hostname,
            "EnvVersion": "2.0",
            "Pid": self.pid,
            "Severity": severity(level),
            "Fields": fields,
        })
    }
}

/// Syslog severity of a tracing level.
fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S: Subscriber> Layer<S> for MozLog {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = JsonFields(Map::new());
        event.record(&mut fields);
        let meta = event.metadata();
        let line = self.line(meta.level(), meta.target(), fields.0);
        let mut buf = line.to_string().into_bytes();
        buf.push(b'\n');
        // One write per line keeps lines whole; a full or closed stdout must
        // not take the service down.
        let _ = std::io::stdout().lock().write_all(&buf);
    }
}

struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use ::sentry::{Envelope, Hub, Transport};

    use super::*;
    use crate::settings::SentrySettings;

    /// A Sentry transport that keeps the envelopes.
    struct Collect(Mutex<Vec<Envelope>>);

    impl Transport for Collect {
        fn send_envelope(&self, envelope: Envelope) {
            self.0.lock().unwrap().push(envelope);
        }
    }

    #[test]
    fn errors_become_events_warnings_breadcrumbs_and_info_nothing() {
        let settings = SentrySettings {
            dsn: Some("http://public@127.0.0.1:9/1".parse().unwrap()),
            environment: "unit".into(),
        };
        let version = VersionInfo::load(std::path::Path::new("/nonexistent"));
        let mut options = crate::sentry::client_options("addonreg-test", &settings, &version)
            .unwrap()
            .unwrap();
        let sent = Arc::new(Collect(Mutex::new(Vec::new())));
        options.transport = Some(Arc::new(sent.clone()));
        // The same defaults (contexts, panics, stacks) as `sentry::init`.
        let client = Arc::new(::sentry::Client::from(::sentry::apply_defaults(options)));
        let hub = Arc::new(Hub::new(Some(client.clone()), Arc::default()));
        // As `init` adds them.
        let subscriber = tracing_subscriber::registry()
            .with(Some(sentry_breadcrumbs()))
            .with(Some(sentry_errors()));
        Hub::run(hub, || {
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!("an info line");
                tracing::warn!(type = "test.warn", "a warning");
                // A malformed request from some client, as warp logs it.
                tracing::error!(target: "warp::server::run", "server connection error");
                tracing::error!(type = "test.error", error = "boom", "an error");
            })
        });
        assert!(client.flush(Some(std::time::Duration::from_secs(5))));
        let sent = sent.0.lock().unwrap();
        let events: Vec<_> = sent.iter().filter_map(|e| e.event()).collect();
        assert_eq!(events.len(), 1, "one event: our error, not the client's");
        let event = events[0];
        assert_eq!(event.message.as_deref(), Some("an error"));
        assert_eq!(event.environment.as_deref(), Some("unit"));
        assert_eq!(
            event.release.as_deref(),
            Some(crate::sentry::release(&version).as_str())
        );
        assert_eq!(event.tags["service"], "addonreg-test");
        assert!(event.server_name.is_none(), "no host name");
        assert!(event.user.is_none());
        let crumbs: Vec<_> = event
            .breadcrumbs
            .iter()
            .filter_map(|b| b.message.as_deref())
            .collect();
        assert_eq!(crumbs, ["a warning"]);
    }

    #[test]
    fn line_has_every_mozlog_field() {
        let layer = MozLog::new("addonreg-test");
        let mut fields = Map::new();
        fields.insert("type".into(), "request.summary".into());
        fields.insert("message".into(), "hello".into());
        let line = layer.line(&Level::WARN, "target", fields);
        for key in [
            "Timestamp",
            "Type",
            "Logger",
            "Hostname",
            "EnvVersion",
            "Pid",
            "Severity",
            "Fields",
        ] {
            assert!(line.get(key).is_some(), "{key}");
        }
        assert_eq!(line["Type"], "request.summary");
        assert_eq!(line["Severity"], 4);
        assert_eq!(line["EnvVersion"], "2.0");
        assert_eq!(line["Fields"]["message"], "hello");
        assert!(line["Fields"].get("type").is_none());
        assert!(line["Timestamp"].as_u64().unwrap() > 1_700_000_000_000_000_000);
    }
}
