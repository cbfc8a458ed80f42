//! AMO's write messages (contract v1): parsed and validated whole before any
//! of their ops reach the database, with a precise reason when they can't be.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use thiserror::Error;

use crate::domain::{AddonId, InvalidValue, Sha256, Timestamp, Version, WriteId};

/// Largest accepted message body, in bytes.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most ops one message may carry.
pub const MAX_OPS: usize = 10_000;

/// One file of one add-on: the unit a record is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pair {
    /// The add-on.
    pub addon_id: AddonId,
    /// The file's digest.
    pub sha256: Sha256,
}

/// What one op does to its pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// AMO knows the file (again), with an optional version.
    Register {
        /// The add-on version, when AMO gave one.
        version: Option<Version>,
    },
    /// AMO disabled or blocked the file.
    Revoke,
    /// AMO forgot the file: the record goes, a tombstone stays.
    Delete,
}

impl Action {
    /// The contract's name of the op.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Register { .. } => "register",
            Action::Revoke => "revoke",
            Action::Delete => "delete",
        }
    }
}

/// One op of a write message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The pair it changes.
    pub pair: Pair,
    /// What it does.
    pub action: Action,
}

/// Orders the ops of one pair: a greater key is newer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpKey {
    /// The message's `issued_at`, at microsecond precision.
    pub issued_at: Timestamp,
    /// The message's `write_id`, compared as bytes.
    pub write_id: WriteId,
    /// The op's index in `ops`.
    pub index: u32,
}

/// A valid v1 write message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteMessage {
    /// AMO's id of this write; receipts are kept under it.
    pub write_id: WriteId,
    /// When AMO issued it; the first part of every op key.
    pub issued_at: Timestamp,
    /// 1 to [`MAX_OPS`] ops, applied atomically.
    pub ops: Vec<Op>,
}

/// Why a message was rejected. Each reason has a stable `code` (metric label)
/// and a message naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RejectReason {
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("body of {0} bytes exceeds the limit of {MAX_BODY_BYTES} bytes")]
    BodyTooLarge(usize),
    /// The body is not JSON.
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body is JSON but not an object.
    #[error("body is not a JSON object")]
    NotAnObject,
    /// `v` is not 1.
    #[error("unsupported v: {0} (only 1 is known)")]
    UnsupportedVersion(String),
    /// A required field is absent.
    #[error("missing field {0}")]
    MissingField(String),
    /// A field has the wrong JSON type or an invalid value.
    #[error("invalid {field}: {problem}")]
    InvalidField {
        /// Where the field is, e.g. `ops[3].sha256`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An op other than register, revoke or delete.
    #[error("unknown op at ops[{index}]: {op:?}")]
    UnknownOp {
        /// The op's index.
        index: usize,
        /// The op name as sent (truncated).
        op: String,
    },
    /// Zero ops, or more than [`MAX_OPS`].
    #[error("ops must hold 1 to {MAX_OPS} ops, not {0}")]
    OpCount(usize),
}

impl RejectReason {
    /// A stable short code, for metric labels and log fields.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::BodyTooLarge(_) => "body_too_large",
            RejectReason::InvalidJson(_) => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::UnsupportedVersion(_) => "unsupported_version",
            RejectReason::MissingField(_) => "missing_field",
            RejectReason::InvalidField { .. } => "invalid_field",
            RejectReason::UnknownOp { .. } => "unknown_op",
            RejectReason::OpCount(_) => "op_count",
        }
    }
}

/// A message that could not be accepted, with the `write_id` its body gave
/// when that one was valid (so a `rejected` receipt can be kept under it).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{reason}")]
pub struct Rejection {
    /// Why it was rejected.
    pub reason: RejectReason,
    /// The body's `write_id`, if it had a valid one.
    pub write_id: Option<WriteId>,
}

impl WriteMessage {
    /// Parses and validates a message body.
    pub fn parse(body: &[u8]) -> Result<Self, Rejection> {
        let reject = |reason, write_id| Rejection { reason, write_id };
        if body.len() > MAX_BODY_BYTES {
            return Err(reject(RejectReason::BodyTooLarge(body.len()), None));
        }
        let UniqueKeys(value) = serde_json::from_slice(body)
            .map_err(|e| reject(RejectReason::InvalidJson(e.to_string()), None))?;
        let Value::Object(obj) = value else {
            return Err(reject(RejectReason::NotAnObject, None));
        };
        // A valid write_id is read first so that any later rejection can name it.
        let write_id = field_str(&obj, "write_id", "write_id")
            .and_then(|s| WriteId::parse(s).map_err(|e| invalid("write_id", e)));
        let known_id = write_id.as_ref().ok().cloned();
        let with_id = |reason| reject(reason, known_id.clone());

        match obj.get("v") {
            None => return Err(with_id(RejectReason::MissingField("v".into()))),
            Some(v) if v.as_u64() == Some(1) => {}
            Some(v) => return Err(with_id(RejectReason::UnsupportedVersion(truncated(v)))),
        }
        let write_id = write_id.map_err(with_id)?;
        let issued_at = field_str(&obj, "issued_at", "issued_at")
            .and_then(|s| Timestamp::parse(s).map_err(|e| invalid("issued_at", e)))
            .map_err(with_id)?;
        let ops = match obj.get("ops") {
            None => return Err(with_id(RejectReason::MissingField("ops".into()))),
            Some(Value::Array(ops)) => ops,
            Some(_) => return Err(with_id(type_error("ops", "an array"))),
        };
        if ops.is_empty() || ops.len() > MAX_OPS {
            return Err(with_id(RejectReason::OpCount(ops.len())));
        }
        let ops = ops
            .iter()
            .enumerate()
            .map(|(i, op)| parse_op(i, op))
            .collect::<Result<Vec<_>, _>>()
            .map_err(with_id)?;
        Ok(Self {
            write_id,
            issued_at,
            ops,
        })
    }

    /// The op keys of this message's ops, in order.
    pub fn keyed_ops(&self) -> impl Iterator<Item = (OpKey, &Op)> {
        self.ops.iter().enumerate().map(|(i, op)| {
            let key = OpKey {
                issued_at: self.issued_at,
                write_id: self.write_id.clone(),
                index: i as u32, // at most MAX_OPS
            };
            (key, op)
        })
    }
}

/// A JSON value none of whose objects repeats a key. Parsers disagree on
/// `{"write_id": "a", "write_id": "b"}` (serde_json keeps the last one, others
/// the first or fail), so a message whose fields are ambiguous is rejected as
/// invalid JSON rather than read one way here and another elsewhere.
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    // serde_json's own depth limit (128) bounds this recursion.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                // Truncated: the reason travels in a header.
                let shown: String = key.chars().take(32).collect();
                return Err(de::Error::custom(format_args!("duplicate key {shown:?}")));
            }
            let UniqueKeys(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

fn parse_op(index: usize, value: &Value) -> Result<Op, RejectReason> {
    let at = |name: &str| format!("ops[{index}].{name}");
    let Value::Object(op) = value else {
        return Err(type_error(&format!("ops[{index}]"), "an object"));
    };
    let name = field_str(op, "op", &at("op"))?;
    let addon_id = field_str(op, "addon_id", &at("addon_id"))
        .and_then(|s| AddonId::parse(s).map_err(|e| invalid(&at("addon_id"), e)))?;
    let sha256 = field_str(op, "sha256", &at("sha256"))
        .and_then(|s| Sha256::parse(s).map_err(|e| invalid(&at("sha256"), e)))?;
    let action = match name {
        "register" => {
            let version = match op.get("version") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => {
                    Some(Version::parse(s).map_err(|e| invalid(&at("version"), e))?)
                }
                Some(_) => return Err(type_error(&at("version"), "a string or null")),
            };
            Action::Register { version }
        }
        "revoke" => Action::Revoke,
        "delete" => Action::Delete,
        other => {
            return Err(RejectReason::UnknownOp {
                index,
                op: other.chars().take(64).collect(),
            });
        }
    };
    Ok(Op {
        pair: Pair { addon_id, sha256 },
        action,
    })
}

fn field_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a str, RejectReason> {
    match obj.get(key) {
        None => Err(RejectReason::MissingField(path.to_string())),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(type_error(path, "a string")),
    }
}

fn invalid(field: &str, e: InvalidValue) -> RejectReason {
    RejectReason::InvalidField {
        field: field.to_string(),
        problem: e.to_string(),
    }
}

fn type_error(field: &str, expected: &str) -> RejectReason {
    RejectReason::InvalidField {
        field: field.to_string(),
        problem: format!("must be {expected}"),
    }
}

fn truncated(v: &Value) -> String {
    v.to_string().chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const HASH: &str = "5f0c3a5e0b9d2a4c8e7f6a5b4c3d2e1f00112233445566778899aabbccddeeff";

    fn message(ops: Value) -> Value {
        json!({"v": 1, "write_id": "w-1", "issued_at": "2026-11-22T10:00:00.123456Z", "ops": ops})
    }

    fn parse(v: &Value) -> Result<WriteMessage, Rejection> {
        WriteMessage::parse(v.to_string().as_bytes())
    }

    fn reason(v: &Value) -> String {
        parse(v).unwrap_err().reason.to_string()
    }

    #[test]
    fn parses_the_contract_example() {
        let m = parse(&message(json!([
            {"op": "register", "addon_id": "a@b", "sha256": format!("sha256:{HASH}"), "version": "1.4.2"},
            {"op": "revoke", "addon_id": "a@b", "sha256": HASH},
            {"op": "delete", "addon_id": "a@b", "sha256": HASH.to_uppercase()},
            {"op": "register", "addon_id": "a@b", "sha256": HASH},
        ])))
        .unwrap();
        assert_eq!(m.write_id.as_str(), "w-1");
        assert_eq!(m.ops.len(), 4);
        assert!(m.ops.iter().all(|op| op.pair.sha256.to_string() == HASH));
        assert_eq!(
            m.ops[0].action,
            Action::Register {
                version: Some(Version::parse("1.4.2").unwrap())
            }
        );
        assert_eq!(m.ops[3].action, Action::Register { version: None });
        let keys: Vec<_> = m.keyed_ops().map(|(k, _)| k).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "later ops are newer");
    }

    #[test]
    fn rejections_name_the_field_and_keep_the_write_id() {
        let op = |o: Value| message(json!([o]));
        let cases = [
            (
                op(json!({"op": "register", "addon_id": "nope", "sha256": HASH})),
                "invalid ops[0].addon_id",
            ),
            (
                op(json!({"op": "register", "addon_id": "a@b", "sha256": "12"})),
                "invalid ops[0].sha256",
            ),
            (
                op(json!({"op": "register", "addon_id": "a@b"})),
                "missing field ops[0].sha256",
            ),
            (
                op(json!({"op": "frob", "addon_id": "a@b", "sha256": HASH})),
                "unknown op at ops[0]",
            ),
            (
                op(json!({"op": "register", "addon_id": "a@b", "sha256": HASH, "version": 3})),
                "invalid ops[0].version",
            ),
            (op(json!(7)), "invalid ops[0]"),
            (message(json!([])), "ops must hold 1 to 10000 ops, not 0"),
            (message(json!({})), "invalid ops"),
        ];
        for (body, expected) in cases {
            let rejection = parse(&body).unwrap_err();
            assert!(
                rejection.reason.to_string().starts_with(expected),
                "{rejection} vs {expected}"
            );
            assert_eq!(rejection.write_id.unwrap().as_str(), "w-1");
        }
    }

    #[test]
    fn a_nul_in_any_text_is_invalid_input_with_a_clear_reason() {
        let with_version = |v: &str| {
            message(json!([{"op": "register", "addon_id": "a@b", "sha256": HASH, "version": v}]))
        };
        let rejection = parse(&with_version("1.0\u{0}evil")).unwrap_err();
        assert_eq!(rejection.reason.code(), "invalid_field");
        assert_eq!(
            rejection.reason.to_string(),
            "invalid ops[0].version: must not contain U+0000 (NUL)"
        );
        assert_eq!(rejection.write_id.unwrap().as_str(), "w-1");
        // Reasons are stored as text too: the ones that echo input escape it.
        let op = message(json!([{"op": "fr\u{0}b", "addon_id": "a@b", "sha256": HASH}]));
        let reason = parse(&op).unwrap_err().reason.to_string();
        assert!(!reason.contains('\0'), "{reason:?}");
        let mut v = with_version("1");
        v["v"] = json!("\u{0}");
        let reason = parse(&v).unwrap_err().reason.to_string();
        assert!(!reason.contains('\0'), "{reason:?}");
    }

    #[test]
    fn message_level_rejections() {
        let mut m = message(json!([{"op": "delete", "addon_id": "a@b", "sha256": HASH}]));
        assert!(parse(&m).is_ok());
        m["v"] = json!(2);
        assert_eq!(reason(&m), "unsupported v: 2 (only 1 is known)");
        m["v"] = json!(1);
        m["issued_at"] = json!("2026-11-22");
        assert!(reason(&m).starts_with("invalid issued_at"));
        m.as_object_mut().unwrap().remove("issued_at");
        assert_eq!(reason(&m), "missing field issued_at");
        m["write_id"] = json!("not valid!");
        let rejection = parse(&m).unwrap_err();
        assert!(rejection.write_id.is_none());
        assert!(rejection.reason.to_string().starts_with("invalid write_id"));

        assert_eq!(
            WriteMessage::parse(b"[]").unwrap_err().reason,
            RejectReason::NotAnObject
        );
        assert_eq!(
            WriteMessage::parse(b"{").unwrap_err().reason.code(),
            "invalid_json"
        );
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            WriteMessage::parse(&huge).unwrap_err().reason.code(),
            "body_too_large"
        );
    }

    #[test]
    fn duplicate_keys_are_invalid_json_at_any_depth() {
        let op = format!(r#"{{"op": "delete", "addon_id": "a@b", "sha256": "{HASH}"}}"#);
        let body = |fields: &str, op: &str| {
            format!(
                r#"{{"v": 1, "write_id": "w-1", {fields}"issued_at": "2026-11-22T10:00:00Z", "ops": [{op}]}}"#
            )
        };
        assert!(WriteMessage::parse(body("", &op).as_bytes()).is_ok());
        let twice = [
            body(r#""write_id": "w-2", "#, &op),
            body(r#""v": 2, "#, &op),
            body(
                "",
                &op.replace(r#""op": "delete""#, r#""op": "delete", "op": "register""#),
            ),
            body("", &op.replace('}', r#", "x": {"k": 1, "k": 1}}"#)),
        ];
        for b in twice {
            let rejection = WriteMessage::parse(b.as_bytes()).unwrap_err();
            assert_eq!(rejection.reason.code(), "invalid_json", "{b}");
            assert!(
                rejection.reason.to_string().contains("duplicate key"),
                "{b}"
            );
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            WriteMessage::parse(deep.as_bytes())
                .unwrap_err()
                .reason
                .code(),
            "invalid_json",
            "nesting past serde_json's limit is refused, not a stack overflow"
        );
    }

    #[test]
    fn op_count_limit_is_inclusive() {
        let op = json!({"op": "delete", "addon_id": "a@b", "sha256": HASH});
        assert!(parse(&message(Value::Array(vec![op.clone(); MAX_OPS]))).is_ok());
        let too_many = message(Value::Array(vec![op; MAX_OPS + 1]));
        assert_eq!(
            parse(&too_many).unwrap_err().reason,
            RejectReason::OpCount(MAX_OPS + 1)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = WriteMessage::parse(&body);
        }

        #[test]
        fn arbitrary_json_values_never_panic(v in arb_json()) {
            let _ = WriteMessage::parse(v.to_string().as_bytes());
            let _ = parse(&message(json!([v])));
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::from),
            Just(Value::from("register")),
            Just(Value::from(HASH)),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::hash_map(
                    prop_oneof![
                        Just("op".to_string()),
                        Just("addon_id".to_string()),
                        Just("sha256".to_string()),
                        Just("version".to_string()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
