//! The ops kept with each record (`records.ops`, a JSON array in key
//! order), so that a late op can be folded in with everything its pair
//! received before, and the pair's compacted base (`records.compacted`).

use serde::{Deserialize, Serialize};

use shared::compaction::Compacted;
use shared::domain::{Timestamp, Version, WriteId};
use shared::record::{RecordState, Status};
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
    /// A compacted base names an unknown status.
    #[error("stored compacted status unknown")]
    Status,
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

/// The stored form of a compacted base: the greatest compacted key and the
/// state the compacted ops folded to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredCompacted {
    t: i64,
    w: WriteId,
    i: u32,
    /// `registered`, `revoked`, or null for no record.
    s: Option<String>,
    v: Option<Version>,
    /// `registered_at` in microseconds.
    r: Option<i64>,
}

fn timestamp(micros: i64) -> Result<Timestamp, HistoryError> {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(Timestamp::from_utc)
        .ok_or(HistoryError::Time)
}

/// Writes a compacted base in its stored form.
pub fn encode_compacted(base: &Compacted) -> String {
    let stored = StoredCompacted {
        t: base.through.issued_at.unix_micros(),
        w: base.through.write_id.clone(),
        i: base.through.index,
        s: base.state.as_ref().map(|s| s.status.as_str().to_owned()),
        v: base.state.as_ref().and_then(|s| s.version.clone()),
        r: base
            .state
            .as_ref()
            .and_then(|s| s.registered_at.map(|t| t.unix_micros())),
    };
    // A plain struct of strings and integers: serialising cannot fail.
    serde_json::to_string(&stored).unwrap_or_else(|_| "null".into())
}

/// Reads a compacted base back.
pub fn decode_compacted(json: &str) -> Result<Compacted, HistoryError> {
    let stored: StoredCompacted = serde_json::from_str(json)?;
    let through = OpKey {
        issued_at: timestamp(stored.t)?,
        write_id: stored.w,
        index: stored.i,
    };
    let state = match stored.s {
        None => None,
        Some(s) => Some(RecordState {
            status: Status::parse(&s).ok_or(HistoryError::Status)?,
            version: stored.v,
            registered_at: stored.r.map(timestamp).transpose()?,
            // The newest op is never compacted, so a kept op always sets it
            // again; the base's own time is its last compacted op's.
            updated_at: through.issued_at,
        }),
    };
    Ok(Compacted { through, state })
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

    #[test]
    fn compacted_bases_round_trip() {
        let through = OpKey {
            issued_at: Timestamp::parse("2020-01-02T00:00:00.000001Z").unwrap(),
            write_id: WriteId::parse("w-9").unwrap(),
            index: 7,
        };
        let registered = RecordState {
            status: Status::Revoked,
            version: Some(Version::parse("2.0").unwrap()),
            registered_at: Some(Timestamp::parse("2019-05-01T00:00:00Z").unwrap()),
            updated_at: through.issued_at,
        };
        for state in [None, Some(registered)] {
            let base = Compacted {
                through: through.clone(),
                state,
            };
            assert_eq!(decode_compacted(&encode_compacted(&base)).unwrap(), base);
        }
    }
}
