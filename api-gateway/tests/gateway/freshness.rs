//! The freshness promise: once a write's receipt exists, a gateway connected
//! to the broker stops serving the older value within 1 s, also when its
//! replica lags; and the cache that makes reads cheap doesn't break it.

use std::time::Duration;

use harness::{TestBroker, TestCluster, TestDb};
use sqlx::PgPool;

use crate::helpers::{
    Amo, Gateway, SeedRecord, eventually, get_json, insert_records, metric, register,
    start_gateway, start_worker, wait_subscribed,
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

/// Waits (up to 20 s) until the write's receipt exists on the primary.
async fn receipt(primary: &PgPool, write_id: &str) {
    eventually(Duration::from_secs(20), "receipt", || async {
        sqlx::query("SELECT 1 FROM receipts WHERE write_id = $1")
            .bind(write_id)
            .fetch_optional(primary)
            .await
            .unwrap()
            .is_some()
    })
    .await;
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
    receipt(&primary, &id).await;
    serves(&gw, &sha(1), Some("1.0"), PROMISE).await;
    cached(&gw, &sha(1)).await;

    let id = register(&amo, ADDON, &sha(1), "2.0").await;
    receipt(&primary, &id).await;
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
    receipt(&primary, &id).await;
    serves(&gw, &sha(2), Some("1.0"), PROMISE).await;
    worker.terminate();
}

/// The fenced read goes to a source that has replayed the write: here the
/// primary, listed as a second read URL through the same read-only role.
#[tokio::test]
async fn a_paused_replica_does_not_bring_the_old_value_back() {
    let cluster = TestCluster::start().await;
    let db = TestDb::on(cluster.admin_options()).await;
    let replica = cluster.start_replica().await;
    let replica_url = format!(
        "postgres://addonreg_gateway@127.0.0.1:{}/{}",
        replica.port(),
        db.name()
    );
    let broker = TestBroker::new();
    let amo = Amo::connect(&broker).await;
    let mut worker = start_worker(db.url_as("addonreg_worker"), &broker);
    let gw = start_gateway(
        &[replica_url, db.url_as("addonreg_gateway")],
        broker.prefix.as_str(),
    )
    .await;
    wait_subscribed(&gw).await;
    let primary = db.pool_as("addonreg_gateway").await;

    let id = register(&amo, ADDON, &sha(3), "1.0").await;
    receipt(&primary, &id).await;
    replica.catch_up_with(&cluster).await;
    serves(&gw, &sha(3), Some("1.0"), PROMISE).await;
    cached(&gw, &sha(3)).await;

    replica.pause_replay().await;
    let id = register(&amo, ADDON, &sha(3), "2.0").await;
    receipt(&primary, &id).await;
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

/// With only a paused replica nothing fresh exists: the gateway answers
/// what the replica has, without caching it, and the new value as soon as
/// replay resumes.
#[tokio::test]
async fn with_only_a_paused_replica_nothing_old_is_cached() {
    let cluster = TestCluster::start().await;
    let db = TestDb::on(cluster.admin_options()).await;
    let replica = cluster.start_replica().await;
    let replica_url = format!(
        "postgres://addonreg_gateway@127.0.0.1:{}/{}",
        replica.port(),
        db.name()
    );
    let broker = TestBroker::new();
    let amo = Amo::connect(&broker).await;
    let mut worker = start_worker(db.url_as("addonreg_worker"), &broker);
    let gw = start_gateway(&[replica_url], broker.prefix.as_str()).await;
    wait_subscribed(&gw).await;
    let primary = db.pool_as("addonreg_gateway").await;

    let id = register(&amo, ADDON, &sha(4), "1.0").await;
    receipt(&primary, &id).await;
    replica.catch_up_with(&cluster).await;
    serves(&gw, &sha(4), Some("1.0"), PROMISE).await;
    cached(&gw, &sha(4)).await;

    replica.pause_replay().await;
    let id = register(&amo, ADDON, &sha(4), "2.0").await;
    receipt(&primary, &id).await;
    let discarded = "addonreg_gateway_cache_fill_discarded_total";
    eventually(PROMISE * 5, "a fenced read that is not cached", || async {
        let before = metric(&gw, discarded).await;
        get_json(&record_url(&gw, &sha(4))).await;
        metric(&gw, discarded).await > before
    })
    .await;
    replica.resume_replay().await;
    serves(&gw, &sha(4), Some("2.0"), PROMISE * 2).await;
    worker.terminate();
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
