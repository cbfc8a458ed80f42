//! The HTTP write intake (`write-worker intake`, CONTRACT "Write intake"),
//! as a real process against real RabbitMQ (and a real worker where a write
//! must be seen applied): a 202 only once the queue holds the write, a 400
//! with the very reason the worker dead-letters the same body with, 401 for
//! any missing or wrong token (two accepted, never shown anywhere), 413 over
//! 4 MiB, and 503 with Retry-After on a backlog, on a broker that stops
//! confirming, and while the broker is down; the pool recovers by itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use harness::rabbit::{MemoryAlarm, RabbitNode};
use harness::{BrokerRole, BrokerUser, TestBroker, TestDb, TestProcess, free_port, wait_for_http};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::AMQPValue;
use serde_json::{Value, json};

use crate::helpers::{Amo, hash, queue_depth, start_worker, wait_for_receipts, write};

const RECEIPTS: Duration = Duration::from_secs(60);

fn issued() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn one_op(n: u32) -> Value {
    json!([{"op": "register", "addon_id": "intake@x", "sha256": hash(n), "version": "1.0"}])
}

/// A random bearer token.
fn token() -> String {
    format!("tok-{}", uuid::Uuid::new_v4().simple())
}

/// A running intake.
struct Intake {
    process: TestProcess,
    base: String,
    metrics: String,
    client: reqwest::Client,
}

/// An answer: status, `Retry-After`, `Location`, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    location: Option<String>,
    body: Value,
}

impl Intake {
    /// Starts `write-worker intake` accepting `tokens`, publishing with `amqp_url`.
    async fn start(
        amqp_url: &str,
        broker: &TestBroker,
        tokens: &[&str],
        env: &[(&str, String)],
    ) -> Self {
        let (port, metrics_port) = (free_port(), free_port());
        let digests: Vec<String> = tokens
            .iter()
            .map(|t| write_worker::intake::auth::digest_hex(t))
            .collect();
        let mut all = vec![
            ("ADDONREG_AMQP_URL", amqp_url.to_string()),
            ("ADDONREG_PREFIX", broker.prefix.to_string()),
            ("ADDONREG_INTAKE_LISTEN", format!("127.0.0.1:{port}")),
            (
                "ADDONREG_INTAKE_METRICS_LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            ),
            ("ADDONREG_INTAKE_TOKEN_SHA256", digests.join(",")),
            ("ADDONREG_LOG", "info".to_string()),
        ];
        all.extend(env.iter().cloned());
        let process = TestProcess::start(env!("CARGO_BIN_EXE_write-worker"), &["intake"], &all);
        let base = format!("http://127.0.0.1:{port}");
        wait_for_http(
            &format!("{base}/__lbheartbeat__"),
            200,
            Duration::from_secs(30),
        )
        .await;
        Self {
            process,
            base,
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            client: reqwest::Client::new(),
        }
    }

    /// Posts `body` with `token` (none when `None`).
    async fn post_raw(&self, body: Vec<u8>, token: Option<&str>) -> Answer {
        let mut request = self
            .client
            .post(format!("{}/v1/writes", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.expect("the intake answers");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (retry_after, location) = (header("retry-after"), header("location"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            retry_after,
            location,
            body,
        }
    }

    async fn post(&self, message: &Value, token: &str) -> Answer {
        self.post_raw(message.to_string().into_bytes(), Some(token))
            .await
    }

    /// Posts `message` until it gets a 202 (each other answer must be a
    /// 503 with Retry-After), within `limit`.
    async fn post_until_accepted(&self, message: &Value, token: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let answer = self.post(message, token).await;
            if answer.status == 202 {
                return;
            }
            assert_eq!(answer.status, 503, "{answer:?}");
            assert!(answer.retry_after.is_some(), "{answer:?}");
            assert!(
                Instant::now() < deadline,
                "no 202 within {limit:?}: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn metrics_text(&self) -> String {
        reqwest::get(&self.metrics)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of the sample line starting with `name` (0 when absent).
    async fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    async fn heartbeat(&self) -> u16 {
        reqwest::get(format!("{}/__heartbeat__", self.base))
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

fn assert_accepted(answer: &Answer, write_id: &str) {
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(
        answer.location.as_deref(),
        Some(format!("/v1/writes/{write_id}").as_str())
    );
    assert_eq!(answer.body["write_id"], write_id);
}

#[tokio::test]
async fn a_write_is_answered_202_once_queued_and_a_worker_applies_it() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let _amo = Amo::connect(&broker).await; // the topology, as infra declares it
    // The intake's own least-privilege user, as the definitions make it.
    let user = BrokerUser::create(&broker, BrokerRole::Intake);
    let token = token();
    let intake = Intake::start(&user.url(), &broker, &[&token], &[]).await;

    let ids: Vec<String> = (0..5).map(|i| format!("http-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let answer = intake
            .post(&write(id, &issued(), one_op(i as u32)), &token)
            .await;
        assert_accepted(&answer, id);
    }
    // The same write_id again is safe: 202 again, applied once.
    let again = intake
        .post(&write(&ids[0], &issued(), one_op(0)), &token)
        .await;
    assert_accepted(&again, &ids[0]);
    assert_eq!(
        queue_depth(&broker, &broker.topology().writes_queue).await,
        6,
        "every 202 is a message the queue holds"
    );
    // The contract's limits: 10,000 ops at most (400), 4 MiB at most (413).
    let op = json!({"op": "delete", "addon_id": "a@b", "sha256": hash(1)});
    let too_many = write(
        "too-many",
        &issued(),
        Value::Array(vec![op.clone(); 10_001]),
    );
    let answer = intake.post(&too_many, &token).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .starts_with("op_count: ")
    );
    let mut huge = write("huge", &issued(), json!([op]))
        .to_string()
        .into_bytes();
    huge.resize(shared::write::MAX_BODY_BYTES + 1, b' ');
    let answer = intake.post_raw(huge, Some(&token)).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.body["code"], 413);

    let _worker = start_worker(&db, &broker, free_port(), &[]);
    let receipts = wait_for_receipts(&db, &ids, RECEIPTS).await;
    assert!(
        receipts.values().all(|(s, _)| s == "applied"),
        "{receipts:?}"
    );
    assert_eq!(intake.metric("addonreg_intake_accepted_total").await, 6.0);
    assert_eq!(
        intake.metric("addonreg_intake_confirm_seconds_count").await,
        6.0
    );
    assert_eq!(
        intake
            .metric("addonreg_intake_rejected_total{reason=\"op_count\"}")
            .await,
        1.0
    );
    assert_eq!(intake.heartbeat().await, 200);
    let summaries = intake
        .process
        .stdout_lines()
        .into_iter()
        .filter(|l| l.contains("request.summary") && l.contains("/v1/writes"))
        .count();
    assert!(summaries >= 8, "one request.summary line per post");
}

/// One body of each poison class of the contract.
fn poison() -> Vec<Vec<u8>> {
    let op = |o: Value| write("p", &issued(), json!([o])).to_string().into_bytes();
    let without = |field: &str| {
        let mut m = write("p", &issued(), one_op(1));
        m.as_object_mut().unwrap().remove(field);
        m.to_string().into_bytes()
    };
    let (no_v, no_issued, no_ops) = (without("v"), without("issued_at"), without("ops"));
    vec![
        b"{not json".to_vec(),
        b"[1, 2]".to_vec(),
        json!({"v": 2, "write_id": "p", "issued_at": issued(), "ops": one_op(1)})
            .to_string()
            .into_bytes(),
        no_v,
        no_issued,
        no_ops,
        write("not valid!", &issued(), one_op(1))
            .to_string()
            .into_bytes(),
        write("p", "yesterday", one_op(1)).to_string().into_bytes(),
        write("p", &issued(), json!([])).to_string().into_bytes(),
        op(json!({"op": "frob", "addon_id": "a@b", "sha256": hash(1)})),
        op(json!({"op": "register", "addon_id": "nope", "sha256": hash(1)})),
        op(json!({"op": "register", "addon_id": "a@b", "sha256": "12"})),
        op(json!({"op": "register", "addon_id": "a@b"})),
        op(json!({"op": "register", "addon_id": "a@b", "sha256": hash(1), "version": 3})),
        op(
            json!({"op": "register", "addon_id": "a@b", "sha256": hash(1), "version": "v".repeat(129)}),
        ),
        op(json!({"op": "register", "addon_id": "a@b", "sha256": hash(1), "version": "1\u{0}"})),
        format!(
            r#"{{"v": 1, "write_id": "p", "write_id": "q", "issued_at": "{}", "ops": []}}"#,
            issued()
        )
        .into_bytes(),
    ]
}

#[tokio::test]
async fn every_poison_class_gets_a_400_with_the_workers_own_reason_and_nothing_is_published() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    let token = token();
    let intake = Intake::start(&broker.url, &broker, &[&token], &[]).await;
    let bodies = poison();
    let mut answered = HashMap::new();
    for (i, body) in bodies.iter().enumerate() {
        let answer = intake.post_raw(body.clone(), Some(&token)).await;
        assert_eq!(
            answer.status,
            400,
            "{}: {answer:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(answer.body["code"], 400);
        assert_eq!(answer.body["error"], "Bad Request");
        answered.insert(
            format!("poison-{i}"),
            answer.body["message"].as_str().unwrap().to_string(),
        );
    }
    assert_eq!(
        queue_depth(&broker, &broker.topology().writes_queue).await,
        0,
        "a 400 publishes nothing"
    );
    assert_eq!(intake.metric("addonreg_intake_accepted_total").await, 0.0);

    // The same bodies over AMQP: the worker dead-letters each with the
    // reason the intake answered.
    for (i, body) in bodies.iter().enumerate() {
        amo.publish_raw(body, Some(&format!("poison-{i}"))).await;
    }
    let _worker = start_worker(&db, &broker, free_port(), &[]);
    let dead = broker.topology().dead_queue;
    let deadline = Instant::now() + RECEIPTS;
    while queue_depth(&broker, &dead).await < bodies.len() as u32 {
        assert!(
            Instant::now() < deadline,
            "not every poison message was dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connection = broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let mut dead_lettered = HashMap::new();
    while let Some(message) = channel
        .basic_get(dead.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        let id = message
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .to_string();
        let headers = message.properties.headers().clone().unwrap_or_default();
        let reason = match headers.inner().get(shared::topology::REASON_HEADER) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("no reason header: {other:?}"),
        };
        channel
            .basic_ack(message.delivery_tag, BasicAckOptions::default())
            .await
            .unwrap();
        dead_lettered.insert(id, reason);
    }
    assert_eq!(
        answered, dead_lettered,
        "the intake's 400s are the worker's reasons"
    );
}

#[tokio::test]
async fn two_tokens_are_accepted_any_other_is_refused_alike_and_none_ever_shows() {
    let broker = TestBroker::new();
    let _amo = Amo::connect(&broker).await;
    let (old, new) = (token(), token());
    let intake = Intake::start(&broker.url, &broker, &[&old, &new], &[]).await;
    for (i, t) in [&old, &new].into_iter().enumerate() {
        let id = format!("rotated-{i}");
        assert_accepted(
            &intake.post(&write(&id, &issued(), one_op(1)), t).await,
            &id,
        );
    }
    let body = write("refused", &issued(), one_op(1))
        .to_string()
        .into_bytes();
    let mut refusals = Vec::new();
    for authorization in [
        None,
        Some(format!("Bearer {old}x")),
        Some(format!("Basic {old}")),
        Some(format!("Bearer {}", &new[..new.len() - 1])),
        Some("Bearer ".to_string()),
    ] {
        let mut request = intake
            .client
            .post(format!("{}/v1/writes", intake.base))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(a) = &authorization {
            request = request.header("authorization", a);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        refusals.push(response.text().await.unwrap());
    }
    assert!(
        refusals.windows(2).all(|w| w[0] == w[1]),
        "no hint which part was wrong: {refusals:?}"
    );
    // An invalid body gets 401, not 400, without a token: nothing is read.
    let answer = intake.post_raw(b"{".to_vec(), None).await;
    assert_eq!(answer.status, 401);

    let metrics = intake.metrics_text().await;
    assert!(
        metrics.contains("addonreg_intake_unauthorized_total 6"),
        "{metrics}"
    );
    let logs = intake.process.stdout_lines().join("\n");
    for secret in [&old, &new] {
        for (place, text) in [("logs", &logs), ("metrics", &metrics)] {
            assert!(
                !text.contains(secret.as_str()),
                "a token shows in the {place}"
            );
        }
        assert!(refusals.iter().all(|r| !r.contains(secret.as_str())));
    }
    assert!(logs.contains("request.summary"), "the requests were logged");
    assert_eq!(
        queue_depth(&broker, &broker.topology().writes_queue).await,
        2
    );
}

#[tokio::test]
async fn a_backlog_over_its_bound_answers_503_until_the_workers_catch_up() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    for i in 0..3 {
        amo.publish(&write(&format!("queued-{i}"), &issued(), one_op(i)))
            .await;
    }
    let token = token();
    let bound = [("ADDONREG_INTAKE_MAX_BACKLOG", "2".to_string())];
    let intake = Intake::start(&broker.url, &broker, &[&token], &bound).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while intake.metric("addonreg_intake_backlog_messages").await < 3.0 {
        assert!(Instant::now() < deadline, "the backlog is never read");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        intake.metric("addonreg_intake_max_backlog_messages").await,
        2.0
    );
    let message = write("over-the-bound", &issued(), one_op(9));
    let answer = intake.post(&message, &token).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    assert_eq!(answer.body["code"], 503);
    assert_eq!(
        intake
            .metric("addonreg_intake_unavailable_total{cause=\"backlog\"}")
            .await,
        1.0
    );
    assert_eq!(
        queue_depth(&broker, &broker.topology().writes_queue).await,
        3
    );

    let _worker = start_worker(&db, &broker, free_port(), &[]);
    intake.post_until_accepted(&message, &token, RECEIPTS).await;
    wait_for_receipts(&db, &["over-the-bound".to_string()], RECEIPTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_faults_answer_503_the_pool_recovers_and_every_202_is_applied() {
    let node = tokio::task::spawn_blocking(RabbitNode::start)
        .await
        .unwrap();
    let db = TestDb::new().await;
    let mut broker = TestBroker::new();
    broker.url = node.amqp_url();
    drop(Amo::connect(&broker).await); // the topology
    let token = token();
    let timeout = [("ADDONREG_INTAKE_CONFIRM_TIMEOUT_MS", "1000".to_string())];
    let intake = Intake::start(&broker.url, &broker, &[&token], &timeout).await;
    let mut accepted = Vec::new();
    let post = |n: u32| write(&format!("fault-{n}"), &issued(), one_op(n));

    // The first post also connects (within the short confirm timeout): on
    // a loaded machine it may take a retry.
    intake.post_until_accepted(&post(0), &token, RECEIPTS).await;
    accepted.push("fault-0".to_string());

    // A broker that stops confirming: 503, never 202.
    let alarm = MemoryAlarm::raise(&node);
    for n in 1..4 {
        let answer = intake.post(&post(n), &token).await;
        assert_eq!(answer.status, 503, "{answer:?}");
        assert_eq!(answer.retry_after.as_deref(), Some("1"));
    }
    assert!(
        intake
            .metric("addonreg_intake_unavailable_total{cause=\"confirm_timeout\"}")
            .await
            >= 1.0
    );
    drop(alarm);
    let after_alarm = post(4);
    intake
        .post_until_accepted(&after_alarm, &token, RECEIPTS)
        .await;
    accepted.push("fault-4".to_string());

    // The broker down: 503 (and the heartbeat fails); back up: the pool
    // recovers by itself.
    tokio::task::block_in_place(|| node.stop());
    let answer = intake.post(&post(5), &token).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.retry_after.is_some());
    let deadline = Instant::now() + Duration::from_secs(30);
    while intake.heartbeat().await != 503 {
        assert!(
            Instant::now() < deadline,
            "the heartbeat never noticed the broker down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::block_in_place(|| node.restart());
    let after_restart = post(6);
    intake
        .post_until_accepted(&after_restart, &token, RECEIPTS)
        .await;
    accepted.push("fault-6".to_string());
    let deadline = Instant::now() + Duration::from_secs(30);
    while intake.heartbeat().await != 200 {
        assert!(Instant::now() < deadline, "the heartbeat never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every 202 is applied (the 503'd writes may or may not be: AMO retries them).
    let _worker = start_worker(&db, &broker, free_port(), &[]);
    let receipts = wait_for_receipts(&db, &accepted, RECEIPTS).await;
    assert!(
        receipts.values().all(|(s, _)| s == "applied"),
        "{receipts:?}"
    );
}

/// Hostile input at the intake: schemathesis (`scripts/fuzz-gateway`, which
/// takes any service's base URL) generates posts from the intake's own
/// OpenAPI document, with a valid token: no 5xx but the documented 503, every
/// answer as documented, invalid writes refused and valid ones accepted.
#[tokio::test]
async fn schemathesis_finds_no_failure_in_the_intake() {
    let broker = TestBroker::new();
    let _amo = Amo::connect(&broker).await;
    let token = token();
    let intake = Intake::start(
        &broker.url,
        &broker,
        &[&token],
        &[("ADDONREG_LOG", "warn".to_string())],
    )
    .await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fuzz-gateway");
    let output = tokio::process::Command::new(&script)
        .args([
            intake.base.as_str(),
            "--max-examples",
            "50",
            "--",
            "--header",
            &format!("Authorization: Bearer {token}"),
        ])
        .output()
        .await
        .expect("run scripts/fuzz-gateway");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}"
    );
    eprintln!("{report}");
    let errors: Vec<String> = intake
        .process
        .stdout_lines()
        .into_iter()
        .filter(|l| l.contains("\"Severity\":3") || l.contains("panicked"))
        .filter(|l| !l.contains("\"Type\":\"warp::server::run\""))
        .collect();
    assert!(errors.is_empty(), "the intake logged errors: {errors:?}");
}
