//! The gateway's settings: flags and `ADDONREG_*` variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use shared::settings::{
    AmqpSettings, InvalidSetting, LogSettings, OptionalListen, PoolSettings, Secret,
};

use crate::server::Limits;

/// addonreg's read gateway.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Settings {
    /// Public HTTP address. [env: ADDONREG_LISTEN]
    #[arg(long, env = "ADDONREG_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Admin address serving /metrics; 0 turns it off. [env: ADDONREG_METRICS_LISTEN]
    #[arg(
        long,
        env = "ADDONREG_METRICS_LISTEN",
        default_value = "127.0.0.1:9101"
    )]
    pub metrics_listen: OptionalListen,

    /// Comma-separated read replica URLs; defaults to the primary's URL.
    /// [env: ADDONREG_REPLICA_URLS]
    #[arg(
        long,
        env = "ADDONREG_REPLICA_URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub replica_urls: Vec<Secret>,

    /// The primary, used when no replica is configured. [env: ADDONREG_DATABASE_URL]
    #[arg(
        long,
        env = "ADDONREG_DATABASE_URL",
        default_value = "postgres://addonreg_gateway@127.0.0.1:5432/addonreg",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub database_url: Secret,

    #[command(flatten)]
    pub pool: PoolSettings,

    /// Longest one replica may take to answer a read, connecting included, in
    /// ms, before the same request tries the next replica.
    /// [env: ADDONREG_READ_TIMEOUT_MS]
    // Client-side: a stopped replica keeps its TCP connections open without
    // answering, so the server-side statement timeout can't fire.
    #[arg(long, env = "ADDONREG_READ_TIMEOUT_MS", default_value_t = 3_000)]
    pub read_timeout_ms: u64,

    /// `max-age` of a found record's answer, in seconds. [env: ADDONREG_CACHE_TTL_FOUND_SECS]
    #[arg(long, env = "ADDONREG_CACHE_TTL_FOUND_SECS", default_value_t = 60)]
    pub cache_ttl_found_secs: u32,

    /// `max-age` of a missing record's 404, in seconds. [env: ADDONREG_CACHE_TTL_MISSING_SECS]
    #[arg(long, env = "ADDONREG_CACHE_TTL_MISSING_SECS", default_value_t = 5)]
    pub cache_ttl_missing_secs: u32,

    /// `s-maxage` of record answers and listings, in seconds: how long a
    /// shared cache (the CDN) may keep them, which is safe only when it is
    /// purged by the edge purger (`docs/edge.md`); while not subscribed to
    /// invalidations the gateway gives at most its disconnected lifetime.
    /// [env: ADDONREG_SHARED_MAX_AGE_SECS]
    #[arg(long, env = "ADDONREG_SHARED_MAX_AGE_SECS", default_value_t = 3_600)]
    pub shared_max_age_secs: u32,

    /// Most records (found or missing) kept in memory; 0 turns the cache
    /// off. [env: ADDONREG_CACHE_MAX_ENTRIES]
    #[arg(long, env = "ADDONREG_CACHE_MAX_ENTRIES", default_value_t = 1_000_000)]
    pub cache_max_entries: u64,

    /// Most bytes of memory the cached records take, estimated per entry
    /// (key, body, headers, and ~3.3 KB measured of the cache's bookkeeping
    /// and the allocator's overhead). [env: ADDONREG_CACHE_MAX_BYTES]
    #[arg(long, env = "ADDONREG_CACHE_MAX_BYTES", default_value_t = 512 << 20)]
    pub cache_max_bytes: u64,

    /// How often each replica is health-checked (and its lag measured) in
    /// the background, in ms. [env: ADDONREG_REPLICA_CHECK_INTERVAL_MS]
    #[arg(
        long,
        env = "ADDONREG_REPLICA_CHECK_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub replica_check_interval_ms: u64,

    /// Longest lifetime of a cached record while not subscribed to
    /// invalidation events, in ms. [env: ADDONREG_CACHE_DISCONNECTED_TTL_MS]
    #[arg(
        long,
        env = "ADDONREG_CACHE_DISCONNECTED_TTL_MS",
        default_value_t = 1_000
    )]
    pub cache_disconnected_ttl_ms: u64,

    /// Share of requests logged as a `request.summary` line, from 0.0 (none)
    /// to 1.0 (all). [env: ADDONREG_REQUEST_LOG_SAMPLE]
    #[arg(long, env = "ADDONREG_REQUEST_LOG_SAMPLE", default_value_t = 1.0)]
    pub request_log_sample: f64,

    /// Longest a client may take to send a request's head (request line and
    /// headers), in ms, counted from its first byte (from connecting, for a
    /// connection's first request); the connection is then closed.
    /// [env: ADDONREG_HTTP_HEADER_READ_TIMEOUT_MS]
    // Slow-header clients (one byte a second, never done) would otherwise
    // hold a connection each for as long as they like.
    #[arg(
        long,
        env = "ADDONREG_HTTP_HEADER_READ_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub http_header_read_timeout_ms: u64,

    /// Longest a client may take to send a request's body (`POST
    /// /v1/lookups`), in ms, counted from the end of its head; it is then
    /// answered 408 and the connection closed.
    /// [env: ADDONREG_HTTP_BODY_READ_TIMEOUT_MS]
    // A body trickling in a byte at a time would otherwise hold a
    // connection slot (and a task) for as long as the client likes.
    #[arg(
        long,
        env = "ADDONREG_HTTP_BODY_READ_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub http_body_read_timeout_ms: u64,

    /// Longest a keep-alive connection may wait for its next request, in ms,
    /// once the last one is answered; it is then closed.
    /// [env: ADDONREG_HTTP_IDLE_TIMEOUT_MS]
    // Above the keep-alive timeouts of CDNs' origin pools, so that they
    // close first and never send on a connection that is closing here.
    #[arg(long, env = "ADDONREG_HTTP_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub http_idle_timeout_ms: u64,

    /// Most connections open at once on the public listener; beyond it, new
    /// ones are accepted and closed at once. Keep it below the open-files
    /// limit (`ulimit -n`), which the database and broker sockets share.
    /// [env: ADDONREG_HTTP_MAX_CONNECTIONS]
    #[arg(long, env = "ADDONREG_HTTP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub http_max_connections: u32,

    #[command(flatten)]
    pub amqp: AmqpSettings,

    /// AMQP heartbeat asked of the broker for the invalidation subscription,
    /// in seconds; 0 leaves it to the broker (RabbitMQ: 60 s). The broker is
    /// taken as lost after two intervals without a frame.
    /// [env: ADDONREG_AMQP_HEARTBEAT_SECS]
    // Workers publish nothing while idle, so only heartbeats tell a silent
    // partition from quiet: until it is noticed, cached records keep their
    // full lifetimes and no invalidation arrives.
    #[arg(long, env = "ADDONREG_AMQP_HEARTBEAT_SECS", default_value_t = 5)]
    pub amqp_heartbeat_secs: u16,

    #[command(flatten)]
    pub log: LogSettings,

    /// version.json to answer /__version__ with. [env: ADDONREG_VERSION_FILE]
    #[arg(
        long,
        env = "ADDONREG_VERSION_FILE",
        default_value = "/app/version.json"
    )]
    pub version_file: PathBuf,
}

impl Settings {
    /// The database URLs to read from: the replicas, else the primary.
    pub fn read_urls(&self) -> Vec<Secret> {
        if self.replica_urls.is_empty() {
            vec![self.database_url.clone()]
        } else {
            self.replica_urls.clone()
        }
    }

    /// How long one replica may take to answer a read.
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }

    /// The public listener's limits, or which `ADDONREG_HTTP_*` is wrong.
    pub fn http_limits(&self) -> Result<Limits, InvalidSetting> {
        let millis = |variable, ms| match ms {
            1..=MAX_HTTP_TIMEOUT_MS => Ok(Duration::from_millis(ms)),
            _ => Err(InvalidSetting {
                variable,
                problem: format!("must be from 1 to {MAX_HTTP_TIMEOUT_MS} (a day), not {ms}"),
            }),
        };
        if self.http_max_connections == 0 {
            return Err(InvalidSetting {
                variable: "ADDONREG_HTTP_MAX_CONNECTIONS",
                problem: "must be at least 1".into(),
            });
        }
        Ok(Limits {
            header_read_timeout: millis(
                "ADDONREG_HTTP_HEADER_READ_TIMEOUT_MS",
                self.http_header_read_timeout_ms,
            )?,
            idle_timeout: millis("ADDONREG_HTTP_IDLE_TIMEOUT_MS", self.http_idle_timeout_ms)?,
            max_connections: self.http_max_connections,
            body_read_timeout: millis(
                "ADDONREG_HTTP_BODY_READ_TIMEOUT_MS",
                self.http_body_read_timeout_ms,
            )?,
        })
    }
}

/// Longest HTTP timeout accepted: a day (longer is a typo, and would
/// overflow deadlines near `u64::MAX`).
const MAX_HTTP_TIMEOUT_MS: u64 = 86_400_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let s = Settings::try_parse_from(["api-gateway"]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.metrics_listen.0.unwrap().to_string(), "127.0.0.1:9101");
        assert_eq!(s.amqp.prefix.as_str(), "addonreg");
        assert_eq!(s.read_urls().len(), 1);
        assert_eq!(s.read_timeout(), Duration::from_secs(3));
        assert_eq!((s.cache_ttl_found_secs, s.cache_ttl_missing_secs), (60, 5));
        assert_eq!(s.shared_max_age_secs, 3_600);
        assert_eq!(s.cache_max_entries, 1_000_000);
        assert_eq!(s.cache_max_bytes, 512 << 20);
        assert_eq!(s.replica_check_interval_ms, 1_000);
        assert_eq!(s.cache_disconnected_ttl_ms, 1_000);
        assert_eq!(s.request_log_sample, 1.0);
        assert_eq!(s.http_header_read_timeout_ms, 5_000);
        assert_eq!(s.http_idle_timeout_ms, 60_000);
        assert_eq!(s.http_body_read_timeout_ms, 10_000);
        assert_eq!(s.amqp_heartbeat_secs, 5);
        assert_eq!(s.http_max_connections, 10_000);
        let s = Settings::try_parse_from([
            "api-gateway",
            "--replica-urls",
            "postgres://a/x,postgres://b/x",
            "--metrics-listen",
            "0",
        ])
        .unwrap();
        assert_eq!(s.read_urls().len(), 2);
        assert_eq!(s.metrics_listen.0, None);
    }

    #[test]
    fn http_limits_are_checked_and_name_their_variable() {
        let limits = |args: &[&str]| {
            let s = Settings::try_parse_from(["api-gateway"].iter().chain(args)).unwrap();
            s.http_limits()
        };
        let ok = limits(&[]).unwrap();
        assert_eq!(ok.header_read_timeout, Duration::from_secs(5));
        assert_eq!(ok.idle_timeout, Duration::from_secs(60));
        assert_eq!(ok.max_connections, 10_000);
        assert_eq!(ok.body_read_timeout, Duration::from_secs(10));
        for (args, variable) in [
            (
                ["--http-header-read-timeout-ms", "0"],
                "ADDONREG_HTTP_HEADER_READ_TIMEOUT_MS",
            ),
            (
                ["--http-idle-timeout-ms", "86400001"],
                "ADDONREG_HTTP_IDLE_TIMEOUT_MS",
            ),
            (
                ["--http-body-read-timeout-ms", "0"],
                "ADDONREG_HTTP_BODY_READ_TIMEOUT_MS",
            ),
            (
                ["--http-max-connections", "0"],
                "ADDONREG_HTTP_MAX_CONNECTIONS",
            ),
        ] {
            assert_eq!(limits(&args).unwrap_err().variable, variable, "{args:?}");
        }
        // Not a number: clap refuses it, naming the flag.
        let e = Settings::try_parse_from(["api-gateway", "--http-max-connections", "lots"])
            .unwrap_err();
        assert!(e.to_string().contains("--http-max-connections"), "{e}");
    }
}
