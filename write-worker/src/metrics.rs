//! Every metric the worker exports, declared once.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// The worker's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Writes by outcome: applied, superseded, rejected, duplicate.
    pub messages: IntCounterVec,
    /// Messages moved to the dead-letter queue, by reason code.
    pub dead_lettered: IntCounterVec,
    /// Messages per committed batch.
    pub batch_messages: Histogram,
    /// Ops per committed batch.
    pub batch_ops: Histogram,
    /// Time to commit one batch (transaction and WAL position).
    pub commit_seconds: Histogram,
    /// Failed commits: transient (retried) or refused (batch split).
    pub commit_errors: IntCounterVec,
    /// Deliveries the broker flagged as redelivered.
    pub redeliveries: IntCounter,
    /// Broker connections made after the first.
    pub reconnects: IntCounter,
    /// Invalidation events confirmed by the broker.
    pub invalidations: IntCounter,
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &Registry) -> Self {
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("metric definition");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let sizes = vec![1.0, 5.0, 20.0, 100.0, 500.0, 2_000.0, 10_000.0, 50_000.0];
        Self {
            messages: counter_vec("messages_total", "Writes processed, by outcome.", "outcome"),
            dead_lettered: counter_vec(
                "dead_lettered_total",
                "Messages dead-lettered, by reason.",
                "reason",
            ),
            batch_messages: histogram(
                "batch_messages",
                "Messages per committed batch.",
                sizes.clone(),
            ),
            batch_ops: histogram("batch_ops", "Ops per committed batch.", sizes),
            commit_seconds: histogram(
                "commit_seconds",
                "Time to commit one batch.",
                prometheus::exponential_buckets(0.0005, 2.0, 15).expect("buckets"),
            ),
            commit_errors: counter_vec(
                "commit_errors_total",
                "Failed batch commits, by kind.",
                "kind",
            ),
            redeliveries: counter("redeliveries_total", "Deliveries flagged as redelivered."),
            reconnects: counter(
                "broker_reconnects_total",
                "Broker connections after the first.",
            ),
            invalidations: counter(
                "invalidations_published_total",
                "Invalidation events confirmed.",
            ),
        }
    }
}
