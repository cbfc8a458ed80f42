//! Least privilege (CONTRACT "Least privilege"), tested with the real users:
//! the worker's database role changes rows but neither the schema nor the
//! roles; the broker users of `infra/rabbitmq/definitions.json`, made for the
//! test's prefix, carry the whole write path (AMO publishes, a real worker
//! consumes, commits, dead-letters and announces) while AMO can do nothing
//! else; and no password given to a worker shows in its logs, its metrics or
//! its command line.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use harness::broker::is_access_refused;
use harness::{BrokerRole, BrokerUser, Launch, TestBroker, TestDb, TestProcess, free_port};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde_json::json;

use crate::helpers::{hash, queue_depth, stored_records, wait_for_receipts, write};

const RECEIPTS: Duration = Duration::from_secs(30);

/// The SQLSTATE of a failed statement.
fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.to_string())
}

#[tokio::test]
async fn worker_role_cannot_change_the_schema_or_any_role() {
    let db = TestDb::new().await;
    let worker = db.pool_as("addonreg_worker").await;
    let refused = [
        "CREATE TABLE intruder (x int)",
        "CREATE TABLE public.intruder AS SELECT * FROM records",
        "CREATE SCHEMA intruder",
        "CREATE INDEX intruder ON records (version)",
        "CREATE VIEW intruder AS SELECT 1",
        "ALTER TABLE records ADD COLUMN intruder int",
        "ALTER TABLE receipts DROP CONSTRAINT receipts_pkey",
        "ALTER TABLE records OWNER TO addonreg_worker",
        "DROP TABLE receipts",
        "DROP TABLE records",
        "TRUNCATE records",
        "DELETE FROM _sqlx_migrations",
        "DROP TABLE _sqlx_migrations",
        "CREATE ROLE intruder LOGIN SUPERUSER",
        "CREATE ROLE intruder",
        "ALTER ROLE addonreg_worker SUPERUSER",
        "ALTER ROLE addonreg_worker CREATEROLE",
        "ALTER ROLE addonreg_gateway SET default_transaction_read_only = off",
        "DROP ROLE addonreg_gateway",
        "GRANT addonreg_worker TO addonreg_gateway",
    ];
    for sql in refused {
        let err = sqlx::query(sql).execute(&worker).await.expect_err(sql);
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some("42501"),
            "{sql}: expected insufficient_privilege, got {err}"
        );
    }
    let roles: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_roles WHERE rolname = 'intruder' OR \
         (rolname LIKE 'addonreg_%' AND (rolsuper OR rolcreaterole OR rolcreatedb))",
    )
    .fetch_one(&db.owner)
    .await
    .unwrap();
    assert_eq!(roles, 0, "no role was created or raised");
    // A grant by a role without grant options is refused or grants nothing
    // (PostgreSQL only warns when the role holds some privilege).
    for sql in [
        "GRANT INSERT ON records TO addonreg_gateway",
        "GRANT UPDATE ON receipts TO addonreg_gateway",
        "REVOKE SELECT ON records FROM addonreg_gateway",
    ] {
        let _ = sqlx::query(sql).execute(&worker).await;
    }
    let (gateway_writes, gateway_reads): (bool, bool) = sqlx::query_as(
        "SELECT has_table_privilege('addonreg_gateway', 'records', 'INSERT') \
             OR has_table_privilege('addonreg_gateway', 'receipts', 'UPDATE'), \
                has_table_privilege('addonreg_gateway', 'records', 'SELECT')",
    )
    .fetch_one(&db.owner)
    .await
    .unwrap();
    assert_eq!(
        (gateway_writes, gateway_reads),
        (false, true),
        "the worker changed no grant"
    );
}

/// Waits until the worker has declared its topology (a failed passive
/// declaration closes the channel, so each try takes a new one).
async fn wait_declared(broker: &TestBroker) {
    let conn = broker.connect().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let channel = conn.create_channel().await.unwrap();
        let queue = broker.topology().writes_queue;
        if channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "worker declared no topology");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conn.close(0, "done".into()).await.ok();
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

/// Publishes on a confirming channel; answers the confirm (or the refusal).
async fn publish_confirmed(
    conn: &Connection,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    message_id: &str,
) -> lapin::Result<bool> {
    let channel = channel(conn).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(message_id.into()),
        )
        .await?
        .await?;
    Ok(confirm.is_ack())
}

/// Everything the AMO user must not do, each refused by the broker.
async fn amo_can_do_nothing_but_publish(amo: &Connection, broker: &TestBroker) {
    let t = broker.topology();
    let ch = channel(amo).await;
    assert_refused(
        "AMO consumes the writes queue",
        ch.basic_consume(
            t.writes_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await,
    );
    let ch = channel(amo).await;
    assert_refused(
        "AMO gets from the writes queue",
        ch.basic_get(t.writes_queue.as_str().into(), BasicGetOptions::default())
            .await,
    );
    let ch = channel(amo).await;
    assert_refused(
        "AMO reads the dead letters",
        ch.basic_get(t.dead_queue.as_str().into(), BasicGetOptions::default())
            .await,
    );
    let ch = channel(amo).await;
    assert_refused(
        "AMO purges the writes queue",
        ch.queue_purge(t.writes_queue.as_str().into(), QueuePurgeOptions::default())
            .await,
    );
    let ch = channel(amo).await;
    assert_refused(
        "AMO deletes the writes queue",
        ch.queue_delete(
            t.writes_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await,
    );
    let ch = channel(amo).await;
    assert_refused(
        "AMO declares a server-named queue",
        ch.queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await,
    );
    let ch = channel(amo).await;
    let sneaky = format!("{}.writes.copy", broker.prefix);
    assert_refused(
        "AMO declares a queue under the prefix",
        ch.queue_declare(
            sneaky.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
    );
    let ch = channel(amo).await;
    assert_refused(
        "AMO declares an exchange",
        ch.exchange_declare(
            sneaky.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
    );
    let ch = channel(amo).await;
    assert_refused(
        "AMO deletes the writes exchange",
        ch.exchange_delete(
            t.writes_exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await,
    );
    let ch = channel(amo).await;
    assert_refused(
        "AMO binds the dead-letter queue to the writes exchange",
        ch.queue_bind(
            t.dead_queue.as_str().into(),
            t.writes_exchange.as_str().into(),
            "write".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
    );
    assert_refused(
        "AMO forges an invalidation event",
        publish_confirmed(amo, &t.invalidations_exchange, "", b"{}", "forged").await,
    );
    assert_refused(
        "AMO publishes straight to the dead-letter queue",
        publish_confirmed(amo, "", &t.dead_queue, b"{}", "forged").await,
    );
}

#[tokio::test]
async fn least_privilege_broker_users_carry_the_write_path_and_amo_only_publishes() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let users = BrokerUser::create_all(&broker, &[BrokerRole::Amo, BrokerRole::Worker]);
    let (amo_user, worker_user) = (&users[0], &users[1]);
    assert_eq!(amo_user.permissions[0], "^$", "AMO configures nothing");

    // The worker declares the topology itself, as its own user.
    let pg_password = uuid::Uuid::new_v4().simple().to_string();
    let database_url = db.url_as("addonreg_worker").replacen(
        "addonreg_worker@",
        &format!("addonreg_worker:{pg_password}@"),
        1,
    );
    let metrics_port = free_port();
    let mut worker = TestProcess::launch(
        &Launch::worker(
            env!("CARGO_BIN_EXE_write-worker"),
            &database_url,
            &worker_user.url(),
            broker.prefix.as_str(),
        )
        .set(
            "ADDONREG_METRICS_LISTEN",
            &format!("127.0.0.1:{metrics_port}"),
        )
        .set("ADDONREG_LOG", "debug"),
    );
    wait_declared(&broker).await;
    let tap_conn = broker.connect().await;
    let mut tap = crate::helpers::EventTap::bind(&broker).await;

    // AMO publishes, with confirms, a valid write and a bad one.
    let amo = amo_user.connect().await.expect("AMO connects");
    let t = broker.topology();
    let good = write(
        "priv-good",
        "2026-11-22T10:00:00.000001Z",
        json!([{"op": "register", "addon_id": "priv@x", "sha256": hash(1), "version": "1.0"}]),
    );
    for (body, id) in [
        (good.to_string().into_bytes(), "priv-good"),
        (b"not json".to_vec(), "priv-bad"),
    ] {
        let acked = publish_confirmed(&amo, &t.writes_exchange, "write", &body, id)
            .await
            .expect("AMO publishes to the writes exchange");
        assert!(acked, "the broker confirms AMO's write");
    }

    let receipts = wait_for_receipts(&db, &["priv-good".into(), "priv-bad".into()], RECEIPTS).await;
    assert_eq!(receipts["priv-good"].0, "applied");
    assert_eq!(receipts["priv-bad"].0, "rejected");
    let records = stored_records(&db).await;
    assert_eq!(records[&("priv@x".to_string(), hash(1))].0, "registered");
    let event = tap.next(Duration::from_secs(10)).await;
    assert_eq!(
        event.keys.len(),
        1,
        "the worker user publishes invalidations"
    );
    let dead = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if queue_depth(&broker, &t.dead_queue).await == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(dead.is_ok(), "the worker user dead-letters the bad write");

    amo_can_do_nothing_but_publish(&amo, &broker).await;
    assert_eq!(queue_depth(&broker, &t.writes_queue).await, 0);

    // A cut connection is rebuilt with the same user (topology declared again).
    assert!(harness::broker::close_broker_connections(broker.prefix.as_str()) >= 1);
    let again = write(
        "priv-again",
        "2026-11-22T10:00:01.000001Z",
        json!([{"op": "revoke", "addon_id": "priv@x", "sha256": hash(1)}]),
    );
    let amo = amo_user.connect().await.expect("AMO reconnects");
    assert!(
        publish_confirmed(
            &amo,
            &t.writes_exchange,
            "write",
            again.to_string().as_bytes(),
            "priv-again"
        )
        .await
        .unwrap()
    );
    let receipts = wait_for_receipts(&db, &["priv-again".into()], RECEIPTS).await;
    assert_eq!(receipts["priv-again"].0, "applied");

    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let secrets = [worker_user.password(), pg_password.as_str()];
    assert_no_secret("the worker's metrics", &metrics, &secrets);
    assert_no_secret("the worker's argv", &cmdline(worker.pid()), &secrets);
    let status = worker.terminate();
    assert!(status.success(), "{status:?}");
    let logs = worker.stdout_lines();
    assert!(logs.len() > 3, "the worker logged: {logs:?}");
    assert_no_secret("the worker's logs", &logs.join("\n"), &secrets);
    tap_conn.close(0, "done".into()).await.ok();
}

#[tokio::test]
async fn a_worker_failing_to_connect_prints_no_password() {
    let broker = TestBroker::new();
    let users = BrokerUser::create_all(&broker, &[BrokerRole::Worker]);
    let wrong_amqp = uuid::Uuid::new_v4().simple().to_string();
    let pg_password = uuid::Uuid::new_v4().simple().to_string();
    let amqp_url = users[0].url().replace(users[0].password(), &wrong_amqp);
    let database_url = format!(
        "postgres://addonreg_worker:{pg_password}@127.0.0.1:{}/nowhere",
        free_port()
    );
    let mut worker = TestProcess::launch(
        &Launch::worker(
            env!("CARGO_BIN_EXE_write-worker"),
            &database_url,
            &amqp_url,
            broker.prefix.as_str(),
        )
        .set("ADDONREG_LOG", "debug"),
    );
    let secrets = [
        wrong_amqp.as_str(),
        pg_password.as_str(),
        users[0].password(),
    ];
    assert_no_secret("the worker's argv", &cmdline(worker.pid()), &secrets);
    // Long enough for a few refused logins and their retries.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && !worker
            .stdout_lines()
            .iter()
            .any(|l| l.to_lowercase().contains("access_refused") || l.contains("403"))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.terminate();
    let logs = worker.stdout_lines();
    let severities: HashMap<bool, usize> = logs.iter().fold(HashMap::new(), |mut m, l| {
        *m.entry(l.contains("\"Severity\":3")).or_default() += 1;
        m
    });
    assert!(
        severities.get(&true).copied().unwrap_or(0) > 0,
        "the refused login is logged as an error: {logs:?}"
    );
    assert_no_secret("the worker's logs", &logs.join("\n"), &secrets);
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
            "{place} reveal a password: {}",
            text.lines()
                .find(|l| l.contains(secret))
                .unwrap_or_default()
        );
    }
}
