//! The freshness promise at the edge (`docs/edge.md`): Varnish keeps
//! answers for an hour, and the edge purger makes it stop serving an old
//! value once every gateway has applied the write, also when one gateway
//! hears the event late and its replica lags; the old value never comes
//! back after that.

use std::time::Duration;

use harness::{ProxyMode, TcpProxy, TestProcess, TestVarnish};

use crate::helpers::{
    Gateway, ReplicaStack, eventually, register, start_gateway_with, wait_receipt, wait_subscribed,
};

const ADDON: &str = "edge@example.com";
const PROMISE: Duration = Duration::from_secs(1);
/// The purger's repeat in this test (the default is 10 s).
const REPURGE_AFTER: Duration = Duration::from_secs(3);

fn sha(n: u32) -> String {
    format!("{n:064x}")
}

/// The version a record read and a listing read show through `base`.
async fn versions(base: &str, sha256: &str) -> (String, String) {
    let record: serde_json::Value =
        reqwest::get(format!("{base}/v1/addons/{ADDON}/hashes/{sha256}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let listing: serde_json::Value = reqwest::get(format!("{base}/v1/addons/{ADDON}/hashes"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        record["version"].as_str().unwrap_or("none").to_string(),
        listing["items"][0]["version"]
            .as_str()
            .unwrap_or("none")
            .to_string(),
    )
}

async fn edge_serves(edge: &str, sha256: &str, version: &str, within: Duration) -> Duration {
    eventually(within, &format!("the edge serves {version}"), || async {
        versions(edge, sha256).await == (version.to_string(), version.to_string())
    })
    .await
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

fn start_purger(
    gateways: &[&Gateway],
    edge: &TestVarnish,
    amqp_url: &str,
    prefix: &str,
) -> TestProcess {
    let admins: Vec<&str> = gateways.iter().map(|g| g.admin.as_str()).collect();
    TestProcess::start(
        env!("CARGO_BIN_EXE_edge-purger"),
        &[],
        &[
            ("ADDONREG_EDGE_GATEWAYS", admins.join(",")),
            ("ADDONREG_EDGE_VARNISH_URLS", edge.url.clone()),
            ("ADDONREG_AMQP_URL", amqp_url.to_string()),
            ("ADDONREG_PREFIX", prefix.to_string()),
            ("ADDONREG_METRICS_LISTEN", "0".to_string()),
            (
                "ADDONREG_EDGE_REPURGE_AFTER_MS",
                REPURGE_AFTER.as_millis().to_string(),
            ),
        ],
    )
}

#[tokio::test]
async fn a_late_gateway_with_a_lagging_replica_never_puts_the_old_value_back_at_the_edge() {
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
    let prefix = broker.prefix.as_str().to_string();
    let sources = [replica_url, db.url_as("addonreg_gateway")];
    // Gateway `late` hears the broker through a proxy the test freezes.
    let proxy = TcpProxy::to_broker(broker).await;
    let prompt = start_gateway_with(&sources, &prefix, &[]).await;
    let late = start_gateway_with(
        &sources,
        &prefix,
        &[("ADDONREG_AMQP_URL", proxy.url.clone())],
    )
    .await;
    wait_subscribed(&prompt).await;
    wait_subscribed(&late).await;
    let edge = TestVarnish::start(&[host_port(&prompt.public), host_port(&late.public)]).await;
    let _purger = start_purger(&[&prompt, &late], &edge, &broker.url, &prefix);
    let primary = db.pool_as("addonreg_gateway").await;

    let id = register(amo, ADDON, &sha(1), "1.0").await;
    wait_receipt(&primary, &id).await;
    replica.catch_up_with(cluster).await;
    edge_serves(&edge.url, &sha(1), "1.0", Duration::from_secs(10)).await;
    // Kept at the edge for an hour, labelled for purging.
    let response = reqwest::get(format!("{}/v1/addons/{ADDON}/hashes/{}", edge.url, sha(1)))
        .await
        .unwrap();
    assert_eq!(response.headers()["x-edge-cache"], "hit");
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=60, s-maxage=3600"
    );
    assert!(
        response.headers().get("xkey").is_none(),
        "keys stay at the edge"
    );
    // And both gateways have the old value in their caches.
    for gw in [&prompt, &late] {
        assert_eq!(versions(&gw.public, &sha(1)).await.0, "1.0");
    }

    // The late gateway hears nothing for a while and its replica stops
    // replaying; the edge meanwhile refetches from both.
    replica.pause_replay().await;
    proxy.set(ProxyMode::Freeze);
    let id = register(amo, ADDON, &sha(1), "2.0").await;
    wait_receipt(&primary, &id).await;
    let frozen = std::time::Instant::now();
    while frozen.elapsed() < Duration::from_secs(2) {
        let _ = versions(&edge.url, &sha(1)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        versions(&late.public, &sha(1)).await.0,
        "1.0",
        "late indeed"
    );
    proxy.set(ProxyMode::Forward);
    // Once the late gateway applies the event (its fenced reads go to the
    // primary, past the paused replica) the purger purges.
    eventually(
        Duration::from_secs(5),
        "the late gateway applied it",
        || async { versions(&late.public, &sha(1)).await == ("2.0".into(), "2.0".into()) },
    )
    .await;
    edge_serves(&edge.url, &sha(1), "2.0", PROMISE).await;
    // From then on never the old value, past the purger's repeat, whichever
    // gateway the edge refetches from.
    let watched = std::time::Instant::now();
    while watched.elapsed() < REPURGE_AFTER + Duration::from_secs(2) {
        assert_eq!(
            versions(&edge.url, &sha(1)).await,
            ("2.0".into(), "2.0".into()),
            "the edge served an old value again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // With every gateway prompt, a write reaches the edge within the promise
    // of its receipt, the replica still paused.
    let id = register(amo, ADDON, &sha(1), "3.0").await;
    wait_receipt(&primary, &id).await;
    let took = edge_serves(&edge.url, &sha(1), "3.0", PROMISE).await;
    eprintln!("the edge served the new value {took:?} after the receipt");
    replica.resume_replay().await;
    worker.terminate();
}
