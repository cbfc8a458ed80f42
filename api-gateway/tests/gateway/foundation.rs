//! The base: the gateway's read-only role, the harness's streaming replica,
//! and the process's Dockerflow routes, metrics, logs and stop.

use harness::{TestBroker, TestCluster, TestDb};

use crate::helpers::{Amo, get_json, start_gateway, wait_subscribed};

#[tokio::test]
async fn gateway_role_can_only_read() {
    let db = TestDb::new().await;
    let gateway = db.pool_as("addonreg_gateway").await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
        .fetch_one(&gateway)
        .await
        .unwrap();
    assert_eq!(count, 0);
    let writes = [
        "INSERT INTO receipts (write_id, status) VALUES ('w1', 'applied')",
        "UPDATE records SET status = 'revoked'",
        "DELETE FROM receipts",
        "CREATE TABLE intruder (x int)",
        "ALTER TABLE records ADD COLUMN intruder int",
    ];
    for sql in writes {
        // Also with the session's read-only default turned off: the grants alone forbid it.
        let mut conn = gateway.acquire().await.unwrap();
        sqlx::query("SET default_transaction_read_only = off")
            .execute(&mut *conn)
            .await
            .unwrap();
        let err = sqlx::query(sql).execute(&mut *conn).await.expect_err(sql);
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.to_string());
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
    }
}

#[tokio::test]
async fn harness_replica_streams_the_primary_and_refuses_writes() {
    let cluster = TestCluster::start().await;
    let db = TestDb::on(cluster.admin_options()).await;
    let replica = cluster.start_replica().await;
    sqlx::query("INSERT INTO receipts (write_id, status) VALUES ('seen-on-replica', 'applied')")
        .execute(&db.owner)
        .await
        .unwrap();
    replica.catch_up_with(&cluster).await;
    let on_replica = sqlx::postgres::PgPoolOptions::new()
        .connect_with(replica.admin_options().database(db.name()))
        .await
        .unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&on_replica)
        .await
        .unwrap();
    assert!(in_recovery, "it is a standby");
    let status: String =
        sqlx::query_scalar("SELECT status FROM receipts WHERE write_id = 'seen-on-replica'")
            .fetch_one(&on_replica)
            .await
            .unwrap();
    assert_eq!(status, "applied");
    let err = sqlx::query("DELETE FROM receipts")
        .execute(&on_replica)
        .await
        .expect_err("standby refuses writes");
    assert!(err.to_string().contains("read-only"), "{err}");

    // Paused replay: the primary moves on, the replica does not.
    replica.pause_replay().await;
    sqlx::query("UPDATE receipts SET status = 'superseded'")
        .execute(&db.owner)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let status: String = sqlx::query_scalar("SELECT status FROM receipts")
        .fetch_one(&on_replica)
        .await
        .unwrap();
    assert_eq!(status, "applied", "replay is paused");
    replica.resume_replay().await;
    replica.catch_up_with(&cluster).await;
    let status: String = sqlx::query_scalar("SELECT status FROM receipts")
        .fetch_one(&on_replica)
        .await
        .unwrap();
    assert_eq!(status, "superseded");
    on_replica.close().await;
}

#[tokio::test]
async fn gateway_serves_dockerflow_metrics_only_on_admin_and_stops_on_sigterm() {
    let db = TestDb::new().await;
    let broker = TestBroker::new();
    // The invalidations exchange exists (a worker or infra declared it).
    let _amo = Amo::connect(&broker).await;
    let mut gw = start_gateway(&[db.url_as("addonreg_gateway")], broker.prefix.as_str()).await;
    wait_subscribed(&gw).await;

    let (status, body) = get_json(&format!("{}/__lbheartbeat__", gw.public)).await;
    assert_eq!((status, body), (200, serde_json::json!({})));
    let (status, body) = get_json(&format!("{}/__heartbeat__", gw.public)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["checks"]["replica-1"], "ok");
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "the heartbeat names no host"
    );
    let (status, body) = get_json(&format!("{}/__version__", gw.public)).await;
    assert_eq!(status, 200);
    for key in ["source", "version", "commit", "build"] {
        assert!(body[key].is_string(), "{key} in {body}");
    }

    let (status, body) = get_json(&format!("{}/metrics", gw.public)).await;
    assert_eq!(status, 404, "no metrics on the public port");
    assert_eq!(body["code"], 404);
    assert_eq!(body["error"], "Not Found");
    let metrics = reqwest::get(format!("{}/metrics", gw.admin)).await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("addonreg_gateway_process_resident_memory_bytes")
    );

    let status = gw.process.terminate();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    let lines = gw.process.stdout_lines();
    assert!(lines.iter().any(|l| l.contains("gateway.stop")));
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("every stdout line is JSON");
        assert_eq!(v["Logger"], "addonreg-gateway", "{line}");
        assert!(v["Timestamp"].is_u64() && v["Severity"].is_u64() && v["Fields"].is_object());
    }
}

#[tokio::test]
async fn heartbeat_warns_when_a_replica_is_down_and_fails_when_all_are() {
    let cluster = TestCluster::start().await;
    let db = TestDb::on(cluster.admin_options()).await;
    let replica = cluster.start_replica().await;
    let replica_url = format!(
        "postgres://addonreg_gateway@127.0.0.1:{}/{}",
        replica.port(),
        db.name()
    );
    let dead_url = format!(
        "postgres://addonreg_gateway@127.0.0.1:{}/{}",
        harness::free_port(),
        db.name()
    );

    let gw = start_gateway(&[replica_url.clone(), dead_url.clone()], "unused").await;
    let (status, body) = get_json(&format!("{}/__heartbeat__", gw.public)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "warning");
    assert_eq!(body["checks"]["replica-1"], "ok");
    assert_eq!(body["checks"]["replica-2"], "warning");

    replica.stop();
    let (status, body) = get_json(&format!("{}/__heartbeat__", gw.public)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "error");
    replica.restart();
    let (status, body) = get_json(&format!("{}/__heartbeat__", gw.public)).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &serde_json::json!("warning")),
        "{body}"
    );
}
