//! The steady load kept running through every fault: writes published as
//! AMO does (persistent, `message_id` = `write_id`, mandatory, confirms
//! awaited) at a fixed rate, by a publisher that, like AMO, survives a
//! broker outage by reconnecting and publishing again whatever the broker
//! never confirmed (a write may then arrive twice: the contract makes that
//! harmless); and Firefox-shaped reads on the gateways ([`crate::traffic`],
//! open loop), measured in windows. Also the probes: one write at a time,
//! timed from its receipt to the gateway serving it.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde_json::json;
use sqlx::PgPool;
use tokio::task::JoinHandle;

use tokio_util::sync::CancellationToken;

use shared::broker::{AmqpUrls, Reconnect};
use shared::settings::Secret;
use shared::topology::WRITE_ROUTING_KEY;

use crate::BenchError;
use crate::mix::Plan;
use crate::publish::Outgoing;
use crate::reads::{self, Measured, Shape};

/// Most publishes awaiting their confirm at once.
const WINDOW: usize = 500;
/// Longest a confirm may take before the publish counts as failed (and is
/// published again on a new connection).
pub const CONFIRM_LIMIT: Duration = Duration::from_secs(15);
/// How often a publisher waiting for the broker looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// What a publisher did.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// `message_id`s the broker confirmed.
    pub confirmed: HashSet<String>,
    /// Publishes attempted (first tries and retries).
    pub attempts: u64,
    /// Publishes made again after a broken connection, a nack or a return.
    pub retried: u64,
    /// Messages never confirmed before the deadline.
    pub unconfirmed: u64,
    /// Publishes the broker nacked (e.g. a queue without its majority).
    pub nacked: u64,
    /// Publishes whose confirm did not come within the limit.
    pub confirm_timeouts: u64,
}

/// Publishes the whole `plan` to `exchange` on `urls` (one node's, or a
/// cluster's, comma-separated) at `rate` messages/s (or as fast as confirms
/// allow), retrying until `deadline` or `stop`.
pub fn spawn_publisher(
    urls: AmqpUrls,
    exchange: String,
    plan: Arc<Plan>,
    rate: Option<f64>,
    deadline: Instant,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Published> {
    tokio::spawn(async move { publish(urls, &exchange, &plan, rate, deadline, &stop).await })
}

async fn open(url: Secret) -> Result<(Connection, Channel), lapin::Error> {
    let conn = Connection::connect(url.expose(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((conn, channel))
}

/// A connection and confirm channel on the first node of `reconnect` that
/// takes one (waiting out the backoff between rounds), or `None` once
/// `deadline` passed or `stop` is set.
async fn open_any(
    reconnect: &mut Reconnect,
    deadline: Instant,
    stop: &AtomicBool,
) -> Option<(Connection, Channel)> {
    let token = CancellationToken::new();
    let watch = async {
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            tokio::time::sleep(STOP_POLL).await;
        }
        token.cancel();
    };
    tokio::select! {
        opened = reconnect.connect("loadtest publisher", &token, open) => opened,
        () = watch => None,
    }
}

async fn publish(
    urls: AmqpUrls,
    exchange: &str,
    plan: &Plan,
    rate: Option<f64>,
    deadline: Instant,
    stop: &AtomicBool,
) -> Published {
    let messages: Vec<Outgoing> = plan.outgoing().collect();
    let mut done = Published::default();
    let mut retry: VecDeque<usize> = VecDeque::new();
    let mut next = 0;
    let started = Instant::now();
    let window = rate.map_or(WINDOW, |r| ((r / 10.0) as usize).clamp(1, WINDOW));
    let mut session: Option<(Connection, Channel)> = None;
    let mut reconnect = Reconnect::new(urls);
    let mut confirmed = vec![false; messages.len()];
    while (next < messages.len() || !retry.is_empty())
        && Instant::now() < deadline
        && !stop.load(Ordering::Relaxed)
    {
        if session.is_none() {
            session = open_any(&mut reconnect, deadline, stop).await;
            continue;
        }
        let Some((_, channel)) = session.as_ref() else {
            continue;
        };
        let mut pending = Vec::with_capacity(window);
        let mut broken = false;
        while pending.len() < window && !stop.load(Ordering::Relaxed) {
            let i = match retry.pop_front() {
                Some(i) => {
                    done.retried += 1;
                    i
                }
                None if next < messages.len() => {
                    if let Some(rate) = rate {
                        let due = started + Duration::from_secs_f64(next as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    next += 1;
                    next - 1
                }
                None => break,
            };
            let m = &messages[i];
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(m.message_id.as_str().into());
            done.attempts += 1;
            match channel
                .basic_publish(
                    exchange.into(),
                    WRITE_ROUTING_KEY.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &m.body,
                    properties,
                )
                .await
            {
                Ok(confirm) => pending.push((i, confirm)),
                Err(_) => {
                    retry.push_back(i);
                    broken = true;
                    break;
                }
            }
        }
        let mut acked = false;
        for (i, confirm) in pending {
            match tokio::time::timeout(CONFIRM_LIMIT, confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => {
                    confirmed[i] = true;
                    acked = true;
                }
                outcome => {
                    match outcome {
                        Ok(Ok(Confirmation::Nack(_))) => done.nacked += 1,
                        Err(_) => done.confirm_timeouts += 1,
                        _ => {}
                    }
                    retry.push_back(i);
                    broken = true;
                }
            }
        }
        if broken {
            if let Some((conn, _)) = session.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(0, "retry".into()))
                    .await;
            }
            // Another node next: this one may have lost the queue's leader.
            let token = CancellationToken::new();
            reconnect.lost(acked, &token).await;
        }
    }
    if let Some((conn, _)) = session.take() {
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close(0, "done".into())).await;
    }
    for (i, m) in messages.iter().enumerate() {
        if confirmed[i] {
            done.confirmed.insert(m.message_id.clone());
        }
    }
    let wanted: HashSet<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    done.unconfirmed = wanted
        .iter()
        .filter(|id| !done.confirmed.contains(**id))
        .count() as u64;
    done
}

/// Firefox-shaped reads on every gateway (the rate split evenly), measured
/// from [`ReadWindow::start`] to [`ReadWindow::finish`].
pub struct ReadWindow {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Result<Measured, BenchError>>>,
}

impl ReadWindow {
    /// Starts driving `addrs` at `rate` requests/s in all.
    pub fn start(addrs: &[SocketAddr], rate: f64, records: u64, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let per = rate / addrs.len().max(1) as f64;
        let tasks = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let shape = Shape {
                    connections: 8,
                    // Ended by `stop`; the bound only keeps a forgotten
                    // window from running for ever.
                    duration: Duration::from_secs(3_600),
                    max_requests: u64::MAX,
                    rate: Some(per.max(1.0)),
                    zipf: 1.0,
                    records,
                    unknown_share: 0.05,
                    bulk_share: 0.02,
                    listing_share: 0.01,
                    rewritten: 0,
                };
                tokio::spawn(reads::drive_until(
                    *addr,
                    shape,
                    seed.wrapping_add(i as u64),
                    stop.clone(),
                ))
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the reads and merges what every gateway's share measured.
    pub async fn finish(self) -> Result<Measured, BenchError> {
        self.stop.store(true, Ordering::Relaxed);
        let mut total: Option<Measured> = None;
        for task in self.tasks {
            let part = task
                .await
                .map_err(|e| BenchError::Check(format!("reads: {e}")))??;
            total = Some(match total {
                None => part,
                Some(mut t) => {
                    t.requests += part.requests;
                    t.wrong += part.wrong;
                    t.failed += part.failed;
                    t.elapsed = t.elapsed.max(part.elapsed);
                    t.latency_us
                        .add(&part.latency_us)
                        .map_err(|e| BenchError::Check(format!("histogram: {e}")))?;
                    t.first_wrong = t.first_wrong.or(part.first_wrong);
                    t
                }
            });
        }
        total.ok_or_else(|| BenchError::Check("no gateway to read from".into()))
    }
}

/// One GET on a fresh connection; `None` when there was no answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, Bytes)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header("host", "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// A pair of the runner's own (never in a plan), re-registered with new
/// versions to time recovery and freshness.
pub struct Probe {
    addon: String,
    sha: String,
    reconnect: Reconnect,
    exchange: String,
    n: u32,
}

impl Probe {
    /// A new probe pair for `scenario`.
    pub fn new(scenario: &str, amo_urls: &AmqpUrls, exchange: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            addon: format!("chaos-probe-{scenario}@loadtest"),
            sha: format!("{id}{id}"),
            reconnect: Reconnect::new(amo_urls.clone()),
            exchange: exchange.to_string(),
            n: 0,
        }
    }

    /// Publishes one register of the probe pair with a new version (until
    /// confirmed, or `deadline`); returns its write id and version.
    pub async fn publish(&mut self, deadline: Instant) -> Result<(String, String), BenchError> {
        self.n += 1;
        let write_id = format!("chaos-probe-{}", uuid::Uuid::new_v4().simple());
        let version = format!("9.{}", self.n);
        let issued_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let body = json!({"v": 1, "write_id": write_id, "issued_at": issued_at,
            "ops": [{"op": "register", "addon_id": self.addon, "sha256": self.sha,
                     "version": version}]});
        let never = AtomicBool::new(false);
        loop {
            let Some((conn, channel)) = open_any(&mut self.reconnect, deadline, &never).await
            else {
                return Err(BenchError::Timeout("probe write never confirmed".into()));
            };
            let sent = async {
                let confirm = channel
                    .basic_publish(
                        self.exchange.as_str().into(),
                        WRITE_ROUTING_KEY.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        body.to_string().as_bytes(),
                        BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_content_type("application/json".into())
                            .with_message_id(write_id.as_str().into()),
                    )
                    .await?
                    .await?;
                Ok::<bool, lapin::Error>(matches!(confirm, Confirmation::Ack(None)))
            };
            let sent = tokio::time::timeout(Duration::from_secs(5), sent).await;
            let _ =
                tokio::time::timeout(Duration::from_secs(1), conn.close(0, "probe".into())).await;
            if let Ok(Ok(true)) = sent {
                return Ok((write_id, version));
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout("probe write never confirmed".into()));
            }
            self.reconnect.lost(false, &CancellationToken::new()).await;
        }
    }

    /// Whether the gateway at `addr` serves the probe with `version`.
    pub async fn served(&self, addr: SocketAddr, version: &str) -> bool {
        let path = format!(
            "/v1/addons/{}/hashes/{}",
            self.addon.replace('@', "%40"),
            self.sha
        );
        match http_get(addr, &path).await {
            Some((200, body)) => serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|r| r["version"] == version),
            _ => false,
        }
    }

    /// Polls (every ms) the receipt on the primary and the gateway until
    /// both show the write; answers when each was first seen, from `since`.
    pub async fn sightings(
        &self,
        owner: &PgPool,
        addr: SocketAddr,
        write_id: &str,
        version: &str,
        since: Instant,
        limit: Duration,
    ) -> Option<(Duration, Duration)> {
        let (mut receipt_at, mut served_at) = (None, None);
        while since.elapsed() < limit {
            let (receipt, served) = tokio::join!(
                async {
                    receipt_at.is_some()
                        || sqlx::query_scalar::<_, String>(
                            "SELECT status FROM receipts WHERE write_id = $1",
                        )
                        .bind(write_id)
                        .fetch_optional(owner)
                        .await
                        .ok()
                        .flatten()
                        .is_some()
                },
                async { served_at.is_some() || self.served(addr, version).await }
            );
            let now = since.elapsed();
            if receipt && receipt_at.is_none() {
                receipt_at = Some(now);
            }
            if served && served_at.is_none() {
                served_at = Some(now);
            }
            if let (Some(r), Some(s)) = (receipt_at, served_at) {
                return Some((r, s));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        None
    }
}
