//! Records and the contract's fold ("How a record is computed"): the one
//! definition of what a pair's record is, given the ops received for it.

use serde::Serialize;

use crate::domain::{AddonId, Sha256, Timestamp, Version};
use crate::write::{Action, OpKey};

/// Whether AMO still vouches for a known file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Known and good.
    Registered,
    /// Disabled or blocked by AMO.
    Revoked,
}

impl Status {
    /// The contract's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Registered => "registered",
            Status::Revoked => "revoked",
        }
    }

    /// Parses the contract's spelling (as stored).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "registered" => Some(Status::Registered),
            "revoked" => Some(Status::Revoked),
            _ => None,
        }
    }
}

/// What a pair's record says, without the pair itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordState {
    /// Registered or revoked.
    pub status: Status,
    /// The version of the last register (kept by revokes).
    pub version: Option<Version>,
    /// The first register of the record's current life, if any.
    pub registered_at: Option<Timestamp>,
    /// `issued_at` of the newest op folded in.
    pub updated_at: Timestamp,
}

/// A pair's record, as the gateway answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// The add-on.
    pub addon_id: AddonId,
    /// The file's digest.
    pub sha256: Sha256,
    /// Registered or revoked.
    pub status: Status,
    /// The add-on version, or null.
    pub version: Option<Version>,
    /// The first register of the record's current life, or null.
    pub registered_at: Option<Timestamp>,
    /// `issued_at` of the record's newest op.
    pub updated_at: Timestamp,
}

/// Folds one op into a pair's state; `None` is "no record".
pub fn apply(
    state: Option<RecordState>,
    action: &Action,
    issued_at: Timestamp,
) -> Option<RecordState> {
    match (action, state) {
        (Action::Delete, _) => None,
        (Action::Register { version }, None) => Some(RecordState {
            status: Status::Registered,
            version: version.clone(),
            registered_at: Some(issued_at),
            updated_at: issued_at,
        }),
        (Action::Register { version }, Some(s)) => Some(RecordState {
            status: Status::Registered,
            version: version.clone(),
            registered_at: s.registered_at.or(Some(issued_at)),
            updated_at: issued_at,
        }),
        (Action::Revoke, None) => Some(RecordState {
            status: Status::Revoked,
            version: None,
            registered_at: None,
            updated_at: issued_at,
        }),
        (Action::Revoke, Some(s)) => Some(RecordState {
            status: Status::Revoked,
            updated_at: issued_at,
            ..s
        }),
    }
}

/// The record of a pair from all its ops, in any order: they are sorted by
/// op key and folded from "no record". The same key twice counts once.
pub fn fold<'a>(ops: impl IntoIterator<Item = (&'a OpKey, &'a Action)>) -> Option<RecordState> {
    let mut ops: Vec<_> = ops.into_iter().collect();
    ops.sort_unstable_by(|a, b| a.0.cmp(b.0));
    ops.dedup_by(|a, b| a.0 == b.0);
    ops.into_iter().fold(None, |state, (key, action)| {
        apply(state, action, key.issued_at)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WriteId;
    use proptest::prelude::*;

    fn key(micros: i64, write: &str, index: u32) -> OpKey {
        OpKey {
            issued_at: Timestamp::from_utc(
                chrono::DateTime::from_timestamp_micros(micros).unwrap(),
            ),
            write_id: WriteId::parse(write).unwrap(),
            index,
        }
    }

    fn register(v: Option<&str>) -> Action {
        Action::Register {
            version: v.map(|v| Version::parse(v).unwrap()),
        }
    }

    #[test]
    fn contract_table() {
        let (k1, k2, k3, k4) = (
            key(1, "a", 0),
            key(2, "a", 0),
            key(3, "a", 0),
            key(4, "a", 0),
        );
        let revoked_first = fold([(&k1, &Action::Revoke)]).unwrap();
        assert_eq!(revoked_first.status, Status::Revoked);
        assert_eq!(
            (revoked_first.version, revoked_first.registered_at),
            (None, None)
        );

        let reg = register(Some("1.0"));
        let reg2 = register(None);
        let s = fold([(&k1, &Action::Revoke), (&k2, &reg), (&k3, &Action::Revoke)]).unwrap();
        assert_eq!(s.status, Status::Revoked);
        assert_eq!(
            s.version.unwrap().as_str(),
            "1.0",
            "revoke keeps the version"
        );
        assert_eq!(
            s.registered_at,
            Some(k2.issued_at),
            "filled by the first register"
        );
        assert_eq!(s.updated_at, k3.issued_at);

        let s = fold([(&k1, &reg), (&k2, &reg2)]).unwrap();
        assert_eq!(s.version, None, "a register without version clears it");
        assert_eq!(
            s.registered_at,
            Some(k1.issued_at),
            "first register of the life"
        );

        assert_eq!(fold([(&k1, &reg), (&k2, &Action::Delete)]), None);
        let reborn = fold([(&k1, &reg), (&k2, &Action::Delete), (&k4, &reg2)]).unwrap();
        assert_eq!(
            reborn.registered_at,
            Some(k4.issued_at),
            "a new life after delete"
        );
        assert_eq!(fold([(&k1, &Action::Delete)]), None);
    }

    #[test]
    fn same_instant_orders_by_write_id_then_index() {
        let (a0, a1, b0) = (key(5, "a", 0), key(5, "a", 1), key(5, "b", 0));
        let s = fold([
            (&b0, &Action::Revoke),
            (&a1, &register(None)),
            (&a0, &Action::Delete),
        ]);
        assert_eq!(s.unwrap().status, Status::Revoked);
        let s = fold([(&a1, &Action::Delete), (&a0, &register(None))]);
        assert_eq!(s, None);
    }

    fn arb_action() -> impl Strategy<Value = Action> {
        prop_oneof![
            proptest::option::of("[0-9.]{1,5}").prop_map(|v| register(v.as_deref())),
            Just(Action::Revoke),
            Just(Action::Delete),
        ]
    }

    fn arb_ops() -> impl Strategy<Value = Vec<(OpKey, Action)>> {
        proptest::collection::vec(((0i64..6), "[ab]", 0u32..3, arb_action()), 0..12).prop_map(|v| {
            v.into_iter()
                .map(|(t, w, i, a)| (key(t, &w, i), a))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn any_permutation_gives_the_same_record(ops in arb_ops(), seed in any::<u64>()) {
            // Duplicate keys carry one op each in reality; keep the first one.
            let mut ops = ops;
            ops.sort_by(|a, b| a.0.cmp(&b.0));
            ops.dedup_by(|a, b| a.0 == b.0);
            let expected = fold(ops.iter().map(|(k, a)| (k, a)));
            let mut shuffled = ops.clone();
            let mut rng = seed;
            for i in (1..shuffled.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (rng >> 33) as usize % (i + 1));
            }
            let mut redelivered = shuffled.clone();
            redelivered.extend(shuffled.iter().take(3).cloned());
            prop_assert_eq!(fold(redelivered.iter().map(|(k, a)| (k, a))), expected);
        }

        #[test]
        fn folding_a_newer_op_onto_the_state_equals_a_full_fold(ops in arb_ops(), extra in arb_action()) {
            // The worker's fast path: the new op is newer than all stored ones.
            let state = fold(ops.iter().map(|(k, a)| (k, a)));
            let newest = key(100, "z", 0);
            let fast = apply(state, &extra, newest.issued_at);
            let full = fold(ops.iter().map(|(k, a)| (k, a)).chain([(&newest, &extra)]));
            prop_assert_eq!(fast, full);
        }
    }
}
