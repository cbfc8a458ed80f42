//! `write-worker dlq`, the real binary against a real broker: listing and
//! showing dead letters loses and reorders none of them, replay puts a dead
//! letter back on the writes exchange without its reason (acknowledging it
//! only once the copy is confirmed), and purge deletes only on `--yes`.

use std::time::{Duration, Instant};

use harness::{TestBroker, TestDb, TestProcess, free_port};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection};
use serde_json::json;

use shared::topology::REASON_HEADER;

use crate::helpers::*;

/// What a `dlq` run printed, and whether it exited 0.
struct Run {
    success: bool,
    lines: Vec<String>,
}

impl Run {
    /// The lines naming dead letters: everything before the closing summary.
    fn letters(&self) -> &[String] {
        &self.lines[..self.lines.len().saturating_sub(1)]
    }

    fn last(&self) -> &str {
        self.lines.last().map(String::as_str).unwrap_or("")
    }
}

/// Runs `write-worker dlq <args>` against the test's broker until it exits.
fn dlq(broker: &TestBroker, args: &[&str]) -> Run {
    let args: Vec<&str> = ["dlq"].iter().chain(args).copied().collect();
    let mut process = TestProcess::start(
        env!("CARGO_BIN_EXE_write-worker"),
        &args,
        &[
            ("ADDONREG_AMQP_URL", broker.url.clone()),
            ("ADDONREG_PREFIX", broker.prefix.to_string()),
        ],
    );
    let status = process
        .wait_exit(Duration::from_secs(30))
        .expect("dlq exits within 30 s");
    // The harness reads stdout on a thread of its own, which may still be
    // draining the pipe when the process has exited: wait until it is done.
    let mut lines = process.stdout_lines();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let again = process.stdout_lines();
        if again.len() == lines.len() {
            break;
        }
        lines = again;
    }
    Run {
        success: status.success(),
        lines,
    }
}

/// Waits until a queue has exactly `n` messages ready.
async fn wait_ready(broker: &TestBroker, queue: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let count = queue_depth(broker, queue).await;
        if count == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} has {count} messages, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes every message off a queue: (message_id, headers, body, properties).
async fn drain(
    broker: &TestBroker,
    queue: &str,
) -> Vec<(Option<String>, BasicProperties, Vec<u8>)> {
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut messages = Vec::new();
    while let Some(m) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|i| i.to_string());
        messages.push((id, m.delivery.properties.clone(), m.delivery.data.clone()));
    }
    channel.close(0, "done".into()).await.ok();
    conn.close(0, "done".into()).await.ok();
    messages
}

/// The message ids at the start of each listed line (position, then id).
fn listed(run: &Run) -> Vec<(String, String)> {
    run.letters()
        .iter()
        .map(|line| {
            let mut columns = line.split('\t');
            let position = columns.next().unwrap_or_default().to_string();
            let id = columns.next().unwrap_or_default().to_string();
            (position, id)
        })
        .collect()
}

fn numbered(ids: &[&str]) -> Vec<(String, String)> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| ((i + 1).to_string(), id.to_string()))
        .collect()
}

#[tokio::test]
async fn dead_letters_are_listed_shown_replayed_without_their_reason_and_purged() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let (dead, writes) = (broker.topology().dead_queue, broker.topology().writes_queue);
    let amo = Amo::connect(&broker).await;
    let mut worker = start_worker(&db, &broker, free_port(), &[]);

    let bad_hash = write(
        "dlq-bad-hash",
        &at(1),
        json!([{"op": "register", "addon_id": "a@x", "sha256": "nope"}]),
    );
    let bad_op = write(
        "dlq-bad-op",
        &at(2),
        json!([{"op": "frobnicate", "addon_id": "a@x", "sha256": hash(1)}]),
    );
    amo.publish(&bad_hash).await;
    amo.publish(&bad_op).await;
    let ids = vec!["dlq-bad-hash".to_string(), "dlq-bad-op".to_string()];
    let receipts = wait_for_receipts(&db, &ids, Duration::from_secs(30)).await;
    assert!(receipts.values().all(|(status, _)| status == "rejected"));
    // Receipts commit before the dead letters are confirmed: wait for those too.
    wait_ready(&broker, &dead, 2).await;
    // No worker from here on: the writes queue is inspected by the test alone.
    assert!(worker.terminate().success());

    // list: both, in order, with their reasons; nothing taken off the queue.
    let first = dlq(&broker, &["list"]);
    assert!(first.success, "{:?}", first.lines);
    assert_eq!(listed(&first), numbered(&["dlq-bad-hash", "dlq-bad-op"]));
    assert!(
        first.letters()[0].contains("\tinvalid_field: "),
        "{:?}",
        first.lines
    );
    assert!(
        first.letters()[1].contains("\tunknown_op: "),
        "{:?}",
        first.lines
    );
    assert!(first.letters().iter().all(|l| l.ends_with(" bytes")));
    assert_eq!(first.last(), format!("2 of 2 dead letters in {dead}"));
    assert_eq!(queue_depth(&broker, &dead).await, 2, "list takes nothing");
    let again = dlq(&broker, &["list"]);
    assert_eq!(again.lines, first.lines, "listing twice changes nothing");

    // show: that dead letter alone, in full.
    let shown = dlq(&broker, &["show", "dlq-bad-hash"]);
    assert!(shown.success, "{:?}", shown.lines);
    for expected in [
        "  message_id: dlq-bad-hash",
        "  content_type: application/json",
        "  delivery_mode: 2",
        "  \"write_id\": \"dlq-bad-hash\"",
    ] {
        assert!(
            shown.lines.iter().any(|l| l == expected),
            "{expected:?} in {:?}",
            shown.lines
        );
    }
    assert!(
        shown
            .lines
            .iter()
            .any(|l| l.starts_with(&format!("  {REASON_HEADER}: invalid_field: "))),
        "{:?}",
        shown.lines
    );
    assert!(!shown.lines.iter().any(|l| l.contains("dlq-bad-op")));
    assert!(!dlq(&broker, &["show", "no-such-id"]).success);
    assert_eq!(queue_depth(&broker, &dead).await, 2, "show takes nothing");

    // replay: refused without a selection; then exactly the selected one.
    assert!(!dlq(&broker, &["replay"]).success);
    let replay = dlq(&broker, &["replay", "--reason", "invalid_field"]);
    assert!(replay.success, "{:?}", replay.lines);
    assert_eq!(
        replay.last(),
        format!("replayed 1 of 2 dead letters; 1 left in {dead}")
    );
    assert_eq!(queue_depth(&broker, &dead).await, 1);
    let replayed = drain(&broker, &writes).await;
    assert_eq!(replayed.len(), 1, "exactly one write is back");
    let (id, properties, body) = &replayed[0];
    assert_eq!(id.as_deref(), Some("dlq-bad-hash"));
    assert_eq!(body, bad_hash.to_string().as_bytes(), "same body");
    assert_eq!(
        properties.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(*properties.delivery_mode(), Some(2));
    assert!(
        !properties
            .headers()
            .as_ref()
            .is_some_and(|h| h.contains_key(REASON_HEADER)),
        "the reason header is gone: {properties:?}"
    );
    // The writes queue counts deliveries afresh (a quorum queue with a
    // delivery limit sets the header itself): the dead queue's reads are gone.
    let count = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    assert!(
        matches!(count, None | Some(AMQPValue::LongLongInt(0))),
        "{properties:?}"
    );
    let left = dlq(&broker, &["list"]);
    assert_eq!(listed(&left), numbered(&["dlq-bad-op"]));

    // purge: refused without --yes, then deletes.
    assert!(!dlq(&broker, &["purge", "--all"]).success);
    assert_eq!(
        queue_depth(&broker, &dead).await,
        1,
        "nothing purged without --yes"
    );
    let purge = dlq(&broker, &["purge", "--all", "--yes"]);
    assert!(purge.success, "{:?}", purge.lines);
    assert_eq!(
        purge.last(),
        format!("purged 1 of 1 dead letters; 0 left in {dead}")
    );
    assert_eq!(queue_depth(&broker, &dead).await, 0);
    assert_eq!(
        queue_depth(&broker, &writes).await,
        0,
        "purge republishes nothing"
    );
}

/// Publishes dead letters straight to the dead queue, as a worker would.
async fn dead_letter(
    connection: &Connection,
    broker: &TestBroker,
    letters: &[(Option<&str>, Option<&str>)],
) {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for (id, reason) in letters {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(id) = id {
            properties = properties.with_message_id((*id).into());
        }
        if let Some(reason) = reason {
            let mut headers = FieldTable::default();
            headers.insert(
                REASON_HEADER.into(),
                AMQPValue::LongString(LongString::from(*reason)),
            );
            properties = properties.with_headers(headers);
        }
        let body = json!({"v": 1, "write_id": id.unwrap_or("x"), "issued_at": at(1), "ops": []});
        let confirm = channel
            .basic_publish(
                "".into(),
                broker.topology().dead_queue.as_str().into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }
    channel.close(0, "done".into()).await.ok();
}

#[tokio::test]
async fn reading_and_leaving_dead_letters_keeps_every_one_in_its_place() {
    let broker = TestBroker::new();
    let (dead, writes) = (broker.topology().dead_queue, broker.topology().writes_queue);
    let connection = broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    broker.topology().declare(&channel).await.unwrap();
    channel.close(0, "done".into()).await.ok();
    let (invalid, unknown) = (Some("invalid_field: x"), Some("unknown_op: y"));
    dead_letter(
        &connection,
        &broker,
        &[
            (Some("d-1"), invalid),
            (Some("d-2"), unknown),
            (Some("d-3"), invalid),
            (Some("d-4"), unknown),
            (Some("d-5"), invalid),
            (Some("d-6"), unknown),
            // As the broker's delivery-limit backstop would leave one: no reason.
            (None, None),
        ],
    )
    .await;
    let all = ["d-1", "d-2", "d-3", "d-4", "d-5", "d-6", "-"];

    let head = dlq(&broker, &["list", "--limit", "3"]);
    assert_eq!(listed(&head), numbered(&all[..3]));
    assert_eq!(head.last(), format!("3 of 7 dead letters in {dead}"));
    for _ in 0..3 {
        let full = dlq(&broker, &["list"]);
        assert_eq!(listed(&full), numbered(&all), "same order every time");
        assert!(
            full.letters()[6].starts_with("7\t-\t-\t"),
            "{:?}",
            full.lines
        );
        assert_eq!(queue_depth(&broker, &dead).await, 7);
    }

    let replay = dlq(&broker, &["replay", "--ids", "d-2,d-5"]);
    assert_eq!(
        replay.last(),
        format!("replayed 2 of 7 dead letters; 5 left in {dead}")
    );
    let back: Vec<Option<String>> = drain(&broker, &writes)
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(back, vec![Some("d-2".to_string()), Some("d-5".to_string())]);
    let rest = dlq(&broker, &["list"]);
    assert_eq!(
        listed(&rest),
        numbered(&["d-1", "d-3", "d-4", "d-6", "-"]),
        "what replay leaves keeps its order"
    );

    let purge = dlq(&broker, &["purge", "--reason", "unknown_op", "--yes"]);
    assert_eq!(
        purge.last(),
        format!("purged 2 of 5 dead letters; 3 left in {dead}")
    );
    let rest = dlq(&broker, &["list"]);
    assert_eq!(listed(&rest), numbered(&["d-1", "d-3", "-"]));
    assert_eq!(queue_depth(&broker, &writes).await, 0);
    connection.close(0, "done".into()).await.ok();
}

#[tokio::test]
async fn a_wrong_prefix_is_an_error_and_declares_nothing() {
    let broker = TestBroker::new();
    let run = dlq(&broker, &["list"]);
    assert!(!run.success, "{:?}", run.lines);
    let connection = broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let missing = channel
        .queue_declare(
            broker.topology().dead_queue.as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await;
    assert!(missing.is_err(), "dlq created no queue");
    connection.close(0, "done".into()).await.ok();
}
