//! Every metric the intake exports (prefix `addonreg_intake_`), declared once.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// The intake's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Writes the broker confirmed (202).
    pub accepted: IntCounter,
    /// Writes refused as invalid, by the worker's reason code (400, 413).
    pub rejected: IntCounterVec,
    /// Requests without a valid token (401).
    pub unauthorized: IntCounter,
    /// 503s, by cause: backlog, confirm_timeout, returned, nacked, broker.
    pub unavailable: IntCounterVec,
    /// Time from publishing a write to the broker's confirm.
    pub confirm_seconds: Histogram,
    /// Messages ready in the writes queue, as last read (-1: unknown).
    pub backlog: IntGauge,
    /// `ADDONREG_INTAKE_MAX_BACKLOG`, so alerts and dashboards can compare.
    pub max_backlog: IntGauge,
    /// Answered requests, by route pattern and status.
    pub requests: IntCounterVec,
    /// Time to answer, by route pattern.
    pub request_duration: HistogramVec,
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &Registry) -> Self {
        // Start-up: names and labels are constants, registered once.
        fn add<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: M) -> M {
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            add(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition"),
            )
        };
        let latency = prometheus::exponential_buckets(0.0005, 2.0, 15).expect("buckets");
        Self {
            accepted: add(
                registry,
                IntCounter::new("accepted_total", "Writes confirmed by the broker (202).")
                    .expect("metric definition"),
            ),
            rejected: counter_vec(
                "rejected_total",
                "Writes refused as invalid (400, 413), by reason code.",
                &["reason"],
            ),
            unauthorized: add(
                registry,
                IntCounter::new(
                    "unauthorized_total",
                    "Requests without a valid token (401).",
                )
                .expect("metric definition"),
            ),
            unavailable: counter_vec(
                "unavailable_total",
                "Writes answered 503, by cause.",
                &["cause"],
            ),
            confirm_seconds: add(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new("confirm_seconds", "Publish to broker confirm.")
                        .buckets(latency.clone()),
                )
                .expect("metric definition"),
            ),
            backlog: add(
                registry,
                IntGauge::new(
                    "backlog_messages",
                    "Messages ready in the writes queue, as last read (-1: unknown).",
                )
                .expect("metric definition"),
            ),
            max_backlog: add(
                registry,
                IntGauge::new(
                    "max_backlog_messages",
                    "Backlog above which writes are answered 503.",
                )
                .expect("metric definition"),
            ),
            requests: counter_vec(
                "requests_total",
                "Answered requests, by route and status.",
                &["route", "status"],
            ),
            request_duration: add(
                registry,
                HistogramVec::new(
                    HistogramOpts::new("request_duration_seconds", "Time to answer, by route.")
                        .buckets(latency),
                    &["route"],
                )
                .expect("metric definition"),
            ),
        }
    }
}
