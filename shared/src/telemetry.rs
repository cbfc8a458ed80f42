//! MozLog JSON logging on stdout: one object per line with `Timestamp` (ns),
//! `Type`, `Logger`, `Hostname`, `EnvVersion` "2.0", `Pid`, `Severity` (syslog
//! levels) and `Fields`. An event's `type` field becomes its `Type`.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::settings::{InvalidSetting, LogSettings};

/// Installs the MozLog subscriber for the process named `logger`. Called once
/// by `main`; tests stay quiet unless they install it themselves.
pub fn init(logger: &'static str, settings: &LogSettings) -> Result<(), InvalidSetting> {
    let filter = EnvFilter::try_new(&settings.filter).map_err(|e| InvalidSetting {
        variable: "ADDONREG_LOG",
        problem: e.to_string(),
    })?;
    tracing_subscriber::registry()
        .with(filter)
        .with(MozLog::new(logger))
        .try_init()
        .map_err(|e| InvalidSetting {
            variable: "ADDONREG_LOG",
            problem: e.to_string(),
        })
}

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
    use super::*;

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
