//! Write receipts: what became of each processed write.

use serde::Serialize;

use crate::domain::{Timestamp, WriteId};

/// The outcome of a processed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptStatus {
    /// At least one op was the newest of its pair when processed.
    Applied,
    /// Every op was older than one already received for its pair.
    Superseded,
    /// Bad input; `reason` says what.
    Rejected,
}

impl ReceiptStatus {
    /// The contract's spelling (as stored).
    pub fn as_str(&self) -> &'static str {
        match self {
            ReceiptStatus::Applied => "applied",
            ReceiptStatus::Superseded => "superseded",
            ReceiptStatus::Rejected => "rejected",
        }
    }

    /// Parses the contract's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "applied" => Some(Self::Applied),
            "superseded" => Some(Self::Superseded),
            "rejected" => Some(Self::Rejected),
            _ => None,
        }
    }
}

/// The receipt of one write, as the gateway answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The write it is for.
    pub write_id: WriteId,
    /// What became of it.
    pub status: ReceiptStatus,
    /// Why it was rejected; null unless rejected.
    pub reason: Option<String>,
    /// When a worker committed it.
    pub processed_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_the_contract_says() {
        let r = Receipt {
            write_id: WriteId::parse("w1").unwrap(),
            status: ReceiptStatus::Applied,
            reason: None,
            processed_at: Timestamp::parse("2026-11-22T10:00:00Z").unwrap(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"write_id":"w1","status":"applied","reason":null,"processed_at":"2026-11-22T10:00:00.000000Z"}"#
        );
        for s in [
            ReceiptStatus::Applied,
            ReceiptStatus::Superseded,
            ReceiptStatus::Rejected,
        ] {
            assert_eq!(ReceiptStatus::parse(s.as_str()), Some(s));
        }
    }
}
