//! The contract's Writes section, end to end: real workers consuming from
//! RabbitMQ and committing to Postgres.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use harness::{TestBroker, TestDb, free_port};
use lapin::options::BasicGetOptions;
use serde_json::{Value, json};

use shared::record;
use shared::write::{OpKey, WriteMessage};

use crate::helpers::*;

const RECEIPTS: Duration = Duration::from_secs(30);

fn op(kind: &str, addon: &str, n: u32) -> Value {
    json!({"op": kind, "addon_id": addon, "sha256": hash(n)})
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_multi_op_write_applies_atomically_and_is_announced_with_an_lsn() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    let mut events = EventTap::bind(&broker).await;
    let _worker = start_worker(&db, &broker, free_port(), &[]);

    let ops = json!([
        {"op": "register", "addon_id": "a@x", "sha256": format!("SHA256:{}", hash(1).to_uppercase()), "version": "1.0"},
        {"op": "register", "addon_id": "a@x", "sha256": hash(2)},
        {"op": "revoke", "addon_id": "a@x", "sha256": hash(2)},
    ]);
    amo.publish(&write("w-1", &at(1), ops)).await;
    let receipts = wait_for_receipts(&db, &ids(&["w-1"]), RECEIPTS).await;
    assert_eq!(receipts["w-1"], ("applied".to_string(), None));

    let records = stored_records(&db).await;
    let first = &records[&("a@x".to_string(), hash(1))];
    assert_eq!(
        (first.0.as_str(), first.1.as_deref()),
        ("registered", Some("1.0"))
    );
    assert_eq!(first.2.as_deref(), Some(at(1).as_str()));
    let second = &records[&("a@x".to_string(), hash(2))];
    assert_eq!(
        second.0, "revoked",
        "the later op of the same message is newer"
    );
    assert_eq!(second.2.as_deref(), Some(at(1).as_str()));

    let event = events.next(Duration::from_secs(10)).await;
    let mut keys: Vec<String> = event.keys.iter().map(|k| k.sha256.to_string()).collect();
    keys.sort();
    assert_eq!(keys, vec![hash(1), hash(2)]);
    let caught_up: bool = sqlx::query_scalar("SELECT pg_current_wal_lsn() >= $1::pg_lsn")
        .bind(event.lsn.to_string())
        .fetch_one(&db.owner)
        .await
        .unwrap();
    assert!(
        caught_up && event.lsn.0 > 0,
        "the event carries a real WAL position"
    );
}

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn final_state_is_the_fold_whatever_the_order_duplicates_or_number_of_workers() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    // Small batches and two processes, so that batches interleave and race.
    let args = ["--batch-max-messages", "7", "--prefetch", "7"];
    let _w1 = start_worker(&db, &broker, free_port(), &args);
    let _w2 = start_worker(&db, &broker, free_port(), &args);

    let mut rng = Lcg(0x5eed);
    let mut messages = Vec::new();
    for i in 0..240 {
        let ops: Vec<Value> = (0..1 + rng.below(3))
            .map(|_| {
                let kind = ["register", "register", "revoke", "delete"][rng.below(4) as usize];
                let mut o = op(
                    kind,
                    &format!("addon{}@x", rng.below(2)),
                    1 + rng.below(5) as u32,
                );
                if kind == "register" && rng.below(2) == 0 {
                    o["version"] = json!(format!("{}.0", rng.below(9)));
                }
                o
            })
            .collect();
        // Few distinct instants: ties are broken by write id, then index.
        messages.push(write(
            &format!("w-{i:03}"),
            &at(rng.below(40) as u32),
            Value::Array(ops),
        ));
    }
    let mut order: Vec<usize> = (0..messages.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order.extend((0..30).map(|_| rng.below(messages.len() as u64) as usize)); // redeliveries
    for &i in &order {
        amo.publish(&messages[i]).await;
    }
    let all: Vec<String> = messages
        .iter()
        .map(|m| m["write_id"].as_str().unwrap().to_string())
        .collect();
    let receipts = wait_for_receipts(&db, &all, RECEIPTS).await;
    assert!(
        receipts
            .values()
            .all(|(s, _)| s == "applied" || s == "superseded"),
        "{receipts:?}"
    );

    // The model: the contract's fold over each pair's ops, in no particular order.
    let parsed: Vec<WriteMessage> = messages
        .iter()
        .map(|m| WriteMessage::parse(m.to_string().as_bytes()).unwrap())
        .collect();
    let mut by_pair: BTreeMap<(String, String), Vec<(OpKey, &shared::write::Action)>> =
        BTreeMap::new();
    for w in &parsed {
        for (key, op) in w.keyed_ops() {
            by_pair
                .entry((op.pair.addon_id.to_string(), op.pair.sha256.to_string()))
                .or_default()
                .push((key, &op.action));
        }
    }
    let stored = stored_records(&db).await;
    assert_eq!(stored.len(), by_pair.len(), "one row per pair ever written");
    for (pair, ops) in &by_pair {
        let expected = record::fold(ops.iter().map(|(k, a)| (k, *a)));
        let got = &stored[pair];
        match expected {
            None => assert_eq!(got.0, "deleted", "{pair:?} is a tombstone"),
            Some(state) => {
                let want = (
                    state.status.as_str().to_string(),
                    state.version.map(|v| v.to_string()),
                    state.registered_at.map(|t| t.to_string()),
                    state.updated_at.to_string(),
                );
                assert_eq!(got, &want, "{pair:?}");
            }
        }
    }
}

#[tokio::test]
async fn older_ops_are_superseded_but_fill_in_and_tombstones_stay_buried() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    let _worker = start_worker(&db, &broker, free_port(), &[]);

    amo.publish(&write(
        "new-revoke",
        &at(20),
        json!([op("revoke", "a@x", 1)]),
    ))
    .await;
    amo.publish(&write(
        "new-delete",
        &at(30),
        json!([op("delete", "a@x", 2)]),
    ))
    .await;
    wait_for_receipts(&db, &ids(&["new-revoke", "new-delete"]), RECEIPTS).await;
    let mut old_register = op("register", "a@x", 1);
    old_register["version"] = json!("1.0");
    amo.publish(&write("old-register", &at(10), json!([old_register])))
        .await;
    amo.publish(&write(
        "old-register-2",
        &at(5),
        json!([op("register", "a@x", 2)]),
    ))
    .await;
    let receipts = wait_for_receipts(
        &db,
        &ids(&["new-delete", "old-register", "old-register-2"]),
        RECEIPTS,
    )
    .await;
    assert_eq!(
        receipts["new-delete"].0, "applied",
        "a delete of a never-seen pair applies"
    );
    assert_eq!(receipts["old-register"].0, "superseded");
    assert_eq!(receipts["old-register-2"].0, "superseded");

    let records = stored_records(&db).await;
    let filled = &records[&("a@x".to_string(), hash(1))];
    assert_eq!(
        filled,
        &(
            "revoked".to_string(),
            Some("1.0".to_string()),
            Some(at(10)),
            at(20)
        ),
        "the older register fills in registered_at and version"
    );
    assert_eq!(
        records[&("a@x".to_string(), hash(2))].0,
        "deleted",
        "the tombstone wins"
    );
}

#[tokio::test]
async fn a_write_id_seen_before_is_not_applied_again() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    let _worker = start_worker(&db, &broker, free_port(), &[]);

    amo.publish(&write("w-1", &at(1), json!([op("register", "a@x", 1)])))
        .await;
    let first = wait_for_receipts(&db, &ids(&["w-1"]), RECEIPTS).await;
    let processed_at: String =
        sqlx::query_scalar("SELECT processed_at::text FROM receipts WHERE write_id = 'w-1'")
            .fetch_one(&db.owner)
            .await
            .unwrap();
    // Same id, other content, newer: must not apply.
    amo.publish(&write("w-1", &at(50), json!([op("delete", "a@x", 1)])))
        .await;
    amo.publish(&write("w-2", &at(60), json!([op("register", "b@x", 9)])))
        .await;
    wait_for_receipts(&db, &ids(&["w-2"]), RECEIPTS).await;
    let again = wait_for_receipts(&db, &ids(&["w-1"]), RECEIPTS).await;
    assert_eq!(first, again);
    let processed_again: String =
        sqlx::query_scalar("SELECT processed_at::text FROM receipts WHERE write_id = 'w-1'")
            .fetch_one(&db.owner)
            .await
            .unwrap();
    assert_eq!(processed_at, processed_again, "the receipt does not change");
    assert_eq!(
        stored_records(&db).await[&("a@x".to_string(), hash(1))].0,
        "registered"
    );
}

#[tokio::test]
async fn bad_input_is_dead_lettered_with_a_reason_and_never_blocks_the_queue() {
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;
    let _worker = start_worker(&db, &broker, free_port(), &[]);

    let valid_then_invalid = json!([op("register", "atomic@x", 7), {"op": "register", "addon_id": "a@x", "sha256": "nope"}]);
    let too_many = Value::Array(vec![op("delete", "a@x", 1); 10_001]);
    /// (body, AMQP message_id, receipt expected under, reason code)
    type Case<'a> = (Vec<u8>, Option<&'a str>, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            b"not json".to_vec(),
            Some("bad-json"),
            Some("bad-json"),
            "invalid_json",
        ),
        (b"[]".to_vec(), None, None, "not_an_object"),
        (
            json!({"v": 2, "write_id": "bad-v", "issued_at": at(1), "ops": []})
                .to_string()
                .into_bytes(),
            None,
            Some("bad-v"),
            "unsupported_version",
        ),
        (
            write("bad-op", &at(1), json!([op("frobnicate", "a@x", 1)]))
                .to_string()
                .into_bytes(),
            None,
            Some("bad-op"),
            "unknown_op",
        ),
        (
            write("bad-hash", &at(1), valid_then_invalid)
                .to_string()
                .into_bytes(),
            Some("bad-hash"),
            Some("bad-hash"),
            "invalid_field",
        ),
        (
            write("too-many", &at(1), too_many).to_string().into_bytes(),
            None,
            Some("too-many"),
            "op_count",
        ),
        (
            vec![b' '; 4 * 1024 * 1024 + 1],
            Some("too-big"),
            Some("too-big"),
            "body_too_large",
        ),
        (
            json!({"v": 1, "write_id": "no-ops", "issued_at": at(1)})
                .to_string()
                .into_bytes(),
            None,
            Some("no-ops"),
            "missing_field",
        ),
    ];
    amo.publish(&write(
        "good-1",
        &at(1),
        json!([op("register", "good@x", 1)]),
    ))
    .await;
    for (body, message_id, _, _) in &cases {
        amo.publish_raw(body, *message_id).await;
    }
    amo.publish(&write(
        "good-2",
        &at(2),
        json!([op("register", "good@x", 2)]),
    ))
    .await;

    let mut expected: Vec<String> = cases
        .iter()
        .filter_map(|c| c.2.map(str::to_string))
        .collect();
    expected.extend(ids(&["good-1", "good-2"]));
    let receipts = wait_for_receipts(&db, &expected, RECEIPTS).await;
    assert_eq!(receipts["good-1"].0, "applied");
    assert_eq!(
        receipts["good-2"].0, "applied",
        "valid writes after bad ones still apply"
    );
    for id in cases.iter().filter_map(|c| c.2) {
        let (status, reason) = &receipts[id];
        assert_eq!(status, "rejected", "{id}");
        assert!(
            reason.as_deref().is_some_and(|r| !r.is_empty()),
            "{id} has a reason"
        );
    }
    assert!(
        !stored_records(&db)
            .await
            .keys()
            .any(|(a, _)| a == "atomic@x"),
        "a rejected message applies none of its ops"
    );

    // Every bad message is in the dead-letter queue, with its reason and id.
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut reasons: HashMap<String, Option<String>> = HashMap::new();
    while let Some(message) = channel
        .basic_get(
            broker.topology().dead_queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let reason = headers
            .inner()
            .get(shared::topology::REASON_HEADER)
            .and_then(|v| v.as_long_string().map(|s| s.to_string()))
            .expect("x-addonreg-reason header");
        let id = message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string());
        reasons.insert(reason, id);
    }
    assert_eq!(reasons.len(), cases.len(), "{reasons:?}");
    for (_, message_id, _, code) in &cases {
        let hit = reasons
            .iter()
            .find(|(reason, _)| reason.starts_with(&format!("{code}: ")))
            .unwrap_or_else(|| panic!("no dead letter for {code}: {reasons:?}"));
        assert_eq!(hit.1.as_deref(), *message_id, "properties are kept");
    }
    conn.close(0, "done".into()).await.ok();
}
