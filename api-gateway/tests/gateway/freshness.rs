//! The freshness promise: once a write's receipt exists, a gateway connected
//! to the broker stops serving the older value within 1 s, also when its
//! replica lags; and the cache that makes reads cheap doesn't break it.

use std::time::Duration;

use harness::{ProxyMode, TcpProxy, TestBroker, TestDb};
use serde_json::Value;

use crate::helpers::{
    Amo, Gateway, ReplicaStack, SeedRecord, eventually, get_json, insert_records, metric, register,
    start_gateway, start_gateway_with, start_worker, wait_receipt, wait_subscribed,
};

const ADDON: &str = "fresh@example.com";
const PROMISE: Duration = Duration::from_secs(1);
const HITS: &str = "addonreg_gateway_cache_hits_total";
const MISSES: &str = "addonreg_gateway_cache_misses_total";

fn sha(n: u32) -> String {
    format!("{n:064x}")
}

fn record_url(gw: &Gateway, sha256: &str) -> String {
    format!("{}/v1/addons/{ADDON}/hashes/{sha256}", gw.public)
}

/// GETs until the answer has `version` (or 404 for `None`), within `within`.
async fn serves(gw: &Gateway, sha256: &str, version: Option<&str>, within: Duration) -> Duration {
    let url = record_url(gw, sha256);
    eventually(within, &format!("serves {version:?}"), || async {
        let (status, body) = get_json(&url).await;
        match version {
            Some(v) => status == 200 && body["version"] == v,
            None => status == 404,
        }
    })
    .await
}

/// GETs until one is a cache hit.
async fn cached(gw: &Gateway, sha256: &str) {
    let url = record_url(gw, sha256);
    eventually(Duration::from_secs(5), "a cache hit", || async {
        let before = metric(gw, HITS).await;
        get_json(&url).await;
        metric(gw, HITS).await > before
    })
    .await;
}

#[tokio::test]
async fn a_write_evicts_the_cached_record_within_a_second_of_its_receipt() {
    let db = TestDb::new().await;
    let broker = TestBroker::new();
    let amo = Amo::connect(&broker).await;
    let mut worker = start_worker(db.url_as("addonreg_worker"), &broker);
    let gw = start_gateway(&[db.url_as("addonreg_gateway")], broker.prefix.as_str()).await;
    wait_subscribed(&gw).await;
    let primary = db.pool_as("addonreg_gateway").await;

    let id = register(&amo, ADDON, &sha(1), "1.0").await;
    wait_receipt(&primary, &id).await;
    serves(&gw, &sha(1), Some("1.0"), PROMISE).await;
    cached(&gw, &sha(1)).await;

    let id = register(&amo, ADDON, &sha(1), "2.0").await;
    wait_receipt(&primary, &id).await;
    let took = serves(&gw, &sha(1), Some("2.0"), PROMISE).await;
    eprintln!("new value served {took:?} after the receipt");
    worker.terminate();
}

#[tokio::test]
async fn a_register_evicts_a_cached_not_found() {
    let db = TestDb::new().await;
    let broker = TestBroker::new();
    let amo = Amo::connect(&broker).await;
    let mut worker = start_worker(db.url_as("addonreg_worker"), &broker);
    let gw = start_gateway(&[db.url_as("addonreg_gateway")], broker.prefix.as_str()).await;
    wait_subscribed(&gw).await;
    let primary = db.pool_as("addonreg_gateway").await;

    serves(&gw, &sha(2), None, PROMISE).await;
    cached(&gw, &sha(2)).await;
    let id = register(&amo, ADDON, &sha(2), "1.0").await;
    wait_receipt(&primary, &id).await;
    serves(&gw, &sha(2), Some("1.0"), PROMISE).await;
    worker.terminate();
}

/// The fenced read goes to a source that has replayed the write: here the
/// primary, listed as a second read URL through the same read-only role.
#[tokio::test]
async fn a_paused_replica_does_not_bring_the_old_value_back() {
    let mut stack = ReplicaStack::start().await;
    let replica_url = stack.replica_url();
    let ReplicaStack {
        cluster,
        db,
        replica,
        broker,
        amo,
        worker,
        ..
    } = &mut stack;
    let gw = start_gateway(
        &[replica_url, db.url_as("addonreg_gateway")],
        broker.prefix.as_str(),
    )
    .await;
    wait_subscribed(&gw).await;
    let primary = db.pool_as("addonreg_gateway").await;

    let id = register(amo, ADDON, &sha(3), "1.0").await;
    wait_receipt(&primary, &id).await;
    replica.catch_up_with(cluster).await;
    serves(&gw, &sha(3), Some("1.0"), PROMISE).await;
    cached(&gw, &sha(3)).await;

    replica.pause_replay().await;
    let id = register(amo, ADDON, &sha(3), "2.0").await;
    wait_receipt(&primary, &id).await;
    serves(&gw, &sha(3), Some("2.0"), PROMISE).await;
    // The lag shows on the metrics: the paused replica is behind the newest
    // event, the primary never is; and the event's delay was measured.
    let lag = |n: u32| format!("addonreg_gateway_replica_lag_bytes{{replica=\"replica-{n}\"}}");
    eventually(PROMISE * 5, "the paused replica's lag", || async {
        metric(&gw, &lag(1)).await > 0.0
    })
    .await;
    assert_eq!(metric(&gw, &lag(2)).await, 0.0);
    let delays = "addonreg_gateway_invalidation_delay_seconds_count";
    assert!(metric(&gw, delays).await >= 2.0, "one delay per event");
    assert!(metric(&gw, "addonreg_gateway_invalidation_delay_seconds_sum").await < 2.0 * 1.0);
    // Every later read, on every endpoint, whichever replica its
    // round-robin turn starts at.
    let new = serde_json::json!("2.0");
    let client = reqwest::Client::new();
    for _ in 0..6 {
        let (status, body) = get_json(&record_url(&gw, &sha(3))).await;
        assert_eq!((status, &body["version"]), (200, &new), "record");
        let listing = format!("{}/v1/addons/{ADDON}/hashes", gw.public);
        let (status, body) = get_json(&listing).await;
        assert_eq!(
            (status, &body["items"][0]["version"]),
            (200, &new),
            "listing"
        );
        let (status, body) = get_json(&format!("{}/v1/writes/{id}", gw.public)).await;
        assert_eq!(
            (status, &body["status"]),
            (200, &serde_json::json!("applied")),
            "receipt"
        );
        let body: serde_json::Value = client
            .post(format!("{}/v1/lookups", gw.public))
            .json(&serde_json::json!({"items": [{"addon_id": ADDON, "sha256": sha(3)}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["results"][0]["version"], new, "lookup");
    }
    replica.resume_replay().await;
    eventually(PROMISE * 5, "the replica caught up", || async {
        metric(&gw, &lag(1)).await == 0.0
    })
    .await;
    worker.terminate();
}

/// What every read endpoint answers about (`ADDON`, `sha256`) and write
/// `write_id`: per endpoint, its status and the version (or receipt status)
/// it shows.
async fn every_endpoint(
    gw: &Gateway,
    sha256: &str,
    write_id: &str,
) -> Vec<(&'static str, u16, Value)> {
    let (record, body) = get_json(&record_url(gw, sha256)).await;
    let record = (record, body["version"].clone());
    let (listing, body) = get_json(&format!("{}/v1/addons/{ADDON}/hashes", gw.public)).await;
    let listing = (listing, body["items"][0]["version"].clone());
    let (receipt, body) = get_json(&format!("{}/v1/writes/{write_id}", gw.public)).await;
    let receipt = (receipt, body["status"].clone());
    let response = reqwest::Client::new()
        .post(format!("{}/v1/lookups", gw.public))
        .json(&serde_json::json!({"items": [{"addon_id": ADDON, "sha256": sha256}]}))
        .send()
        .await
        .unwrap();
    let lookup = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let lookup = (lookup, body["results"][0]["version"].clone());
    vec![
        ("record", record.0, record.1),
        ("listing", listing.0, listing.1),
        ("receipt", receipt.0, receipt.1),
        ("lookup", lookup.0, lookup.1),
    ]
}

/// Fails unless every endpoint answers `version` (the receipt `applied`);
/// with `or_unavailable`, a 503 passes too (nothing fresh exists).
async fn serves_new_everywhere(
    gw: &Gateway,
    sha256: &str,
    write_id: &str,
    version: &str,
    or_unavailable: bool,
) {
    for (endpoint, status, shown) in every_endpoint(gw, sha256, write_id).await {
        let expected = match endpoint {
            "receipt" => "applied",
            _ => version,
        };
        let fresh = status == 200 && shown == expected;
        assert!(
            fresh || (or_unavailable && status == 503),
            "{endpoint}: {status} {shown} (expected {expected})"
        );
    }
}

/// Lag longer than any window the gateway keeps: with the replica paused
/// for longer than the cached entries live (and than fences used to), the
/// old value never comes back on any endpoint; the primary, listed last,
/// serves. The lag stays on the metrics however long it lasts.
#[tokio::test]
async fn lag_longer_than_every_window_never_serves_the_old_value() {
    let mut stack = ReplicaStack::start().await;
    let replica_url = stack.replica_url();
    let ReplicaStack {
        cluster,
        db,
        replica,
        broker,
        amo,
        worker,
        ..
    } = &mut stack;
    // Entries live a second, so that reads keep going to the sources.
    let gw = start_gateway_with(
        &[replica_url, db.url_as("addonreg_gateway")],
        broker.prefix.as_str(),
        &[
            ("ADDONREG_CACHE_TTL_FOUND_SECS", "1".into()),
            ("ADDONREG_CACHE_TTL_MISSING_SECS", "1".into()),
        ],
    )
    .await;
    wait_subscribed(&gw).await;
    let primary = db.pool_as("addonreg_gateway").await;

    let id = register(amo, ADDON, &sha(7), "1.0").await;
    wait_receipt(&primary, &id).await;
    replica.catch_up_with(cluster).await;
    serves(&gw, &sha(7), Some("1.0"), PROMISE).await;

    replica.pause_replay().await;
    let id = register(amo, ADDON, &sha(7), "2.0").await;
    wait_receipt(&primary, &id).await;
    serves(&gw, &sha(7), Some("2.0"), PROMISE).await;
    // Past the entries' lifetime, every poll of the fenced reads, the
    // failover windows, and what a fence window used to be.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        serves_new_everywhere(&gw, &sha(7), &id, "2.0", false).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lag = "addonreg_gateway_replica_lag_bytes{replica=\"replica-1\"}";
    assert!(
        metric(&gw, lag).await > 0.0,
        "the paused replica's lag shows"
    );
    replica.resume_replay().await;
    replica.catch_up_with(cluster).await;
    serves_new_everywhere(&gw, &sha(7), &id, "2.0", false).await;
    worker.terminate();
}

/// With only a paused replica nothing fresh exists: the gateway answers 503
/// rather than the old value, caches nothing, and the new value as soon as
/// replay resumes.
#[tokio::test]
async fn with_only_a_paused_replica_the_old_value_is_never_served() {
    let mut stack = ReplicaStack::start().await;
    let replica_url = stack.replica_url();
    let ReplicaStack {
        cluster,
        db,
        replica,
        broker,
        amo,
        worker,
        ..
    } = &mut stack;
    let gw = start_gateway(&[replica_url], broker.prefix.as_str()).await;
    wait_subscribed(&gw).await;
    let primary = db.pool_as("addonreg_gateway").await;

    let id = register(amo, ADDON, &sha(4), "1.0").await;
    wait_receipt(&primary, &id).await;
    replica.catch_up_with(cluster).await;
    serves(&gw, &sha(4), Some("1.0"), PROMISE).await;
    cached(&gw, &sha(4)).await;

    replica.pause_replay().await;
    let id = register(amo, ADDON, &sha(4), "2.0").await;
    wait_receipt(&primary, &id).await;
    eventually(PROMISE, "the old value evicted", || async {
        get_json(&record_url(&gw, &sha(4))).await.0 == 503
    })
    .await;
    for _ in 0..5 {
        serves_new_everywhere(&gw, &sha(4), &id, "2.0", true).await;
    }
    replica.resume_replay().await;
    serves(&gw, &sha(4), Some("2.0"), PROMISE * 2).await;
    worker.terminate();
}

/// Events missed while the gateway was cut off from the broker carried
/// LSNs it never heard: after it resubscribes, its paused replica (behind
/// the primary's position at that moment) serves nothing, the primary does.
#[tokio::test]
async fn after_a_resubscribe_a_replica_behind_the_primary_serves_nothing() {
    let mut stack = ReplicaStack::start().await;
    let replica_url = stack.replica_url();
    let ReplicaStack {
        cluster,
        db,
        replica,
        broker,
        amo,
        worker,
        ..
    } = &mut stack;
    let proxy = TcpProxy::to_broker(broker).await;
    let gw = start_gateway_with(
        &[replica_url, db.url_as("addonreg_gateway")],
        broker.prefix.as_str(),
        &[("ADDONREG_AMQP_URL", proxy.url.clone())],
    )
    .await;
    wait_subscribed(&gw).await;
    let primary = db.pool_as("addonreg_gateway").await;

    let id = register(amo, ADDON, &sha(8), "1.0").await;
    wait_receipt(&primary, &id).await;
    replica.catch_up_with(cluster).await;
    serves(&gw, &sha(8), Some("1.0"), PROMISE).await;

    // The write happens while the gateway's broker connection is down:
    // its event is lost to this gateway.
    replica.pause_replay().await;
    proxy.set(ProxyMode::Cut);
    let heartbeat = format!("{}/__heartbeat__", gw.public);
    eventually(Duration::from_secs(20), "unsubscribed", || async {
        get_json(&heartbeat).await.1["checks"]["broker"] != "ok"
    })
    .await;
    let id = register(amo, ADDON, &sha(8), "2.0").await;
    wait_receipt(&primary, &id).await;
    proxy.set(ProxyMode::Forward);
    wait_subscribed(&gw).await;
    for _ in 0..10 {
        serves_new_everywhere(&gw, &sha(8), &id, "2.0", false).await;
    }
    replica.resume_replay().await;
    worker.terminate();
}

/// A broker that stops answering without closing the connection (a
/// partition) is noticed within a few heartbeats: the gateway reports it
/// and its cached records fall back to the short disconnected lifetime.
#[tokio::test]
async fn a_silent_broker_is_noticed_within_a_few_heartbeats() {
    let db = TestDb::new().await;
    let broker = TestBroker::new();
    let _amo = Amo::connect(&broker).await;
    let proxy = TcpProxy::to_broker(&broker).await;
    let gw = start_gateway_with(
        &[db.url_as("addonreg_gateway")],
        broker.prefix.as_str(),
        &[
            ("ADDONREG_AMQP_URL", proxy.url.clone()),
            ("ADDONREG_AMQP_HEARTBEAT_SECS", "1".into()),
        ],
    )
    .await;
    wait_subscribed(&gw).await;
    insert_records(&db.owner, &[SeedRecord::registered(ADDON, &sha(9))]).await;
    serves(&gw, &sha(9), Some("1.0"), PROMISE).await;
    cached(&gw, &sha(9)).await;

    proxy.set(ProxyMode::Freeze);
    // A change no event will tell (as if its event were lost in the partition).
    let mut changed = SeedRecord::registered(ADDON, &sha(9));
    changed.version = Some("2.0".into());
    insert_records(&db.owner, &[changed]).await;
    let heartbeat = format!("{}/__heartbeat__", gw.public);
    // Two missed heartbeats of 1 s, with room for a slow machine; RabbitMQ's
    // default heartbeat (60 s) would take two minutes.
    eventually(Duration::from_secs(10), "the partition noticed", || async {
        get_json(&heartbeat).await.1["checks"]["broker"] != "ok"
    })
    .await;
    assert_eq!(metric(&gw, "addonreg_gateway_broker_connected").await, 0.0);
    serves(&gw, &sha(9), Some("2.0"), Duration::from_secs(2)).await;
    proxy.set(ProxyMode::Forward);
    wait_subscribed(&gw).await;
}

#[tokio::test]
async fn a_burst_of_misses_costs_one_query() {
    let db = TestDb::new().await;
    let broker = TestBroker::new();
    let _amo = Amo::connect(&broker).await;
    let gw = start_gateway(&[db.url_as("addonreg_gateway")], broker.prefix.as_str()).await;
    wait_subscribed(&gw).await;
    insert_records(&db.owner, &[SeedRecord::registered(ADDON, &sha(5))]).await;

    let queries = "addonreg_gateway_store_queries_total{kind=\"record\"}";
    let before = metric(&gw, queries).await;
    let url = record_url(&gw, &sha(5));
    let client = reqwest::Client::new();
    let answers = futures_util::future::join_all((0..50).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(&url).send().await.unwrap().status().as_u16() }
    }))
    .await;
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    assert_eq!(metric(&gw, queries).await - before, 1.0);
    eventually(
        Duration::from_secs(5),
        "the cache's size reported",
        || async {
            metric(&gw, "addonreg_gateway_cache_entries").await == 1.0
                && metric(&gw, "addonreg_gateway_cache_weighted_bytes").await > 0.0
        },
    )
    .await;
}

#[tokio::test]
async fn a_burst_of_misses_of_many_keys_reads_each_key_once_and_answers_its_own_row() {
    let db = TestDb::new().await;
    let broker = TestBroker::new();
    let _amo = Amo::connect(&broker).await;
    let gw = start_gateway(&[db.url_as("addonreg_gateway")], broker.prefix.as_str()).await;
    wait_subscribed(&gw).await;
    let seeds: Vec<_> = (100..150)
        .map(|n| SeedRecord::registered(ADDON, &sha(n)))
        .collect();
    insert_records(&db.owner, &seeds).await;

    let keys = "addonreg_gateway_miss_batch_keys_sum";
    let before = metric(&gw, keys).await;
    let client = reqwest::Client::new();
    // 50 different keys and an unknown one, all at once, twice over.
    let answers = futures_util::future::join_all((100..151).chain(100..151).map(|n| {
        let (client, url) = (client.clone(), record_url(&gw, &sha(n)));
        async move {
            let answer = client.get(&url).send().await.unwrap();
            let status = answer.status().as_u16();
            (n, status, answer.json::<Value>().await.unwrap())
        }
    }))
    .await;
    for (n, status, body) in answers {
        if n == 150 {
            assert_eq!(status, 404);
        } else {
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["sha256"], sha(n), "each read answers its own row");
        }
    }
    // Every key was read once, however the misses were batched.
    assert_eq!(metric(&gw, keys).await - before, 51.0);
}

#[tokio::test]
async fn a_cut_broker_connection_comes_back_and_drops_the_cache() {
    let db = TestDb::new().await;
    let broker = TestBroker::new();
    let _amo = Amo::connect(&broker).await;
    let gw = start_gateway(&[db.url_as("addonreg_gateway")], broker.prefix.as_str()).await;
    wait_subscribed(&gw).await;
    insert_records(&db.owner, &[SeedRecord::registered(ADDON, &sha(6))]).await;
    serves(&gw, &sha(6), Some("1.0"), PROMISE).await;
    cached(&gw, &sha(6)).await;

    let clears = "addonreg_gateway_cache_clears_total";
    let cleared = metric(&gw, clears).await;
    let name = format!("addonreg-gateway {}", broker.prefix.as_str());
    let closed = crate::helpers::close_broker_connections(&name);
    assert_eq!(closed, 1, "the gateway's connection is named {name:?}");
    // Reads keep working, whatever the subscription's state.
    serves(&gw, &sha(6), Some("1.0"), PROMISE).await;
    eventually(Duration::from_secs(20), "resubscribed", || async {
        metric(&gw, clears).await > cleared
    })
    .await;
    wait_subscribed(&gw).await;
    let misses = metric(&gw, MISSES).await;
    serves(&gw, &sha(6), Some("1.0"), PROMISE).await;
    assert!(metric(&gw, MISSES).await > misses, "the cache was dropped");
}
