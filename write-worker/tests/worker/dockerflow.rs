//! The worker's Dockerflow endpoints: `/__heartbeat__` (which liveness uses,
//! and which a stuck consumer loop fails) and `/__version__`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{TestBroker, TestDb, free_port, wait_for_http};
use serde_json::Value;
use shared::version::VersionInfo;
use write_worker::dockerflow::{Dockerflow, watched};

use crate::helpers::start_worker;

#[tokio::test]
async fn the_worker_answers_heartbeat_and_version_on_its_admin_listener() {
    let db = TestDb::new().await;
    let broker = TestBroker::new();
    let port = free_port();
    let _worker = start_worker(&db, &broker, port, &[]);
    let base = format!("http://127.0.0.1:{port}");
    wait_for_http(
        &format!("{base}/__lbheartbeat__"),
        200,
        Duration::from_secs(20),
    )
    .await;

    // The database check runs at start: wait for its first verdict.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let answer = reqwest::get(format!("{base}/__heartbeat__")).await.unwrap();
        assert_eq!(answer.status(), 200, "a healthy worker's heartbeat is 200");
        let body: Value = answer.json().await.unwrap();
        if body["checks"]["database"] == "ok" {
            break body;
        }
        assert!(Instant::now() < deadline, "database never checked: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["checks"]["consumer"], "ok", "{body}");
    assert!(
        body["details"]["database"]["janitor_round_age_seconds"].is_number(),
        "{body}"
    );

    let version: Value = reqwest::get(format!("{base}/__version__"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for key in ["source", "version", "commit", "build"] {
        assert!(version[key].is_string(), "{key} in {version}");
    }
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("addonreg_worker_janitor_round_age_seconds"));
}

#[tokio::test]
async fn a_consumer_loop_stuck_in_one_step_fails_the_heartbeat_until_it_moves() {
    // Nothing listens on port 1: the database check only warns.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/nothing")
        .unwrap();
    let registry = prometheus::Registry::new();
    let version = VersionInfo::load(std::path::Path::new("/nonexistent"));
    let flow = Dockerflow::new(pool, &registry, version).stuck_after(Duration::from_millis(300));
    let (code, body) = flow.heartbeat();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["checks"]["consumer"], "ok");
    assert_eq!(body["checks"]["database"], "warning", "{body}");

    // A loop that blocks its thread inside one poll, as a wedged one does.
    let pulse = flow.pulse();
    let release = Arc::new(std::sync::Barrier::new(2));
    let held = release.clone();
    let wedged = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(watched(pulse, async move {
            held.wait();
        }));
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = flow.heartbeat();
        if code == 500 {
            assert_eq!(body["status"], "error", "{body}");
            assert_eq!(body["checks"]["consumer"], "error", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a stuck loop never failed the heartbeat"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    release.wait();
    wedged.join().unwrap();
    let (code, body) = flow.heartbeat();
    assert_eq!(code, 200, "the loop moved on: {body}");
}
