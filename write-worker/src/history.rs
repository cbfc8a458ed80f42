//! The ops kept with each record (`records.ops`, a JSON array), so that a
//! late op can be folded in with everything its pair received before.

use serde::{Deserialize, Serialize};

use shared::domain::{Timestamp, Version, WriteId};
use shared::write::{Action, OpKey};

/// One stored op: its key and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOp {
    /// `issued_at` in microseconds since the epoch.
    t: i64,
    /// `write_id`.
    w: WriteId,
    /// Index in the message's `ops`.
    i: u32,
    /// `register`, `revoke` or `delete`.
    op: StoredAction,
    /// The register's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<Version>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoredAction {
    Register,
    Revoke,
    Delete,
}

/// Why stored history could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The JSON is not an array of stored ops.
    #[error("stored ops are not readable: {0}")]
    Json(#[from] serde_json::Error),
    /// A timestamp is out of range.
    #[error("stored op time out of range")]
    Time,
}

impl StoredOp {
    /// The stored form of an op.
    pub fn new(key: &OpKey, action: &Action) -> Self {
        let (op, v) = match action {
            Action::Register { version } => (StoredAction::Register, version.clone()),
            Action::Revoke => (StoredAction::Revoke, None),
            Action::Delete => (StoredAction::Delete, None),
        };
        Self {
            t: key.issued_at.unix_micros(),
            w: key.write_id.clone(),
            i: key.index,
            op,
            v,
        }
    }

    /// The op's key and action.
    pub fn into_op(self) -> Result<(OpKey, Action), HistoryError> {
        let issued_at = chrono::DateTime::from_timestamp_micros(self.t)
            .map(Timestamp::from_utc)
            .ok_or(HistoryError::Time)?;
        let action = match self.op {
            StoredAction::Register => Action::Register { version: self.v },
            StoredAction::Revoke => Action::Revoke,
            StoredAction::Delete => Action::Delete,
        };
        let key = OpKey {
            issued_at,
            write_id: self.w,
            index: self.i,
        };
        Ok((key, action))
    }
}

/// Reads a pair's stored ops.
pub fn decode(json: &str) -> Result<Vec<(OpKey, Action)>, HistoryError> {
    serde_json::from_str::<Vec<StoredOp>>(json)?
        .into_iter()
        .map(StoredOp::into_op)
        .collect()
}

/// Writes ops in their stored form.
pub fn encode<'a>(ops: impl IntoIterator<Item = (&'a OpKey, &'a Action)>) -> String {
    let stored: Vec<StoredOp> = ops.into_iter().map(|(k, a)| StoredOp::new(k, a)).collect();
    // Serialising plain structs of strings and integers cannot fail.
    serde_json::to_string(&stored).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let key = OpKey {
            issued_at: Timestamp::parse("2026-11-22T10:00:00.123456Z").unwrap(),
            write_id: WriteId::parse("w-1").unwrap(),
            index: 3,
        };
        let ops = vec![
            (
                key.clone(),
                Action::Register {
                    version: Some(Version::parse("1.0").unwrap()),
                },
            ),
            (key.clone(), Action::Register { version: None }),
            (key.clone(), Action::Revoke),
            (key, Action::Delete),
        ];
        let json = encode(ops.iter().map(|(k, a)| (k, a)));
        assert_eq!(decode(&json).unwrap(), ops);
        assert!(decode("{}").is_err());
    }
}
