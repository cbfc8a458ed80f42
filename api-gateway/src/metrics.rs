//! Every Prometheus metric the gateway exports, declared and registered in
//! one place (the registry adds the `addonreg_gateway_` prefix).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// The gateway's metrics. Cheap to clone: each field is a handle.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `cache_hits_total`: single-record reads answered from memory.
    pub cache_hits: IntCounter,
    /// `cache_misses_total`: single-record reads that queried the store.
    pub cache_misses: IntCounter,
    /// `cache_coalesced_total`: reads that waited for another read's query
    /// for the same key instead of querying.
    pub cache_coalesced: IntCounter,
    /// `cache_fill_discarded_total`: query results answered but not cached,
    /// because the key was invalidated (or the cache cleared) while the query
    /// ran, or no replica had replayed the key's fence (the read then fails).
    pub cache_fill_discarded: IntCounter,
    /// `cache_clears_total`: whole-cache drops, on every (re)subscription.
    pub cache_clears: IntCounter,
    /// `store_queries_total{kind}`: queries the cache sent to the store;
    /// `kind` is `record`, `record_fenced` (one key), `record_batch`,
    /// `record_batch_fenced` (misses of several keys coalesced), `lookup`
    /// or `lookup_fenced` (bulk lookups).
    pub store_queries: IntCounterVec,
    /// `miss_batch_keys`: keys read by each query of coalesced misses.
    pub miss_batch_keys: Histogram,
    /// `invalidation_events_total`: invalidation events received.
    pub invalidation_events: IntCounter,
    /// `broker_connected`: 1 while subscribed to invalidations, else 0.
    pub broker_connected: IntGauge,
    /// `requests_total{route, status}`: answered requests, errors included;
    /// `route` is the route pattern (see `summary::route_of`).
    pub requests: IntCounterVec,
    /// `request_duration_seconds{route}`: time to answer, errors included.
    pub request_duration: HistogramVec,
    /// `cache_entries`: entries cached (approximate, updated every check).
    pub cache_entries: IntGauge,
    /// `cache_weighted_bytes`: the entries' estimated bytes, against
    /// `ADDONREG_CACHE_MAX_BYTES`.
    pub cache_weighted_bytes: IntGauge,
    /// `replica_healthy{replica}`: 1 when the last background check
    /// answered, else 0.
    pub replica_healthy: IntGaugeVec,
    /// `replica_lag_bytes{replica}`: WAL bytes between the newest position
    /// known (the newest event's or resubscription's LSN, or a primary
    /// source's own WAL position) and what the replica has replayed (0 for
    /// a primary or when caught up).
    pub replica_lag_bytes: IntGaugeVec,
    /// `invalidation_delay_seconds`: from a worker's commit to this gateway
    /// evicting its keys (the freshness delay, by the worker's clock).
    pub invalidation_delay: Histogram,
    /// `http_connections_open`: connections open on the public listener.
    pub http_connections_open: IntGauge,
    /// `http_connections_refused_total`: connections closed as soon as
    /// accepted, because `ADDONREG_HTTP_MAX_CONNECTIONS` were open.
    pub http_connections_refused: IntCounter,
}

/// Buckets of `request_duration_seconds`, from 50 µs to 30 s: past reads that
/// wait out `ADDONREG_READ_TIMEOUT_MS` (3 s) on more than one source.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Declares every metric and registers it in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let store_queries = IntCounterVec::new(
            Opts::new(
                "store_queries_total",
                "Queries the cache sent to the store.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(store_queries.clone()))?;
        let broker_connected = IntGauge::new(
            "broker_connected",
            "1 while subscribed to invalidation events.",
        )?;
        registry.register(Box::new(broker_connected.clone()))?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests answered, by route and status."),
            &["route", "status"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Time to answer a request.")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["route"],
        )?;
        registry.register(Box::new(request_duration.clone()))?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let per_replica = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["replica"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let invalidation_delay = Histogram::with_opts(
            HistogramOpts::new(
                "invalidation_delay_seconds",
                "From a worker's commit to the gateway evicting its keys.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(invalidation_delay.clone()))?;
        let miss_batch_keys = Histogram::with_opts(
            HistogramOpts::new(
                "miss_batch_keys",
                "Keys read by each query of coalesced cache misses.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        registry.register(Box::new(miss_batch_keys.clone()))?;
        Ok(Self {
            miss_batch_keys,
            cache_entries: gauge("cache_entries", "Entries cached (approximate).")?,
            cache_weighted_bytes: gauge(
                "cache_weighted_bytes",
                "Estimated bytes of the cached entries.",
            )?,
            replica_healthy: per_replica(
                "replica_healthy",
                "1 when the replica answered its last health check.",
            )?,
            replica_lag_bytes: per_replica(
                "replica_lag_bytes",
                "WAL bytes the replica has yet to replay up to the newest invalidation.",
            )?,
            invalidation_delay,
            cache_hits: counter("cache_hits_total", "Reads answered from memory.")?,
            cache_misses: counter("cache_misses_total", "Reads that queried the store.")?,
            cache_coalesced: counter(
                "cache_coalesced_total",
                "Reads that shared another read's query.",
            )?,
            cache_fill_discarded: counter(
                "cache_fill_discarded_total",
                "Query results answered but not cached (invalidated meanwhile, or replicas behind).",
            )?,
            cache_clears: counter(
                "cache_clears_total",
                "Whole-cache drops on (re)subscription.",
            )?,
            store_queries,
            invalidation_events: counter(
                "invalidation_events_total",
                "Invalidation events received.",
            )?,
            broker_connected,
            requests,
            request_duration,
            http_connections_open: gauge(
                "http_connections_open",
                "Connections open on the public listener.",
            )?,
            http_connections_refused: counter(
                "http_connections_refused_total",
                "Connections closed as soon as accepted, over the connection limit.",
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::DURATION_BUCKETS;
    use crate::Settings;

    /// The request-duration histogram must reach past the slowest read, or its
    /// p99 clips at the top bucket exactly during incidents.
    #[test]
    fn duration_buckets_reach_past_reads_that_try_every_source() {
        let settings = Settings::try_parse_from(["api-gateway"]).expect("defaults parse");
        let read_timeout = settings.read_timeout().as_secs_f64();
        let top = DURATION_BUCKETS.last().copied().unwrap_or_default();
        // A read may wait out the timeout on a stopped replica and then on the
        // next source: two timeouts and then some.
        assert!(
            top > 2.0 * read_timeout,
            "top bucket {top} s, read timeout {read_timeout} s"
        );
        assert!(
            DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]),
            "buckets ascend"
        );
        // The freshness alert reads the 1 s bucket of the same list.
        assert!(DURATION_BUCKETS.contains(&1.0));
        // The latency SLO reads the 250 ms bucket.
        assert!(DURATION_BUCKETS.contains(&0.25));
    }
}
