//! A randomised, model-based test of the read path: the seeded write mix of
//! `harness::model` (issued_at a minute to five years old, duplicates) goes
//! through a real worker one write at a time, and after each receipt every
//! read endpoint of a real gateway must answer what the model says
//! (`shared::compaction` over `shared::record::fold`) within the promise,
//! while its replica's replay is paused for longer than any window the
//! gateway keeps and its broker connection is cut and comes back. Every pair
//! read so far is read again now and then: an older value must never come
//! back.
//!
//! Fixed seed in the test command; `ADDONREG_MODEL_SEED` and
//! `ADDONREG_MODEL_WRITES` repeat or lengthen it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use harness::broker::close_broker_connections;
use harness::model::{DEFAULT_SEED, env_or, plan};
use serde_json::{Value, json};

use shared::compaction::{PairHistory, Retention};
use shared::record::RecordState;
use shared::write::{Pair, WriteMessage};

use crate::helpers::{Gateway, ReplicaStack, eventually, get_json, start_gateway, wait_subscribed};

const PROMISE: Duration = Duration::from_secs(1);
/// Longer than every window the gateway keeps: entries' disconnected
/// lifetime, two heartbeats, the monitor's probes.
const PAUSE_AT_LEAST: Duration = Duration::from_secs(15);
const DEFAULT_WRITES: usize = 120;
const MOST_REPORTED: usize = 20;

/// The model's answer for a pair, as the gateway's JSON says it.
fn expected(pair: &Pair, state: &Option<RecordState>) -> Option<Value> {
    state.as_ref().map(|s| {
        json!({
            "addon_id": pair.addon_id.as_str(),
            "sha256": pair.sha256.to_string(),
            "status": s.status.as_str(),
            "version": s.version.as_ref().map(|v| v.as_str()),
            "registered_at": s.registered_at.map(|t| t.to_string()),
            "updated_at": s.updated_at.to_string(),
        })
    })
}

fn record_url(gw: &Gateway, pair: &Pair) -> String {
    format!(
        "{}/v1/addons/{}/hashes/{}",
        gw.public,
        pair.addon_id.as_str(),
        pair.sha256
    )
}

/// What the gateway answers for one pair: `Some(record)`, `None` for 404,
/// `Err(status)` otherwise.
async fn record(gw: &Gateway, pair: &Pair) -> Result<Option<Value>, u16> {
    match get_json(&record_url(gw, pair)).await {
        (200, body) => Ok(Some(body)),
        (404, _) => Ok(None),
        (status, _) => Err(status),
    }
}

async fn lookup(gw: &Gateway, pairs: &[&Pair]) -> Option<Vec<Value>> {
    let items: Vec<Value> = pairs
        .iter()
        .map(|p| json!({"addon_id": p.addon_id.as_str(), "sha256": p.sha256.to_string()}))
        .collect();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/lookups", gw.public))
        .json(&json!({ "items": items }))
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    body["results"].as_array().cloned()
}

async fn listing(gw: &Gateway, addon: &str) -> Option<Vec<Value>> {
    let (status, body) = get_json(&format!(
        "{}/v1/addons/{addon}/hashes?limit=1000",
        gw.public
    ))
    .await;
    (status == 200).then(|| body["items"].as_array().cloned().unwrap_or_default())
}

/// The model: each pair's history, offered each write's ops and compacted as
/// the worker does (one write per batch here, as the test waits for each).
#[derive(Default)]
struct Model {
    pairs: HashMap<Pair, PairHistory>,
}

impl Model {
    fn apply(&mut self, write: &WriteMessage) {
        let mut touched = BTreeSet::new();
        for (key, op) in write.keyed_ops() {
            let history = self.pairs.entry(op.pair.clone()).or_default();
            history.offer(key, op.action.clone());
            touched.insert(op.pair.clone());
        }
        for pair in touched {
            if let Some(h) = self.pairs.get_mut(&pair) {
                h.compact(Retention::DEFAULT);
            }
        }
    }

    fn answer(&self, pair: &Pair) -> Option<Value> {
        expected(pair, &self.pairs.get(pair).and_then(|h| h.state()))
    }

    /// The add-on's listing: its records, by digest.
    fn listing(&self, addon: &str) -> Vec<Value> {
        let by_sha: BTreeMap<String, Value> = self
            .pairs
            .iter()
            .filter(|(p, _)| p.addon_id.as_str() == addon)
            .filter_map(|(p, h)| Some((p.sha256.to_string(), expected(p, &h.state())?)))
            .collect();
        by_sha.into_values().collect()
    }
}

#[tokio::test]
async fn every_read_endpoint_follows_the_model_through_long_lag_and_reconnects() {
    let seed = env_or("ADDONREG_MODEL_SEED", DEFAULT_SEED);
    let count = env_or("ADDONREG_MODEL_WRITES", DEFAULT_WRITES);
    eprintln!("model: seed {seed} ({count} writes); ADDONREG_MODEL_SEED repeats it");
    let plan = plan(seed, count);
    let by_id: HashMap<&str, &WriteMessage> = plan
        .writes
        .iter()
        .map(|w| (w.write_id.as_str(), w))
        .collect();

    let mut stack = ReplicaStack::start().await;
    let replica_url = stack.replica_url();
    let ReplicaStack {
        db,
        replica,
        broker,
        amo,
        worker,
        ..
    } = &mut stack;
    // As every shipped deployment: the replica first, the primary last.
    let gw = start_gateway(
        &[replica_url, db.url_as("addonreg_gateway")],
        broker.prefix.as_str(),
    )
    .await;
    wait_subscribed(&gw).await;
    let primary = db.pool_as("addonreg_gateway").await;

    let mut model = Model::default();
    let mut stale: Vec<String> = Vec::new();
    let mut seen: BTreeSet<Pair> = BTreeSet::new();
    let n = plan.bodies.len();
    let mut paused_at = None;
    for (i, body) in plan.bodies.iter().enumerate() {
        // Enough to go on: stop early rather than wait out every promise.
        if stale.len() >= MOST_REPORTED {
            break;
        }
        if i == n / 4 {
            replica.pause_replay().await;
            paused_at = Some(Instant::now());
        }
        if i == n / 2 {
            assert!(
                close_broker_connections(broker.prefix.as_str()) > 0,
                "the gateway's and worker's connections are cut"
            );
        }
        if i == 3 * n / 4
            && let Some(at) = paused_at.take()
        {
            tokio::time::sleep(PAUSE_AT_LEAST.saturating_sub(at.elapsed())).await;
            replica.resume_replay().await;
        }
        let id = body["write_id"].as_str().expect("a write id");
        amo.publish(body).await;
        let write = by_id[id];
        model.apply(write);
        eventually(
            Duration::from_secs(30),
            "receipt on the primary",
            || async {
                sqlx::query("SELECT 1 FROM receipts WHERE write_id = $1")
                    .bind(id)
                    .fetch_optional(&primary)
                    .await
                    .unwrap()
                    .is_some()
            },
        )
        .await;
        let started = Instant::now();

        // Within the promise of the receipt: the receipt, each pair, one
        // lookup of all of them, and each add-on's listing.
        let pairs: Vec<&Pair> = write
            .ops
            .iter()
            .map(|o| &o.pair)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let addons: BTreeSet<&str> = pairs.iter().map(|p| p.addon_id.as_str()).collect();
        let mut fresh = false;
        while !fresh && started.elapsed() < PROMISE {
            fresh = get_json(&format!("{}/v1/writes/{id}", gw.public)).await.0 == 200;
            for pair in &pairs {
                fresh &= record(&gw, pair).await == Ok(model.answer(pair));
            }
            let results = lookup(&gw, &pairs).await.unwrap_or_default();
            fresh &= results.len() == pairs.len()
                && pairs
                    .iter()
                    .zip(&results)
                    .all(|(p, r)| match model.answer(p) {
                        Some(want) => *r == want,
                        None => r["status"] == "unknown",
                    });
            for addon in &addons {
                fresh &= listing(&gw, addon).await == Some(model.listing(addon));
            }
        }
        if !fresh {
            stale.push(format!(
                "write {i} ({id}): not every endpoint answered the model within {PROMISE:?}"
            ));
        }
        seen.extend(pairs.into_iter().cloned());

        // An older value never comes back: every pair read so far, now.
        if i % 10 == 9 {
            for pair in &seen {
                let got = record(&gw, pair).await;
                if got != Ok(model.answer(pair)) {
                    stale.push(format!(
                        "after write {i}: {pair:?} answered {got:?}, model {:?}",
                        model.answer(pair)
                    ));
                }
            }
        }
    }
    for pair in &seen {
        let got = record(&gw, pair).await;
        if got != Ok(model.answer(pair)) {
            stale.push(format!("at the end: {pair:?} answered {got:?}"));
        }
    }
    assert!(
        stale.is_empty(),
        "seed {seed}: {} answers older than the promise:\n{}",
        stale.len(),
        stale.join("\n")
    );
    worker.terminate();
}
