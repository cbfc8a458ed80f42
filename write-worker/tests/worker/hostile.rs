//! Hostile input, end to end: a backlog of ~200 malformed and adversarial
//! write messages (generated with proptest from a fixed seed, so a failure
//! replays exactly), mixed with valid writes, published as AMO does and
//! drained by one real worker. Bad input never blocks: every malformed
//! message is dead-lettered with a reason, every valid write is applied, the
//! worker survives and the queue drains.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use harness::{TestBroker, TestDb, free_port};
use lapin::options::BasicGetOptions;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

use crate::helpers::{Amo, queue_depth, start_worker, stored_records, wait_for_receipts};

/// Change it to explore other inputs; a failure names the case by index.
const SEED: [u8; 32] = *b"addonreg-hostile-input-seed-0001";
/// Malformed messages drawn from the strategies (beside the fixed giants).
const MALFORMED: usize = 150;
/// Valid writes mixed in.
const VALID: usize = 50;

/// One message to publish: its body, AMQP `message_id`, and what it is.
struct Case {
    body: Vec<u8>,
    message_id: Option<String>,
    what: String,
}

struct Gen(TestRunner);

impl Gen {
    fn new() -> Self {
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &SEED);
        Self(TestRunner::new_with_rng(Config::default(), rng))
    }

    fn draw<S: Strategy>(&mut self, strategy: S) -> S::Value {
        strategy.new_tree(&mut self.0).expect("generate").current()
    }

    fn below(&mut self, n: usize) -> usize {
        self.draw(0..n)
    }
}

fn digest(g: &mut Gen) -> String {
    g.draw("[0-9a-f]{64}")
}

/// A valid write of `write_id` (ops on add-ons named after it).
fn template(write_id: &str, sha256: &str) -> Value {
    json!({"v": 1, "write_id": write_id, "issued_at": "2026-11-22T10:00:00.123456Z",
           "ops": [{"op": "register", "addon_id": format!("{write_id}@x"), "sha256": sha256, "version": "1.0"}]})
}

/// A wrong-typed JSON value for a field that wants `kind`.
fn wrong_type(g: &mut Gen, kind: &str) -> Value {
    let mut options: Vec<Value> = vec![
        json!(1),
        json!(-1.5),
        json!(true),
        json!([]),
        json!(["1"]),
        json!({}),
        json!({"v": 1}),
        json!(null),
        json!("1"),
    ];
    options.retain(|v| match kind {
        "string" => !v.is_string(),
        "version" => !v.is_string() && !v.is_null(),
        "v" => v != &json!(1),
        "array" => !v.is_array(),
        "object" => !v.is_object(),
        _ => unreachable!(),
    });
    options[g.below(options.len())].clone()
}

/// One malformed message; `n` makes its ids unique, its category is `n % 16`.
fn malformed(g: &mut Gen, n: usize) -> Case {
    let id = format!("bad-{n}");
    let sha = digest(g);
    let mut w = template(&id, &sha);
    let valid_message_id = g.draw(any::<bool>()).then(|| id.clone());
    let json_case = |w: &Value, what: &str| Case {
        body: w.to_string().into_bytes(),
        message_id: valid_message_id.clone(),
        what: what.to_string(),
    };
    match n % 16 {
        0 => {
            // Arbitrary bytes: no such body is a valid write.
            let body = g.draw(proptest::collection::vec(any::<u8>(), 0..400));
            Case {
                body,
                message_id: valid_message_id,
                what: "random bytes".into(),
            }
        }
        1 => {
            // Invalid UTF-8 inside a string.
            let bad: &[&[u8]] = &[
                b"\xff",
                b"\xc0\x80",
                b"\xed\xa0\x80",
                b"\x80",
                b"\xe2\x82",
                b"\xf8\x88\x80\x80\x80",
            ];
            let bytes = bad[g.below(bad.len())];
            let text = w.to_string();
            let at = text.find(r#""1.0""#).expect("version in template") + 1;
            let mut body = text.as_bytes()[..at].to_vec();
            body.extend_from_slice(bytes);
            body.extend_from_slice(&text.as_bytes()[at..]);
            Case {
                body,
                message_id: valid_message_id,
                what: format!("invalid UTF-8 {bytes:x?}"),
            }
        }
        2 => {
            let fields = [
                ("v", "v"),
                ("write_id", "string"),
                ("issued_at", "string"),
                ("ops", "array"),
                ("op", "string"),
                ("addon_id", "string"),
                ("sha256", "string"),
                ("version", "version"),
                ("op entry", "object"),
            ];
            let (field, kind) = fields[g.below(fields.len())];
            let value = wrong_type(g, kind);
            match field {
                "v" | "write_id" | "issued_at" | "ops" => w[field] = value.clone(),
                "op entry" => w["ops"][0] = value.clone(),
                _ => w["ops"][0][field] = value.clone(),
            }
            json_case(&w, &format!("{field} = {value}"))
        }
        3 => {
            let op = g.draw("[A-Za-z_ ]{0,12}".prop_filter("not an op", |s| {
                !["register", "revoke", "delete"].contains(&s.as_str())
            }));
            w["ops"][0]["op"] = json!(op);
            json_case(&w, &format!("op {op:?}"))
        }
        4 => {
            let v: i64 = g.draw(any::<i64>().prop_filter("not 1", |v| *v != 1));
            w["v"] = json!(v);
            json_case(&w, &format!("v {v}"))
        }
        5 => {
            let sha = g.draw(prop_oneof![
                "[0-9a-f]{0,63}",
                "[0-9a-f]{65,80}",
                "[0-9a-f]{63}[g-zG-Z ]",
                "sha256:[0-9a-f]{63}",
                "sha1:[0-9a-f]{64}",
                " [0-9a-f]{64}",
                "[0-9a-f]{64}\n",
            ]);
            w["ops"][0]["sha256"] = json!(sha);
            json_case(&w, &format!("sha256 {sha:?}"))
        }
        6 => {
            let addon = g.draw(prop_oneof![
                "bad[a-z]{0,10}",
                "bad[a-z]{0,6}@",
                "bad [a-z]{1,6}@x",
                "bad/[a-z]{1,6}@x",
                "\\{bag[0-9a-f]{5}-0000-0000-0000-000000000000\\}",
                "bad[a-z]{250,260}@x",
                "bad@x\u{e9}",
            ]);
            w["ops"][0]["addon_id"] = json!(addon);
            json_case(&w, &format!("addon_id {addon:?}"))
        }
        7 => {
            let write_id = g.draw(prop_oneof![
                Just(String::new()),
                "bad[a-z]{62,80}",
                "bad[a-z]{0,8}[ /#@!\u{e9}]",
            ]);
            w["write_id"] = json!(write_id);
            json_case(&w, &format!("write_id {write_id:?}"))
        }
        8 => {
            let issued_at = g.draw(prop_oneof![
                Just("2026-11-22T10:00:00".to_string()),
                Just("2026-13-01T00:00:00Z".to_string()),
                Just("2026-02-30T00:00:00Z".to_string()),
                Just("2026-11-22 10:00:00Z".to_string()),
                Just("2026-11-22T10:00:00.1234567890Z".to_string()),
                Just("2026-11-22T10:00:00.Z".to_string()),
                Just("2026-11-22T10:00:00-00:00:00".to_string()),
                "[a-z ]{0,30}",
            ]);
            w["issued_at"] = json!(issued_at);
            json_case(&w, &format!("issued_at {issued_at:?}"))
        }
        9 => {
            let fields = [
                "v",
                "write_id",
                "issued_at",
                "ops",
                "op",
                "addon_id",
                "sha256",
            ];
            let field = fields[g.below(fields.len())];
            match field {
                "v" | "write_id" | "issued_at" | "ops" => w.as_object_mut().unwrap().remove(field),
                _ => w["ops"][0].as_object_mut().unwrap().remove(field),
            };
            json_case(&w, &format!("no {field}"))
        }
        10 => {
            w["ops"] = json!([]);
            json_case(&w, "no ops")
        }
        11 => {
            // The same key twice: parsers disagree on which one counts.
            let text = w.to_string();
            let other = digest(g);
            let twice = [
                (
                    r#""write_id":"#,
                    format!(r#""write_id":"{id}-b","write_id":"#),
                ),
                (r#""v":1"#, r#""v":2,"v":1"#.to_string()),
                (r#""sha256":"#, format!(r#""sha256":"{other}","sha256":"#)),
                (r#""op":"#, r#""op":"delete","op":"#.to_string()),
                (r#""ops":"#, r#""ops":[],"ops":"#.to_string()),
            ];
            let (key, doubled) = &twice[g.below(twice.len())];
            assert!(text.contains(key), "{key} in {text}");
            Case {
                body: text.replacen(key, doubled, 1).into_bytes(),
                message_id: valid_message_id,
                what: format!("duplicate {key}"),
            }
        }
        12 => {
            let what = g.below(4);
            let body = match what {
                // Valid to the parser; Postgres refuses NUL in text (SQLSTATE 22).
                0 => {
                    w["ops"][0]["version"] = json!("1.0\u{0}evil");
                    w.to_string().into_bytes()
                }
                1 => {
                    w["ops"][0]["addon_id"] = json!("bad\u{0}@x");
                    w.to_string().into_bytes()
                }
                2 => w
                    .to_string()
                    .replacen(r#""1.0""#, "\"1.0\0\"", 1)
                    .into_bytes(),
                _ => {
                    let mut b = w.to_string().into_bytes();
                    b.push(0);
                    b
                }
            };
            Case {
                body,
                message_id: valid_message_id,
                what: format!("NUL #{what}"),
            }
        }
        13 => {
            let body = g.draw(prop_oneof![
                Just("null".to_string()),
                Just("true".to_string()),
                Just("[]".to_string()),
                Just("\"write\"".to_string()),
                "-?[0-9]{1,20}",
                Just(format!("[{w}]")),
                Just(format!("\u{feff}{w}")),
                Just(format!("{w}{w}")),
                Just(r#"{"v": 1, "write_id": "\ud800", "issued_at": "x", "ops": []}"#.to_string()),
            ]);
            Case {
                body: body.into_bytes(),
                message_id: valid_message_id,
                what: "not one JSON object".into(),
            }
        }
        14 => {
            let version = g.draw("[a-z0-9.]{129,400}");
            w["ops"][0]["version"] = json!(version);
            json_case(&w, "version over 128 bytes")
        }
        _ => {
            let depth = g.draw(129usize..2_000);
            let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            let text = w.to_string().replacen(r#""1.0""#, &nested, 1);
            Case {
                body: text.into_bytes(),
                message_id: valid_message_id,
                what: format!("nested {depth} deep"),
            }
        }
    }
}

/// The fixed giants: each one of a kind, too big to draw many of.
fn giants() -> Vec<Case> {
    let sha = "ab".repeat(32);
    let mut cases = Vec::new();
    let deep_arrays = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    cases.push(("nested 10,000 arrays", deep_arrays.into_bytes()));
    let deep_objects = format!(
        r#"{{"v": 1, "write_id": "bad-deep", "issued_at": "2026-11-22T10:00:00Z", "ops": [{}1{}]}}"#,
        r#"{"a":"#.repeat(10_000),
        "}".repeat(10_000)
    );
    cases.push(("nested 10,000 objects", deep_objects.into_bytes()));
    let op = json!({"op": "delete", "addon_id": "bad-many@x", "sha256": sha});
    let mut many = template("bad-many", &sha);
    many["ops"] = Value::Array(vec![op; 10_001]);
    cases.push(("10,001 ops", many.to_string().into_bytes()));
    let mut huge = template("bad-huge", &sha);
    huge["pad"] = json!("x".repeat(4 * 1024 * 1024));
    cases.push(("body over 4 MiB", huge.to_string().into_bytes()));
    let mut long_id = template("bad-long-id", &sha);
    long_id["ops"][0]["addon_id"] = json!(format!("bad{}@x", "a".repeat(1 << 20)));
    cases.push(("1 MiB addon_id", long_id.to_string().into_bytes()));
    let mut long_version = template("bad-long-version", &sha);
    long_version["ops"][0]["version"] = json!("9".repeat(2 << 20));
    cases.push(("2 MiB version", long_version.to_string().into_bytes()));
    let mut long_op = template("bad-long-op", &sha);
    long_op["ops"][0]["op"] = json!("r".repeat(1 << 20));
    cases.push(("1 MiB op name", long_op.to_string().into_bytes()));
    let mut long_key = template("bad-long-key", &sha);
    let key = "k".repeat(1 << 20);
    long_key[&key] = json!(1);
    let doubled = long_key.to_string().replacen(
        &format!("\"{key}\":1"),
        &format!("\"{key}\":1,\"{key}\":2"),
        1,
    );
    cases.push(("duplicated 1 MiB key", doubled.into_bytes()));
    cases
        .into_iter()
        .map(|(what, body)| Case {
            body,
            message_id: None,
            what: what.to_string(),
        })
        .collect()
}

/// A valid write: 1 to 3 registers of pairs of its own, in every spelling
/// the contract allows.
fn valid(g: &mut Gen, n: usize) -> (Value, Vec<(String, String, Option<String>)>) {
    let write_id = format!("ok-{n}");
    let count = 1 + g.below(3);
    let mut ops = Vec::new();
    let mut expected = Vec::new();
    for k in 0..count {
        let addon_id = if g.draw(any::<bool>()) {
            format!("{{{:08x}-0000-4000-8000-{:012x}}}", n, k)
        } else {
            format!("ok-{n}.{k}@hostile.example")
        };
        let sha = digest(g);
        let spelled = match g.below(4) {
            0 => sha.clone(),
            1 => sha.to_uppercase(),
            2 => format!("sha256:{sha}"),
            _ => format!("SHA256:{}", sha.to_uppercase()),
        };
        let version: Option<String> = g.draw(proptest::option::of("\\PC{0,30}"));
        ops.push(
            json!({"op": "register", "addon_id": addon_id, "sha256": spelled, "version": version}),
        );
        expected.push((addon_id, sha, version));
    }
    let issued_at = g.draw(prop_oneof![
        Just("2026-11-22T10:00:00Z"),
        Just("2026-11-22T10:00:00.123456789+02:00"),
        Just("2026-11-22t10:00:00.5-07:30"),
    ]);
    (
        json!({"v": 1, "write_id": write_id, "issued_at": issued_at, "ops": ops}),
        expected,
    )
}

#[tokio::test]
async fn a_hostile_backlog_is_dead_lettered_valid_writes_apply_and_the_worker_survives() {
    let started = Instant::now();
    let (db, broker) = (TestDb::new().await, TestBroker::new());
    let amo = Amo::connect(&broker).await;

    let mut g = Gen::new();
    let mut bad: Vec<Case> = (0..MALFORMED).map(|n| malformed(&mut g, n)).collect();
    bad.extend(giants());
    let good: Vec<_> = (0..VALID).map(|n| valid(&mut g, n)).collect();

    // Interleaved: a valid write after every few bad ones.
    let mut good_iter = good.iter();
    for (i, case) in bad.iter().enumerate() {
        amo.publish_raw(&case.body, case.message_id.as_deref())
            .await;
        if i % 3 == 2
            && let Some((write, _)) = good_iter.next()
        {
            amo.publish(write).await;
        }
    }
    for (write, _) in good_iter {
        amo.publish(write).await;
    }
    let published = started.elapsed();

    let mut worker = start_worker(&db, &broker, free_port(), &[]);
    let ids: Vec<String> = (0..VALID).map(|n| format!("ok-{n}")).collect();
    let receipts = wait_for_receipts(&db, &ids, Duration::from_secs(30)).await;
    for id in &ids {
        assert_eq!(receipts[id].0, "applied", "{id}");
    }

    // Every malformed body is dead-lettered, with a reason; nothing else is.
    let t = broker.topology();
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_depth(&broker, &t.dead_queue).await < bad.len() as u32 {
        assert!(
            Instant::now() < deadline,
            "{} of {} malformed messages dead-lettered",
            queue_depth(&broker, &t.dead_queue).await,
            bad.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut expected: HashMap<&[u8], Vec<&str>> = HashMap::new();
    for case in &bad {
        expected.entry(&case.body).or_default().push(&case.what);
    }
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut reasons: HashMap<String, usize> = HashMap::new();
    while let Some(message) = channel
        .basic_get(
            t.dead_queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let body = message.delivery.data.as_slice();
        let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        let reason = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(shared::topology::REASON_HEADER).cloned())
            .and_then(|v| v.as_long_string().map(|s| s.to_string()))
            .unwrap_or_default();
        let what = expected
            .get_mut(body)
            .and_then(Vec::pop)
            .unwrap_or_else(|| panic!("dead letter not among the malformed: {shown}"));
        assert!(!reason.is_empty(), "{what}: no x-addonreg-reason");
        assert!(
            reason.len() <= 1024,
            "{what}: reason of {} bytes",
            reason.len()
        );
        let code = reason.split(':').next().unwrap_or_default().to_string();
        *reasons.entry(code).or_default() += 1;
    }
    let missing: Vec<&str> = expected.values().flatten().copied().collect();
    assert!(missing.is_empty(), "not dead-lettered: {missing:?}");

    // Valid writes are stored as sent; no malformed one left a record or an
    // applied receipt.
    let records = stored_records(&db).await;
    for (_, pairs) in &good {
        for (addon_id, sha, version) in pairs {
            let record = records
                .get(&(addon_id.clone(), sha.clone()))
                .unwrap_or_else(|| panic!("no record of {addon_id} {sha}"));
            assert_eq!((&record.0, &record.1), (&"registered".to_string(), version));
        }
    }
    assert_eq!(
        records.len(),
        good.iter().map(|(_, p)| p.len()).sum::<usize>()
    );
    let applied_bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM receipts WHERE write_id NOT LIKE 'ok-%' AND status <> 'rejected'",
    )
    .fetch_one(&db.owner)
    .await
    .unwrap();
    assert_eq!(
        applied_bad, 0,
        "a malformed write has a non-rejected receipt"
    );

    assert!(
        worker.wait_exit(Duration::ZERO).is_none(),
        "the worker is still running"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue_depth(&broker, &t.writes_queue).await > 0 {
        assert!(Instant::now() < deadline, "the writes queue drains");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = worker.terminate();
    assert!(status.success(), "{status:?}");
    eprintln!(
        "hostile: {} malformed + {VALID} valid published in {published:?}, all checked in {:?}; reasons {reasons:?}",
        bad.len(),
        started.elapsed()
    );
    conn.close(0, "done".into()).await.ok();
}
