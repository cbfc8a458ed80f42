//! Firefox-shaped read traffic on the gateway, every answer checked.
//!
//! N keep-alive HTTP/1.1 connections ask for single records with
//! Zipf-distributed keys (a share of them unknown: 404), bulk lookups of 100
//! items and listings, against records seeded by [`crate::reads`]'s scheme,
//! whose every answer is known in advance. Closed loop (each connection
//! sends as soon as it has its answer) or open loop at a fixed total rate:
//! there, latency counts from the *intended* send time, so a stall delays
//! every request scheduled behind it instead of hiding them (coordinated
//! omission). Latencies go into an HdrHistogram (µs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::BenchError;
use crate::read_bench::{SEEDED_AT, seeded_addon, seeded_hash};

/// Items in one bulk lookup.
const BULK_ITEMS: usize = 100;
/// Highest latency the histogram holds, in µs (longer ones are clamped).
const MAX_LATENCY_US: u64 = 60_000_000;

/// The traffic's shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Keep-alive connections.
    pub connections: usize,
    /// Longest the run lasts.
    pub duration: Duration,
    /// Most requests sent in all.
    pub max_requests: u64,
    /// Total requests per second (open loop); `None`: as fast as answered.
    pub rate: Option<f64>,
    /// Zipf exponent of key popularity (0: uniform; ~1: Firefox-like).
    pub zipf: f64,
    /// Seeded records, keys 1..=records.
    pub records: u64,
    /// Share of single lookups for keys that were never written (404).
    pub unknown_share: f64,
    /// Share of requests that are bulk lookups of [`BULK_ITEMS`].
    pub bulk_share: f64,
    /// Share of requests that are listings.
    pub listing_share: f64,
    /// Keys 1..=this are being rewritten meanwhile: their `version` and
    /// `updated_at` may differ from the seed's.
    pub rewritten: u64,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Requests answered (right or wrong).
    pub requests: u64,
    /// Answers whose status or body was not what was seeded.
    pub wrong: u64,
    /// Requests that got no answer (connection errors).
    pub failed: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency in µs, from the intended send time in open loop.
    pub latency_us: Histogram<u64>,
    /// The offered rate, if open loop.
    pub offered: Option<f64>,
    /// First wrong answer seen, for the report.
    pub first_wrong: Option<String>,
}

impl Measured {
    /// Answers per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency percentile in ms.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Key popularity: the cumulative Zipf weights of keys 1..=n.
struct Popularity {
    cdf: Vec<f64>,
}

impl Popularity {
    fn new(n: u64, s: f64) -> Self {
        let mut total = 0.0;
        let cdf = (1..=n)
            .map(|k| {
                total += 1.0 / (k as f64).powf(s);
                total
            })
            .collect();
        Self { cdf }
    }

    /// Key for a uniform draw `u` in [0, 1): the most popular is key 1.
    fn key(&self, u: f64) -> u64 {
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let i = self.cdf.partition_point(|&c| c < u * total);
        i as u64 + 1
    }
}

/// splitmix64: a fast, seedable generator; a load generator needs speed and
/// repeatability, not cryptographic quality.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One request and what its answer must be.
struct Ask {
    request: Request<Full<Bytes>>,
    expect: Expect,
}

enum Expect {
    Record(u64),
    Unknown,
    Bulk(Vec<Option<u64>>),
    Listing(u64),
}

/// The seeded record `i` as the gateway answers it.
fn record_json(i: u64) -> Value {
    json!({"addon_id": seeded_addon(i), "sha256": seeded_hash(i), "status": "registered",
           "version": "1.0", "registered_at": SEEDED_AT, "updated_at": SEEDED_AT})
}

fn percent_encode(id: &str) -> String {
    id.replace('@', "%40")
}

impl Shape {
    fn ask(&self, popularity: &Popularity, draws: &mut Draws) -> Ask {
        let u = draws.unit();
        let builder = Request::builder().header("host", "127.0.0.1");
        if u < self.bulk_share {
            let keys: Vec<Option<u64>> = (0..BULK_ITEMS)
                .map(|_| (draws.unit() >= self.unknown_share).then(|| popularity.key(draws.unit())))
                .collect();
            let items: Vec<Value> = keys
                .iter()
                .map(|k| match k {
                    Some(i) => json!({"addon_id": seeded_addon(*i), "sha256": seeded_hash(*i)}),
                    None => {
                        json!({"addon_id": "never@written", "sha256": seeded_hash(draws.next())})
                    }
                })
                .collect();
            let body = json!({ "items": items }).to_string();
            let request = builder
                .method("POST")
                .uri("/v1/lookups")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)));
            return Ask {
                request: request.unwrap_or_default(),
                expect: Expect::Bulk(keys),
            };
        }
        if u < self.bulk_share + self.listing_share {
            let i = popularity.key(draws.unit());
            let uri = format!(
                "/v1/addons/{}/hashes?limit=10",
                percent_encode(&seeded_addon(i))
            );
            return Ask {
                request: builder.uri(uri).body(Full::default()).unwrap_or_default(),
                expect: Expect::Listing(i),
            };
        }
        let (uri, expect) = if draws.unit() < self.unknown_share {
            let hash = format!("{:016x}", draws.next()).repeat(4);
            (
                format!("/v1/addons/never%40written/hashes/{hash}"),
                Expect::Unknown,
            )
        } else {
            let i = popularity.key(draws.unit());
            (
                format!(
                    "/v1/addons/{}/hashes/{}",
                    percent_encode(&seeded_addon(i)),
                    seeded_hash(i)
                ),
                Expect::Record(i),
            )
        };
        Ask {
            request: builder.uri(uri).body(Full::default()).unwrap_or_default(),
            expect,
        }
    }
}

/// Whether `got` is seeded record `i`, or a rewrite of it when `i` is
/// among the `rewritten` keys.
fn is_record(got: &Value, i: u64, rewritten: u64) -> bool {
    let seeded = record_json(i);
    if i > rewritten {
        return *got == seeded;
    }
    ["addon_id", "sha256", "status", "registered_at"]
        .iter()
        .all(|field| got[field] == seeded[field])
        && got["version"].is_string()
}

/// Whether an answer is the one the seed implies; `Err` says what is wrong.
fn check(expect: &Expect, status: u16, body: &[u8], rewritten: u64) -> Result<(), String> {
    let json = || serde_json::from_slice::<Value>(body).map_err(|e| format!("not JSON: {e}"));
    match expect {
        Expect::Record(i) => {
            if status != 200 {
                return Err(format!("record {i}: status {status}"));
            }
            let got = json()?;
            is_record(&got, *i, rewritten)
                .then_some(())
                .ok_or_else(|| format!("record {i}: {got}"))
        }
        Expect::Unknown => (status == 404)
            .then_some(())
            .ok_or_else(|| format!("unknown key: status {status}")),
        Expect::Bulk(keys) => {
            let got = json()?;
            let results = got["results"].as_array().cloned().unwrap_or_default();
            if status != 200 || results.len() != keys.len() {
                return Err(format!("bulk: status {status}, {} results", results.len()));
            }
            for (key, result) in keys.iter().zip(&results) {
                let right = match key {
                    Some(i) => is_record(result, *i, rewritten),
                    None => result["status"] == "unknown",
                };
                if !right {
                    return Err(format!("bulk item {key:?}: {result}"));
                }
            }
            Ok(())
        }
        Expect::Listing(i) => {
            let got = json()?;
            let items = got["items"].as_array().cloned().unwrap_or_default();
            let addon = seeded_addon(*i);
            if status != 200 || items.is_empty() || items.iter().any(|r| r["addon_id"] != addon) {
                return Err(format!("listing of {addon}: status {status}, {got}"));
            }
            Ok(())
        }
    }
}

/// Drives the gateway at `addr` with `shape`; loopback only.
pub async fn drive(addr: SocketAddr, shape: Shape, seed: u64) -> Result<Measured, BenchError> {
    drive_until(addr, shape, seed, Arc::new(AtomicBool::new(false))).await
}

/// [`drive`], ending early once `stop` is set.
pub async fn drive_until(
    addr: SocketAddr,
    shape: Shape,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Result<Measured, BenchError> {
    drive_counted(addr, shape, seed, stop, Arc::default()).await
}

/// [`drive_until`], adding every answer to `answered` as it arrives, so that
/// a sampler can plot throughput over time.
pub async fn drive_counted(
    addr: SocketAddr,
    shape: Shape,
    seed: u64,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> Result<Measured, BenchError> {
    if !addr.ip().is_loopback() {
        return Err(BenchError::Check(format!(
            "{addr} is not a loopback address"
        )));
    }
    let popularity = Arc::new(Popularity::new(shape.records.max(1), shape.zipf));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + shape.duration;
    let per_connection_gap = shape
        .rate
        .map(|rate| Duration::from_secs_f64(shape.connections as f64 / rate.max(0.001)));
    let tasks: Vec<_> = (0..shape.connections)
        .map(|c| {
            let (popularity, sent, stop) = (popularity.clone(), sent.clone(), stop.clone());
            let answered = answered.clone();
            tokio::spawn(async move {
                connection(
                    addr,
                    shape,
                    &popularity,
                    Counters {
                        sent: &sent,
                        answered: &answered,
                    },
                    &stop,
                    Draws(seed ^ (c as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)),
                    started
                        + per_connection_gap.map_or(Duration::ZERO, |gap| {
                            gap.mul_f64(c as f64 / shape.connections as f64)
                        }),
                    per_connection_gap,
                    deadline,
                )
                .await
            })
        })
        .collect();
    let mut total = new_histogram()?;
    let (mut requests, mut wrong, mut failed, mut first_wrong) = (0, 0, 0, None);
    for task in tasks {
        let part = task
            .await
            .map_err(|e| BenchError::Check(format!("a connection task failed: {e}")))??;
        total
            .add(&part.latency_us)
            .map_err(|e| BenchError::Check(format!("histogram: {e}")))?;
        requests += part.requests;
        wrong += part.wrong;
        failed += part.failed;
        first_wrong = first_wrong.or(part.first_wrong);
    }
    Ok(Measured {
        requests,
        wrong,
        failed,
        elapsed: started.elapsed(),
        latency_us: total,
        offered: shape.rate,
        first_wrong,
    })
}

fn new_histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| BenchError::Check(format!("histogram: {e}")))
}

/// Requests started (bounded by `max_requests`) and answers received, shared
/// by all connections.
#[derive(Clone, Copy)]
struct Counters<'a> {
    sent: &'a AtomicU64,
    answered: &'a AtomicU64,
}

/// One keep-alive connection's loop; reconnects after an error.
#[allow(clippy::too_many_arguments)]
async fn connection(
    addr: SocketAddr,
    shape: Shape,
    popularity: &Popularity,
    counters: Counters<'_>,
    stop: &AtomicBool,
    mut draws: Draws,
    first_send: Instant,
    gap: Option<Duration>,
    deadline: Instant,
) -> Result<Measured, BenchError> {
    let mut part = Measured {
        requests: 0,
        wrong: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latency_us: new_histogram()?,
        offered: shape.rate,
        first_wrong: None,
    };
    let mut sender = None;
    let mut intended = first_send;
    loop {
        // Open loop: this request's slot, kept even when the last answer
        // came late; closed loop: now.
        let from = match gap {
            Some(gap) => {
                let slot = intended;
                intended += gap;
                tokio::time::sleep_until(slot.into()).await;
                slot
            }
            None => Instant::now(),
        };
        if stop.load(Ordering::Relaxed)
            || Instant::now() >= deadline
            || counters.sent.fetch_add(1, Ordering::Relaxed) >= shape.max_requests
        {
            return Ok(part);
        }
        let ask = shape.ask(popularity, &mut draws);
        if sender.is_none() {
            sender = connect(addr).await.ok();
        }
        let Some(open) = sender.as_mut() else {
            part.failed += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        match exchange(open, ask.request).await {
            Ok((status, body)) => {
                let latency = u64::try_from(from.elapsed().as_micros()).unwrap_or(u64::MAX);
                part.latency_us.saturating_record(latency.max(1));
                part.requests += 1;
                counters.answered.fetch_add(1, Ordering::Relaxed);
                if let Err(what) = check(&ask.expect, status, &body, shape.rewritten) {
                    part.wrong += 1;
                    part.first_wrong.get_or_insert(what);
                }
            }
            Err(_) => {
                part.failed += 1;
                sender = None;
            }
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, BenchError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| BenchError::Process(format!("connect {addr}"), e))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| BenchError::Check(format!("HTTP handshake: {e}")))?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn exchange(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
) -> Result<(u16, Bytes), hyper::Error> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// One request on a fresh connection: `GET path`, or `POST path` with a JSON
/// body. For set-up and scraping, not for measuring.
pub async fn request(
    addr: SocketAddr,
    path: &str,
    json_body: Option<String>,
) -> Result<(u16, Bytes), BenchError> {
    let mut sender = connect(addr).await?;
    let builder = Request::builder().header("host", "127.0.0.1").uri(path);
    let request = match json_body {
        Some(body) => builder
            .method("POST")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body))),
        None => builder.body(Full::default()),
    }
    .map_err(|e| BenchError::Check(format!("request {path}: {e}")))?;
    exchange(&mut sender, request)
        .await
        .map_err(|e| BenchError::Check(format!("{path} on {addr}: {e}")))
}

/// Asks for every seeded record `1..=records` once, over `connections`
/// keep-alive connections: fills a gateway's cache (single lookups fill it;
/// bulk lookups only read it).
pub async fn fill(addr: SocketAddr, records: u64, connections: u64) -> Result<(), BenchError> {
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            tokio::spawn(async move {
                let mut sender = connect(addr).await?;
                for i in (1 + c..=records).step_by(connections as usize) {
                    let uri = format!(
                        "/v1/addons/{}/hashes/{}",
                        percent_encode(&seeded_addon(i)),
                        seeded_hash(i)
                    );
                    let request = Request::builder()
                        .uri(uri)
                        .header("host", "127.0.0.1")
                        .body(Full::default())
                        .map_err(|e| BenchError::Check(format!("fill request: {e}")))?;
                    let (status, _) = exchange(&mut sender, request)
                        .await
                        .map_err(|e| BenchError::Check(format!("fill: {e}")))?;
                    if status != 200 {
                        return Err(BenchError::Check(format!("fill: record {i} got {status}")));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|e| BenchError::Check(format!("a fill task failed: {e}")))??;
    }
    Ok(())
}

/// The `reads` command's settings.
#[derive(Debug, Clone)]
pub struct ReadsRun {
    /// The traffic; `rate` is ignored (the run picks its rates).
    pub shape: Shape,
    /// Open-loop rates, as shares of the closed-loop throughput.
    pub open_loop_shares: &'static [f64],
    /// Cached entries of the gateway (0: cache off).
    pub cache_entries: u64,
    /// Generator seed.
    pub seed: u64,
    /// Every answer of every measurement (warm-up included) is added here.
    pub answered: Arc<AtomicU64>,
}

/// Seeds a scratch database, starts a release gateway on it, and drives it
/// closed loop, then open loop at shares of the closed-loop throughput.
pub async fn run(target: &crate::env::Target, run: ReadsRun) -> Result<Vec<Measured>, BenchError> {
    let scratch = crate::env::Scratch::create(target).await?;
    let result = measure(target, &scratch, run).await;
    scratch.drop().await?;
    result
}

async fn measure(
    target: &crate::env::Target,
    scratch: &crate::env::Scratch,
    run: ReadsRun,
) -> Result<Vec<Measured>, BenchError> {
    crate::read_bench::seed(&scratch.pool, run.shape.records).await?;
    let port = crate::read_bench::free_port()?;
    let _gateway = crate::read_bench::start_gateway(target, scratch, port, run.cache_entries)?;
    crate::read_bench::wait_listening(port).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Warm up: connections, prepared statements and the hot keys' entries.
    let warm = Shape {
        duration: Duration::from_secs(2),
        rate: None,
        ..run.shape
    };
    let stop = Arc::new(AtomicBool::new(false));
    let drive = |shape, seed| drive_counted(addr, shape, seed, stop.clone(), run.answered.clone());
    drive(warm, run.seed).await?;
    let closed = drive(
        Shape {
            rate: None,
            ..run.shape
        },
        run.seed,
    )
    .await?;
    let mut runs = vec![closed];
    let capacity = runs[0].rps();
    for share in run.open_loop_shares {
        let open = Shape {
            rate: Some(capacity * share),
            ..run.shape
        };
        runs.push(drive(open, run.seed.wrapping_add(1)).await?);
    }
    Ok(runs)
}

#[derive(Debug, clap::Args)]
pub struct ReadsArgs {
    #[command(flatten)]
    pub target: crate::env::TargetArgs,
    /// Records seeded.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds per measurement (closed loop, then each open-loop rate).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Most requests per measurement.
    #[arg(long, default_value_t = 5_000_000)]
    pub max_requests: u64,
    /// Zipf exponent of key popularity (0: uniform).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Share of single lookups for never-written keys (404).
    #[arg(long, default_value_t = 0.05)]
    pub unknown_share: f64,
    /// Share of requests that are bulk lookups of 100 items.
    #[arg(long, default_value_t = 0.02)]
    pub bulk_share: f64,
    /// Share of requests that are listings.
    #[arg(long, default_value_t = 0.01)]
    pub listing_share: f64,
    /// Gateway cache entries (0: cache off).
    #[arg(long, default_value_t = 1_000_000)]
    pub cache_entries: u64,
}

pub async fn command(args: ReadsArgs) -> Result<(), crate::BenchError> {
    let target = args.target.target();
    let shape = Shape {
        connections: args.connections.max(1),
        duration: Duration::from_secs(args.seconds),
        max_requests: args.max_requests,
        rate: None,
        zipf: args.zipf,
        records: args.records,
        unknown_share: args.unknown_share,
        bulk_share: args.bulk_share,
        listing_share: args.listing_share,
        rewritten: 0,
    };
    let run = ReadsRun {
        shape,
        open_loop_shares: &[0.25, 0.5, 0.75, 0.9],
        cache_entries: args.cache_entries,
        seed: 0x5eed,
        answered: Default::default(),
    };
    let runs = self::run(&target, run).await?;
    crate::report::print_traffic(&runs);
    let wrong: u64 = runs.iter().map(|r| r.wrong + r.failed).sum();
    if wrong > 0 {
        let first = runs.iter().find_map(|r| r.first_wrong.clone());
        return Err(crate::BenchError::Check(format!(
            "{wrong} wrong or failed answers; first: {}",
            first.unwrap_or_else(|| "a connection failed".into())
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_the_first_keys_and_covers_all() {
        let popularity = Popularity::new(1000, 1.0);
        let mut draws = Draws(7);
        let mut counts = vec![0u32; 1001];
        for _ in 0..100_000 {
            counts[popularity.key(draws.unit()) as usize] += 1;
        }
        assert!(counts[1] > counts[2] && counts[2] > counts[10]);
        // Key 1 has 1/H(1000) ≈ 13% of the weight.
        assert!((12_000..15_000).contains(&counts[1]), "{}", counts[1]);
        let uniform = Popularity::new(10, 0.0);
        assert_eq!(uniform.key(0.0), 1);
        assert_eq!(uniform.key(0.999), 10);
    }

    #[test]
    fn answers_are_checked_against_the_seed() {
        let body = record_json(5).to_string();
        assert!(check(&Expect::Record(5), 200, body.as_bytes(), 0).is_ok());
        assert!(check(&Expect::Record(6), 200, body.as_bytes(), 0).is_err());
        assert!(check(&Expect::Record(5), 304, b"", 0).is_err());
        assert!(check(&Expect::Unknown, 404, b"{}", 0).is_ok());
        let bulk = json!({"results": [record_json(1), {"status": "unknown"}]}).to_string();
        assert!(check(&Expect::Bulk(vec![Some(1), None]), 200, bulk.as_bytes(), 0).is_ok());
        assert!(
            check(
                &Expect::Bulk(vec![Some(1), Some(2)]),
                200,
                bulk.as_bytes(),
                0
            )
            .is_err()
        );
        let mut rewrite = record_json(5);
        rewrite["version"] = json!("2.7");
        let rewrite = rewrite.to_string();
        assert!(check(&Expect::Record(5), 200, rewrite.as_bytes(), 0).is_err());
        assert!(check(&Expect::Record(5), 200, rewrite.as_bytes(), 10).is_ok());
    }
}
