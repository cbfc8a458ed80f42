//! Least privilege (CONTRACT "Least privilege"), tested with the real users:
//! the gateway's database role can only read, whatever its session says; the
//! gateway's broker user of `infra/rabbitmq/definitions.json`, made for the
//! test's prefix, subscribes to invalidations and can do nothing else; the
//! public listener writes nothing and reveals no configuration; and no
//! password given to a gateway shows in its logs, answers or command line.

use std::time::Duration;

use harness::broker::is_access_refused;
use harness::{BrokerRole, BrokerUser, TestBroker, TestDb, free_port};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use reqwest::Method;

use crate::helpers::{
    Amo, SeedRecord, close_broker_connections, get_json, insert_records, start_gateway_with,
    wait_subscribed,
};

/// The SQLSTATE of a failed statement.
fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.to_string())
}

const WRITES: &[&str] = &[
    "INSERT INTO receipts (write_id, status) VALUES ('w1', 'applied')",
    "INSERT INTO records (addon_id, sha256, status, updated_at, last_write_id, last_op_index, ops) \
     VALUES ('a@b', '\\x00', 'registered', now(), 'w', 0, '[]')",
    "UPDATE records SET status = 'revoked'",
    "DELETE FROM receipts",
    "TRUNCATE records",
    "TRUNCATE receipts",
    "UPDATE records SET op_count = 1",
    "ALTER TABLE records ADD COLUMN intruder int",
    "ALTER TABLE receipts RENAME TO intruder",
    "CREATE TABLE intruder (x int)",
    "CREATE SCHEMA intruder",
    "CREATE INDEX intruder ON records (version)",
    "DROP TABLE receipts",
    "CREATE ROLE intruder",
];

#[tokio::test]
async fn gateway_role_cannot_write_even_in_a_read_write_session() {
    let db = TestDb::new().await;
    let gateway = db.pool_as("addonreg_gateway").await;

    // As the role's sessions start: read-only, so even a mistaken grant
    // could not write.
    for &sql in WRITES {
        let err = sqlx::query(sql).execute(&gateway).await.expect_err(sql);
        let code = sqlstate(&err);
        assert!(
            matches!(code.as_deref(), Some("25006" | "42501")),
            "{sql}: expected read_only_sql_transaction or insufficient_privilege, got {err}"
        );
    }
    let err = sqlx::query("INSERT INTO receipts (write_id, status) VALUES ('w1', 'applied')")
        .execute(&gateway)
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("25006"),
        "sessions are read-only"
    );

    // The role may make its session read-write; the grants still refuse
    // every write, in each way a session can ask for read-write.
    let read_write = [
        "SET default_transaction_read_only = off",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    ];
    for setting in read_write {
        for &sql in WRITES {
            let mut conn = gateway.acquire().await.unwrap();
            sqlx::query(setting).execute(&mut *conn).await.unwrap();
            let err = sqlx::query(sql).execute(&mut *conn).await.expect_err(sql);
            assert_eq!(
                sqlstate(&err).as_deref(),
                Some("42501"),
                "{setting}; {sql}: expected insufficient_privilege, got {err}"
            );
        }
    }
    let mut conn = gateway.acquire().await.unwrap();
    sqlx::query("BEGIN READ WRITE")
        .execute(&mut *conn)
        .await
        .unwrap();
    let err = sqlx::query("DELETE FROM records")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
    sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
    // A grant by a role without grant options is refused or grants nothing
    // (PostgreSQL only warns when the role holds some privilege).
    sqlx::query("SET default_transaction_read_only = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let _ = sqlx::query("GRANT INSERT, UPDATE, DELETE ON records, receipts TO addonreg_gateway")
        .execute(&mut *conn)
        .await;
    drop(conn);
    let can_write: bool = sqlx::query_scalar(
        "SELECT has_table_privilege('addonreg_gateway', 'records', 'INSERT') \
             OR has_table_privilege('addonreg_gateway', 'receipts', 'UPDATE')",
    )
    .fetch_one(&db.owner)
    .await
    .unwrap();
    assert!(!can_write, "the gateway granted itself a write");

    let (records, receipts): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM records), (SELECT count(*) FROM receipts)")
            .fetch_one(&db.owner)
            .await
            .unwrap();
    assert_eq!((records, receipts), (0, 0), "nothing was written");
}

/// A fresh channel on `conn` (each refusal closes the one it happened on).
async fn channel(conn: &Connection) -> Channel {
    conn.create_channel().await.expect("open a channel")
}

fn assert_refused<T: std::fmt::Debug>(what: &str, outcome: lapin::Result<T>) {
    match outcome {
        Err(e) => assert!(
            is_access_refused(&e),
            "{what}: expected ACCESS_REFUSED, got {e}"
        ),
        Ok(v) => panic!("{what}: allowed ({v:?}), expected ACCESS_REFUSED"),
    }
}

async fn publish_confirmed(conn: &Connection, exchange: &str, key: &str) -> lapin::Result<bool> {
    let channel = channel(conn).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let confirm = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            br#"{"v": 1, "keys": [], "lsn": "0/0"}"#,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    Ok(confirm.is_ack())
}

#[tokio::test]
async fn gateway_broker_user_only_subscribes_to_invalidations() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    // The topology exists (a worker or infra declared it).
    let _amo = Amo::connect(&broker).await;
    let users = BrokerUser::create_all(&broker, &[BrokerRole::Gateway]);
    let user = &users[0];

    // A real gateway subscribes as this user.
    let gw = start_gateway_with(
        &[db.url_as("addonreg_gateway")],
        broker.prefix.as_str(),
        &[("ADDONREG_AMQP_URL", user.url())],
    )
    .await;
    wait_subscribed(&gw).await;

    let conn = user.connect().await.expect("the gateway user connects");
    let t = broker.topology();

    // What a gateway does: its own server-named exclusive queue, bound to
    // the invalidations exchange, consumed.
    let ch = channel(&conn).await;
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare its own exclusive queue");
    assert!(queue.name().as_str().starts_with("amq.gen-"));
    ch.queue_bind(
        queue.name().clone(),
        t.invalidations_exchange.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind it to the invalidations exchange");
    ch.basic_consume(
        queue.name().clone(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("consume it");

    // Nothing else.
    let ch = channel(&conn).await;
    assert_refused(
        "the gateway consumes the writes queue",
        ch.basic_consume(
            t.writes_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await,
    );
    let ch = channel(&conn).await;
    assert_refused(
        "the gateway reads the dead letters",
        ch.basic_get(t.dead_queue.as_str().into(), BasicGetOptions::default())
            .await,
    );
    let ch = channel(&conn).await;
    assert_refused(
        "the gateway purges the writes queue",
        ch.queue_purge(t.writes_queue.as_str().into(), QueuePurgeOptions::default())
            .await,
    );
    let ch = channel(&conn).await;
    assert_refused(
        "the gateway deletes the writes queue",
        ch.queue_delete(
            t.writes_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await,
    );
    let ch = channel(&conn).await;
    assert_refused(
        "the gateway binds the writes queue to the invalidations",
        ch.queue_bind(
            t.writes_queue.as_str().into(),
            t.invalidations_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
    );
    let ch = channel(&conn).await;
    let sneaky = format!("{}.sneaky", broker.prefix);
    assert_refused(
        "the gateway declares a named queue",
        ch.queue_declare(
            sneaky.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
    );
    for (what, exchange) in [
        ("an exchange of its own", sneaky.as_str()),
        (
            "the invalidations exchange",
            t.invalidations_exchange.as_str(),
        ),
    ] {
        let ch = channel(&conn).await;
        assert_refused(
            &format!("the gateway declares {what}"),
            ch.exchange_declare(
                exchange.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await,
        );
    }
    for exchange in [&t.invalidations_exchange, &t.writes_exchange] {
        let ch = channel(&conn).await;
        assert_refused(
            &format!("the gateway deletes {exchange}"),
            ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await,
        );
    }
    assert_refused(
        "the gateway publishes a write",
        publish_confirmed(&conn, &t.writes_exchange, "write").await,
    );
    assert_refused(
        "the gateway forges an invalidation event",
        publish_confirmed(&conn, &t.invalidations_exchange, "").await,
    );
    conn.close(0, "done".into()).await.ok();
    let (status, body) = get_json(&format!("{}/__heartbeat__", gw.public)).await;
    assert_eq!(
        (status, &body["checks"]["broker"]),
        (200, &serde_json::json!("ok"))
    );
}

#[tokio::test]
async fn public_listener_serves_no_admin_route_writes_nothing_and_reveals_no_secret() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let _amo = Amo::connect(&broker).await;
    let users = BrokerUser::create_all(&broker, &[BrokerRole::Gateway]);
    let user = &users[0];
    let sha = "ab".repeat(32);
    insert_records(&db.owner, &[SeedRecord::registered("a@b", &sha)]).await;

    // Trust authentication ignores the database passwords, which still
    // travel in the URLs; the second replica is down, so its failures are
    // logged (with the URL they must not show).
    let pg_password = uuid::Uuid::new_v4().simple().to_string();
    let dead_password = uuid::Uuid::new_v4().simple().to_string();
    let replica = db.url_as("addonreg_gateway").replacen(
        "addonreg_gateway@",
        &format!("addonreg_gateway:{pg_password}@"),
        1,
    );
    let dead_port = free_port();
    let dead = format!(
        "postgres://addonreg_gateway:{dead_password}@127.0.0.1:{dead_port}/{}",
        db.name()
    );
    let mut gw = start_gateway_with(
        &[replica, dead],
        broker.prefix.as_str(),
        &[
            ("ADDONREG_AMQP_URL", user.url()),
            ("ADDONREG_LOG", "debug".to_string()),
        ],
    )
    .await;
    wait_subscribed(&gw).await;
    let secrets = [
        user.password(),
        pg_password.as_str(),
        dead_password.as_str(),
    ];
    assert_no_secret("the gateway's argv", &cmdline(gw.process.pid()), &secrets);

    // No admin, metrics or debug route on the public port.
    let client = reqwest::Client::new();
    for path in [
        "/metrics",
        "/metrics/",
        "/admin",
        "/admin/",
        "/debug",
        "/debug/pprof",
        "/debug/vars",
        "/status",
        "/config",
        "/env",
        "/.env",
        "/v1/admin",
        "/v1/config",
        "/__heartbeat__/details",
    ] {
        let response = client
            .get(format!("{}{path}", gw.public))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path} on the public port");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], 404, "{path}");
    }

    // No endpoint writes: every other method is refused, and names the ones allowed.
    let record = format!("{}/v1/addons/a@b/hashes/{sha}", gw.public);
    let routes = [
        (record.clone(), "GET, HEAD"),
        (format!("{}/v1/addons/a@b/hashes", gw.public), "GET"),
        (format!("{}/v1/writes/w-1", gw.public), "GET"),
        (format!("{}/v1/lookups", gw.public), "POST"),
        (format!("{}/v1/openapi.json", gw.public), "GET"),
        (format!("{}/__heartbeat__", gw.public), "GET"),
        (format!("{}/__lbheartbeat__", gw.public), "GET"),
        (format!("{}/__version__", gw.public), "GET"),
    ];
    for (url, allow) in &routes {
        for method in [
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::POST,
            Method::OPTIONS,
            Method::TRACE,
        ] {
            if allow.contains(method.as_str()) {
                continue;
            }
            let response = client
                .request(method.clone(), url)
                .body(r#"{"status": "revoked"}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 405, "{method} {url}");
            assert_eq!(
                response.headers().get("allow").map(|v| v.to_str().unwrap()),
                Some(*allow),
                "{method} {url}: a 405 names the allowed methods"
            );
        }
    }
    let (status, body) = get_json(&record).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("registered")));

    // A cut broker connection is rebuilt (and logged) with the same user.
    close_broker_connections(broker.prefix.as_str());
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_subscribed(&gw).await;

    // The Dockerflow answers name checks, not hosts, users, databases or secrets.
    let mut revealing: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    revealing.extend([
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        db.name().to_string(),
        dead_port.to_string(),
        user.name.clone(),
        "addonreg_gateway".to_string(),
        "postgres://".to_string(),
        "amqp://".to_string(),
    ]);
    let revealing: Vec<&str> = revealing.iter().map(String::as_str).collect();
    for path in ["/__heartbeat__", "/__version__", "/__lbheartbeat__"] {
        let response = client
            .get(format!("{}{path}", gw.public))
            .send()
            .await
            .unwrap();
        let headers = format!("{:?}", response.headers());
        let body = response.text().await.unwrap();
        assert_no_secret(path, &format!("{headers}\n{body}"), &revealing);
    }
    let (status, heartbeat) = get_json(&format!("{}/__heartbeat__", gw.public)).await;
    assert_eq!(status, 200, "{heartbeat}");
    assert_eq!(heartbeat["checks"]["replica-2"], "warning", "{heartbeat}");
    let metrics = reqwest::get(format!("{}/metrics", gw.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_no_secret("the admin metrics", &metrics, &secrets);

    let status = gw.process.terminate();
    assert!(status.success(), "{status:?}");
    let logs = gw.process.stdout_lines();
    assert!(logs.len() > 3, "the gateway logged: {logs:?}");
    assert_no_secret("the gateway's logs", &logs.join("\n"), &secrets);
}

/// A process's command line as `ps` shows it.
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .expect("read /proc/<pid>/cmdline")
}

fn assert_no_secret(place: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{place} reveals {secret:?}: {}",
            text.lines()
                .find(|l| l.contains(secret))
                .unwrap_or_default()
        );
    }
}
