//! MozLog JSON logging on stdout: one object per line with `Timestamp` (ns),
//! `Type`, `Logger`, `Hostname`, `EnvVersion` "2.0", `Pid`, `Severity` (syslog
//! levels) and `Fields`. An event's `type` field becomes its `Type`. With
//! error reporting on (`crate::sentry`), errors also go to Sentry.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use ::sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer};
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterFn, Filtered, filter_fn};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::sentry::Reporting;
use crate::settings::{InvalidSetting, LogSettings};
use crate::version::VersionInfo;

/// What `main` holds until it exits: dropping it sends the errors still
/// queued for Sentry, then writes the log lines still buffered.
pub struct Telemetry {
    reporting: Reporting,
    log_writer: WorkerGuard,
}

impl Telemetry {
    /// Flushes both, in that order (a Sentry failure is logged last).
    pub fn finish(self) {
        drop(self.reporting);
        drop(self.log_writer);
    }
}

/// Installs the MozLog subscriber for the process named `logger`, and error
/// reporting when `ADDONREG_SENTRY_DSN` is set (`version` names the release).
/// Called once by `main`, which holds the returned [`Telemetry`] until it
/// exits; tests stay quiet unless they install it themselves.
///
/// Lines are formatted on the thread that logs and written to stdout by a
/// thread of their own, in batches, so a request never waits for stdout;
/// see [`LOG_BUFFER_LINES`] for what happens when that thread falls behind.
pub fn init(
    logger: &'static str,
    settings: &LogSettings,
    version: &VersionInfo,
) -> Result<Telemetry, InvalidSetting> {
    let filter = EnvFilter::try_new(&settings.filter).map_err(|e| InvalidSetting {
        variable: "ADDONREG_LOG",
        problem: e.to_string(),
    })?;
    let reporting = crate::sentry::init(logger, &settings.sentry, version)?;
    let on = reporting.is_on();
    // One write of many lines per batch: stdout itself writes line by line.
    let (writer, log_writer) = NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .thread_name("addonreg-log")
        .finish(std::io::BufWriter::new(std::io::stdout()));
    let _ = DROPPED.set(writer.error_counter());
    let sink: Sink = Box::new(move |line| {
        // One write per line keeps lines whole; a full or closed stdout must
        // not take the service down (the writer counts what it drops).
        let _ = writer.clone().write_all(line);
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(MozLog::new(logger, sink))
        // Nothing at all when reporting is off.
        .with(on.then(sentry_breadcrumbs))
        .with(on.then(sentry_errors))
        .try_init()
        .map_err(|e| InvalidSetting {
            variable: "ADDONREG_LOG",
            problem: e.to_string(),
        })?;
    Ok(Telemetry {
        reporting,
        log_writer,
    })
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

/// Log lines held for the writer thread at most. Past this the writer has
/// fallen behind (a stdout nobody reads fast enough): new lines are dropped
/// and counted (`log_lines_dropped_total`) rather than slow every request.
/// About 5 MB of typical lines.
pub const LOG_BUFFER_LINES: usize = 16_384;

/// Lines dropped so far, once logging is on.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Where finished lines go.
type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;

/// The layer that writes MozLog lines.
pub struct MozLog {
    /// `"Logger":…,"Hostname":…,"EnvVersion":"2.0","Pid":…,`: the same on
    /// every line, so written once.
    constant: Vec<u8>,
    sink: Sink,
}

impl MozLog {
    /// A layer for the process named `logger`, writing to `sink`.
    fn new(logger: &'static str, sink: Sink) -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let constant = format!(
            "\"Logger\":{},\"Hostname\":{},\"EnvVersion\":\"2.0\",\"Pid\":{},",
            Value::from(logger),
            Value::from(hostname),
            std::process::id()
        )
        .into_bytes();
        Self { constant, sink }
    }

    /// One event as a MozLog line (with its newline), written straight into
    /// a buffer: no intermediate JSON values on the request path.
    fn line(&self, level: &Level, target: &str, event: &Event<'_>) -> Vec<u8> {
        let mut fields = LineFields::default();
        event.record(&mut fields);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(160 + self.constant.len() + fields.buf.len());
        let _ = write!(out, "{{\"Timestamp\":{nanos},\"Type\":");
        json_str(&mut out, fields.kind.as_deref().unwrap_or(target));
        out.push(b',');
        out.extend_from_slice(&self.constant);
        let _ = write!(out, "\"Severity\":{},\"Fields\":{{", severity(level));
        out.extend_from_slice(&fields.buf);
        out.extend_from_slice(b"}}\n");
        out
    }
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
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
        let meta = event.metadata();
        (self.sink)(&self.line(meta.level(), meta.target(), event));
    }
}

/// An event's fields as the inside of the `Fields` object; its `type`
/// field apart, as the line's `Type`.
#[derive(Default)]
struct LineFields {
    buf: Vec<u8>,
    kind: Option<String>,
}

impl LineFields {
    fn key(&mut self, field: &Field) {
        if !self.buf.is_empty() {
            self.buf.push(b',');
        }
        json_str(&mut self.buf, field.name());
        self.buf.push(b':');
    }
}

impl Visit for LineFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "type" {
            self.kind = Some(value.to_owned());
            return;
        }
        self.key(field);
        json_str(&mut self.buf, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.buf, "{value}");
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.buf, "{value}");
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        // NaN and infinities become null, as JSON has no such numbers.
        let _ = serde_json::to_writer(&mut self.buf, &value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }
}

/// A Prometheus counter of the log lines dropped because the writer fell
/// behind; 0 until logging is on. Registered by [`crate::admin::registry`].
pub struct DroppedLines(prometheus::IntCounter);

impl DroppedLines {
    /// The counter, named `log_lines_dropped_total` under the registry's prefix.
    pub fn new() -> Self {
        // A constant, valid name: cannot fail.
        Self(
            prometheus::IntCounter::new(
                "log_lines_dropped_total",
                "Log lines dropped because the log writer fell behind (stdout not read fast enough)",
            )
            .expect("valid metric name"),
        )
    }
}

impl Default for DroppedLines {
    fn default() -> Self {
        Self::new()
    }
}

impl prometheus::core::Collector for DroppedLines {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let dropped = DROPPED.get().map_or(0, |c| c.dropped_lines() as u64);
        // Counted by the writer; brought up to date when scraped.
        self.0.inc_by(dropped.saturating_sub(self.0.get()));
        self.0.collect()
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
        let lines = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = lines.clone();
        let layer = MozLog::new(
            "addonreg-test",
            Box::new(move |line| sink.lock().unwrap().extend_from_slice(line)),
        );
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(type = "request.summary", n = 3u64, t = 1.5, ok = true, s = "a\"b", "hello");
            tracing::info!(error = %"x\ny", "no type");
        });
        let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "one line per event: {text}");
        let line = &lines[0];
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
        assert_eq!(line["Logger"], "addonreg-test");
        assert_eq!(line["Severity"], 4);
        assert_eq!(line["EnvVersion"], "2.0");
        assert_eq!(line["Fields"]["message"], "hello");
        assert_eq!(line["Fields"]["n"], 3);
        assert_eq!(line["Fields"]["t"], 1.5);
        assert_eq!(line["Fields"]["ok"], true);
        assert_eq!(line["Fields"]["s"], "a\"b");
        assert!(line["Fields"].get("type").is_none());
        assert!(line["Timestamp"].as_u64().unwrap() > 1_700_000_000_000_000_000);
        assert_eq!(lines[1]["Type"], module_path!(), "the target when no type");
        assert_eq!(lines[1]["Fields"]["error"], "x\ny");
        assert_eq!(lines[1]["Severity"], 6);
    }
}
