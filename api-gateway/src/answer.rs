//! A found record's answer, encoded once: its JSON body and its validators.
//! The cache keeps these, so a hit sends stored bytes and headers instead of
//! serialising and digesting the record again.

use bytes::Bytes;
use shared::record::Record;

use crate::http_caching::Validators;

/// The body and validators of a found record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordAnswer {
    /// The record as the contract's JSON object.
    pub body: Bytes,
    /// Its `ETag` and `Last-Modified`.
    pub validators: Validators,
}

impl RecordAnswer {
    /// Encodes `record`.
    pub fn of(record: &Record) -> Result<Self, serde_json::Error> {
        let body = serde_json::to_vec(record)?;
        let validators = Validators::of(&body, record.updated_at);
        Ok(Self {
            body: Bytes::from(body),
            validators,
        })
    }

    /// Bytes this answer holds on the heap, for the cache's memory bound.
    pub fn heap_bytes(&self) -> usize {
        self.body.len() + Validators::HEAP_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domain::{AddonId, Sha256, Timestamp, Version};
    use shared::record::Status;

    #[test]
    fn body_is_the_records_json_and_validators_follow_it() {
        let record = Record {
            addon_id: AddonId::parse("a@b").unwrap(),
            sha256: Sha256::from_bytes([7; 32]),
            status: Status::Registered,
            version: Some(Version::parse("1.0").unwrap()),
            registered_at: Some(Timestamp::parse("2026-11-22T10:00:00Z").unwrap()),
            updated_at: Timestamp::parse("2026-11-22T10:00:00.5Z").unwrap(),
        };
        let answer = RecordAnswer::of(&record).unwrap();
        assert_eq!(answer.body, serde_json::to_vec(&record).unwrap());
        assert_eq!(
            answer.validators,
            Validators::of(&answer.body, record.updated_at)
        );
    }
}
