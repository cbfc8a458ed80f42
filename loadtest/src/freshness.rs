//! The freshness promise, measured: for sampled writes, the delay from the
//! moment the write's receipt exists to the moment the gateway serves the
//! new value, while Firefox-shaped reads keep the gateway (and its cache)
//! busy. The contract promises under 1 s, aiming at p99 under 50 ms.
//!
//! Each sample re-registers a popular seeded record with a new version and
//! then polls, every millisecond and concurrently, the primary for the
//! receipt and the gateway for the record; the delay is the time between
//! the two first sightings (0 when the gateway was first).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::json;

use shared::topology::WRITE_ROUTING_KEY;

use crate::BenchError;
use crate::env::{Scratch, Target};
use crate::read_bench::{seeded_addon, seeded_hash};
use crate::reads::{self, Shape};

/// The seeded keys the samples rewrite: the most popular ones, which the
/// gateway is sure to have cached.
pub const REWRITTEN: u64 = 100;

/// Longest one sample may wait for its receipt and its new value.
const SAMPLE_LIMIT: Duration = Duration::from_secs(5);

/// The run's settings.
#[derive(Debug, Clone, Copy)]
pub struct FreshnessRun {
    /// Sampled writes.
    pub samples: usize,
    /// Records seeded (the samples rewrite the [`REWRITTEN`] most popular).
    pub records: u64,
    /// Background read traffic (its `duration` is stretched to the run).
    pub reads: Shape,
}

/// What it measured.
#[derive(Debug)]
pub struct Freshness {
    /// Receipt-to-served delays, µs.
    pub delay_us: Histogram<u64>,
    /// Samples whose new value never showed within [`SAMPLE_LIMIT`].
    pub stale: usize,
    /// The background reads.
    pub reads: reads::Measured,
}

impl Freshness {
    /// A delay percentile in ms.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.delay_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Starts a scratch stack (one worker, one gateway), seeds it, and
/// measures.
pub async fn run(target: &Target, run: FreshnessRun) -> Result<Freshness, BenchError> {
    let scratch = Scratch::create(target).await?;
    let result = measure(target, &scratch, run).await;
    scratch.drop().await?;
    result
}

async fn measure(
    target: &Target,
    scratch: &Scratch,
    run: FreshnessRun,
) -> Result<Freshness, BenchError> {
    crate::read_bench::seed(&scratch.pool, run.records).await?;
    let _worker = scratch.start_worker(target, &["run".to_string()])?;
    let port = crate::read_bench::free_port()?;
    let _gateway = crate::read_bench::start_gateway(target, scratch, port, 1_000_000)?;
    crate::read_bench::wait_listening(port).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Give the gateway its subscription before the first sample.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let reads = Shape {
        duration: SAMPLE_LIMIT * u32::try_from(run.samples).unwrap_or(u32::MAX),
        ..run.reads
    };
    let stop_reads = Arc::new(AtomicBool::new(false));
    let background = tokio::spawn(reads::drive_until(addr, reads, 0xf2e5, stop_reads.clone()));

    let client = probe::Client::default();
    let mut delay_us = Histogram::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| BenchError::Check(format!("histogram: {e}")))?;
    let mut stale = 0;
    for sample in 0..run.samples {
        let key = (sample as u64 % REWRITTEN) + 1;
        let version = format!("2.{sample}");
        let write_id = uuid::Uuid::new_v4().to_string();
        publish(scratch, &write_id, key, &version).await?;
        match sightings(scratch, &client, addr, &write_id, key, &version).await? {
            Some(delay) => delay_us
                .saturating_record(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX).max(1)),
            None => stale += 1,
        }
    }
    stop_reads.store(true, Ordering::Relaxed);
    let reads = background
        .await
        .map_err(|e| BenchError::Check(format!("background reads: {e}")))??;
    Ok(Freshness {
        delay_us,
        stale,
        reads,
    })
}

/// Re-registers seeded record `key` with `version`, as AMO would.
async fn publish(
    scratch: &Scratch,
    write_id: &str,
    key: u64,
    version: &str,
) -> Result<(), BenchError> {
    let issued_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let body = json!({"v": 1, "write_id": write_id, "issued_at": issued_at,
        "ops": [{"op": "register", "addon_id": seeded_addon(key), "sha256": seeded_hash(key),
                 "version": version}]});
    scratch
        .channel
        .basic_publish(
            scratch.topology.writes_exchange.as_str().into(),
            WRITE_ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            body.to_string().as_bytes(),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(write_id.into()),
        )
        .await?
        .await?;
    Ok(())
}

/// Polls the receipt and the gateway until both were seen; the delay from
/// the first sighting of the receipt to the first of the new value.
async fn sightings(
    scratch: &Scratch,
    client: &probe::Client,
    addr: SocketAddr,
    write_id: &str,
    key: u64,
    version: &str,
) -> Result<Option<Duration>, BenchError> {
    let started = Instant::now();
    let (mut receipt_at, mut served_at) = (None, None);
    while started.elapsed() < SAMPLE_LIMIT {
        let (receipt, served) = tokio::join!(
            async {
                match receipt_at {
                    Some(_) => Ok(true),
                    None => {
                        sqlx::query_scalar::<_, i32>("SELECT 1 FROM receipts WHERE write_id = $1")
                            .bind(write_id)
                            .fetch_optional(&scratch.pool)
                            .await
                            .map(|row| row.is_some())
                    }
                }
            },
            async {
                match served_at {
                    Some(_) => true,
                    None => client.serves(addr, key, version).await,
                }
            }
        );
        let now = Instant::now();
        if receipt? && receipt_at.is_none() {
            receipt_at = Some(now);
        }
        if served && served_at.is_none() {
            served_at = Some(now);
        }
        if let (Some(receipt), Some(served)) = (receipt_at, served_at) {
            return Ok(Some(served.saturating_duration_since(receipt)));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(None)
}

/// A keep-alive HTTP/1.1 client of its own, so that polling doesn't queue
/// behind the background traffic's connections.
mod probe {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper::Request;
    use hyper_util::rt::TokioIo;
    use serde_json::Value;
    use tokio::sync::Mutex;

    use crate::read_bench::{seeded_addon, seeded_hash};

    type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

    /// One connection, opened on first use and again after an error.
    #[derive(Default)]
    pub struct Client {
        sender: Mutex<Option<Sender>>,
    }

    impl Client {
        /// Whether the gateway now answers seeded record `key` with `version`.
        pub async fn serves(&self, addr: SocketAddr, key: u64, version: &str) -> bool {
            let mut sender = self.sender.lock().await;
            if sender.is_none() {
                *sender = connect(addr).await;
            }
            let Some(open) = sender.as_mut() else {
                return false;
            };
            let uri = format!(
                "/v1/addons/{}/hashes/{}",
                seeded_addon(key).replace('@', "%40"),
                seeded_hash(key)
            );
            let request = Request::get(uri)
                .header("host", "127.0.0.1")
                .body(Empty::new());
            let Ok(request) = request else { return false };
            let answer = async {
                open.ready().await?;
                let response = open.send_request(request).await?;
                response.into_body().collect().await.map(|b| b.to_bytes())
            };
            match answer.await {
                Ok(body) => serde_json::from_slice::<Value>(&body)
                    .is_ok_and(|record| record["version"] == version),
                Err(_) => {
                    *sender = None;
                    false
                }
            }
        }
    }

    async fn connect(addr: SocketAddr) -> Option<Sender> {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        Some(sender)
    }
}

#[derive(Debug, clap::Args)]
pub struct FreshnessArgs {
    #[command(flatten)]
    pub target: crate::env::TargetArgs,
    /// Sampled writes.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Records seeded.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Background read connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Background reads per second (open loop).
    #[arg(long, default_value_t = 5_000.0)]
    pub read_rate: f64,
    /// Longest delay that still passes, in ms (the contract's promise: 1 s).
    #[arg(long, default_value_t = 1_000)]
    pub max_delay_ms: u64,
}

pub async fn command(args: FreshnessArgs) -> Result<(), crate::BenchError> {
    let target = args.target.target();
    let reads = crate::reads::Shape {
        connections: args.connections.max(1),
        duration: Duration::from_secs(600),
        max_requests: u64::MAX,
        rate: Some(args.read_rate),
        zipf: 1.0,
        records: args.records,
        unknown_share: 0.05,
        bulk_share: 0.02,
        listing_share: 0.01,
        rewritten: REWRITTEN,
    };
    let run = FreshnessRun {
        samples: args.samples.max(1),
        records: args.records,
        reads,
    };
    let measured = self::run(&target, run).await?;
    crate::report::print_freshness(&measured);
    let bad = measured.stale as u64 + measured.reads.wrong + measured.reads.failed;
    if bad > 0 || measured.delay_us.max() >= args.max_delay_ms * 1000 {
        return Err(crate::BenchError::Check(format!(
            "{} samples never served, {} wrong or failed reads, max delay {} ms (limit {} ms)",
            measured.stale,
            measured.reads.wrong + measured.reads.failed,
            measured.delay_us.max() / 1000,
            args.max_delay_ms
        )));
    }
    Ok(())
}
