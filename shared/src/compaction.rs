//! The ops a pair keeps, and the contract's compaction ("How a record is
//! computed"): ops older than their own pair's newest op by more than the
//! retention may be folded into a compacted base; an op arriving later at or
//! below that base is superseded. A pair of which nothing was compacted
//! applies any op, however old: compaction is relative to what the pair
//! holds, never to the clock.
//!
//! [`PairHistory`] is the one definition of that rule. The worker stores a
//! pair's history as its rows (kept ops plus the base) and the model-based
//! tests check the whole write path against it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::domain::Timestamp;
use crate::record::{self, RecordState};
use crate::write::{Action, OpKey};

/// Most ops a pair keeps, however recent. The contract's retention rule alone
/// would let a pair written thousands of times a day grow without bound, and
/// every rewrite of its history with it; past this many the oldest are
/// compacted too. Order independence then holds for the newest this many ops
/// of a pair (a documented limit: `docs/compaction.md`).
pub const MAX_OPS_KEPT: usize = 10_000;

/// How far behind its pair's newest op an op may be compacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(Duration);

/// A retention below the contract's floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("retention of {0:?} is below the contract's floor of one day")]
pub struct RetentionTooShort(pub Duration);

impl Retention {
    /// The contract's floor: below a day, an ordinary redelivery after an
    /// outage could find its op compacted away.
    pub const FLOOR: Duration = Duration::from_secs(24 * 3600);
    /// The contract's default, 7 days.
    pub const DEFAULT: Retention = Retention(Duration::from_secs(7 * 24 * 3600));

    /// A retention of at least [`Retention::FLOOR`].
    pub fn new(d: Duration) -> Result<Self, RetentionTooShort> {
        if d < Self::FLOOR {
            Err(RetentionTooShort(d))
        } else {
            Ok(Self(d))
        }
    }

    /// How long an op is kept behind its pair's newest one.
    pub fn duration(&self) -> Duration {
        self.0
    }

    /// Whether `op` may be compacted in a pair whose newest op is `newest`.
    pub fn compacts(&self, op: Timestamp, newest: Timestamp) -> bool {
        let gap = newest.unix_micros().saturating_sub(op.unix_micros());
        gap > 0 && gap as u128 > self.0.as_micros()
    }
}

/// What compaction folded away: the state after the compacted ops, and the
/// greatest key among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// Ops at or below this key are superseded on arrival.
    pub through: OpKey,
    /// The fold of every compacted op (`None`: no record, e.g. deleted).
    pub state: Option<RecordState>,
}

/// What became of an op offered to a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Kept: it now takes part in the fold.
    Kept,
    /// Its key was kept already (a redelivery): nothing changed.
    Duplicate,
    /// At or below the compacted base: older than anything the pair can
    /// still change, so it is superseded.
    BelowCompacted,
}

/// One pair's ops: a compacted base, if anything was compacted, and the kept
/// ops in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairHistory {
    /// What was compacted, if anything.
    pub base: Option<Compacted>,
    /// The kept ops, by key.
    pub ops: BTreeMap<OpKey, Action>,
}

impl PairHistory {
    /// A history from its stored parts.
    pub fn new(base: Option<Compacted>, ops: impl IntoIterator<Item = (OpKey, Action)>) -> Self {
        Self {
            base,
            ops: ops.into_iter().collect(),
        }
    }

    /// Offers an op; see [`Offered`].
    pub fn offer(&mut self, key: OpKey, action: Action) -> Offered {
        if self.base.as_ref().is_some_and(|b| key <= b.through) {
            return Offered::BelowCompacted;
        }
        match self.ops.entry(key) {
            std::collections::btree_map::Entry::Occupied(_) => Offered::Duplicate,
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(action);
                Offered::Kept
            }
        }
    }

    /// The newest key the pair holds.
    pub fn newest(&self) -> Option<&OpKey> {
        self.ops
            .keys()
            .next_back()
            .or(self.base.as_ref().map(|b| &b.through))
    }

    /// Whether [`PairHistory::compact`] would fold anything away.
    pub fn compaction_due(&self, retention: Retention) -> bool {
        let Some(newest) = self.ops.keys().next_back() else {
            return false;
        };
        self.ops.len() > MAX_OPS_KEPT
            || self
                .ops
                .keys()
                .next()
                .is_some_and(|oldest| retention.compacts(oldest.issued_at, newest.issued_at))
    }

    /// Folds into the base every op older than the newest by more than the
    /// retention, and the oldest beyond [`MAX_OPS_KEPT`]. The newest op is
    /// always kept.
    pub fn compact(&mut self, retention: Retention) {
        let Some(newest) = self.ops.keys().next_back().map(|k| k.issued_at) else {
            return;
        };
        while self.ops.len() > 1 {
            let Some(oldest) = self.ops.keys().next() else {
                break;
            };
            if self.ops.len() <= MAX_OPS_KEPT && !retention.compacts(oldest.issued_at, newest) {
                break;
            }
            let Some((key, action)) = self.ops.pop_first() else {
                break;
            };
            let before = self.base.take().and_then(|b| b.state);
            let state = record::apply(before, &action, key.issued_at);
            self.base = Some(Compacted {
                through: key,
                state,
            });
        }
    }

    /// The pair's record: the kept ops folded onto the base.
    pub fn state(&self) -> Option<RecordState> {
        let base = self.base.as_ref().and_then(|b| b.state.clone());
        self.ops.iter().fold(base, |s, (key, action)| {
            record::apply(s, action, key.issued_at)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Version, WriteId};
    use proptest::prelude::*;

    const DAY: i64 = 24 * 3600 * 1_000_000;

    fn key(micros: i64, write: &str) -> OpKey {
        OpKey {
            issued_at: Timestamp::from_utc(
                chrono::DateTime::from_timestamp_micros(micros).unwrap(),
            ),
            write_id: WriteId::parse(write).unwrap(),
            index: 0,
        }
    }

    fn register() -> Action {
        Action::Register { version: None }
    }

    #[test]
    fn retention_has_a_floor_of_one_day() {
        assert!(Retention::new(Duration::ZERO).is_err());
        assert!(Retention::new(Duration::from_secs(3600)).is_err());
        assert!(Retention::new(Retention::FLOOR).is_ok());
    }

    #[test]
    fn a_pair_with_nothing_compacted_applies_any_op_however_old() {
        let mut h = PairHistory::default();
        let years_ago = key(1_000 * DAY, "old");
        assert_eq!(h.offer(years_ago.clone(), register()), Offered::Kept);
        h.compact(Retention::DEFAULT);
        assert_eq!(h.state().unwrap().registered_at, Some(years_ago.issued_at));
        assert!(
            h.base.is_none(),
            "a lone op is its pair's newest: never compacted"
        );
    }

    #[test]
    fn compaction_is_relative_to_the_pairs_newest_op() {
        let mut h = PairHistory::default();
        h.offer(key(0, "a"), register());
        h.offer(key(DAY, "b"), Action::Revoke);
        h.offer(key(9 * DAY, "c"), register());
        assert!(h.compaction_due(Retention::DEFAULT));
        let before = h.state();
        h.compact(Retention::DEFAULT);
        assert_eq!(h.state(), before, "compaction never changes the record");
        assert_eq!(h.ops.len(), 1);
        assert_eq!(h.base.as_ref().unwrap().through, key(DAY, "b"));
        // Below the base: superseded. Above it: folded in.
        assert_eq!(
            h.offer(key(DAY / 2, "z"), Action::Delete),
            Offered::BelowCompacted
        );
        assert_eq!(h.offer(key(2 * DAY, "y"), Action::Delete), Offered::Kept);
        assert_eq!(
            h.state().unwrap().registered_at,
            Some(key(9 * DAY, "c").issued_at)
        );
    }

    #[test]
    fn a_tombstone_keeps_its_delete() {
        let mut h = PairHistory::default();
        h.offer(key(0, "a"), register());
        h.offer(key(30 * DAY, "d"), Action::Delete);
        h.compact(Retention::DEFAULT);
        assert_eq!(h.state(), None);
        assert_eq!(h.ops.len(), 1, "the delete is the newest op: kept");
        // An op older than the delete but above the base stays buried by it.
        assert_eq!(h.offer(key(29 * DAY, "r"), register()), Offered::Kept);
        assert_eq!(h.state(), None);
    }

    #[test]
    fn history_is_bounded_in_count() {
        let mut h = PairHistory::default();
        for i in 0..(MAX_OPS_KEPT as i64 + 10) {
            h.offer(key(i, &format!("w{i}")), register());
        }
        assert!(h.compaction_due(Retention::DEFAULT));
        let before = h.state();
        h.compact(Retention::DEFAULT);
        assert_eq!(h.ops.len(), MAX_OPS_KEPT);
        assert_eq!(h.state(), before);
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            prop::option::of("[0-9]\\.[0-9]").prop_map(|v| Action::Register {
                version: v.map(|v| Version::parse(&v).unwrap())
            }),
            Just(Action::Revoke),
            Just(Action::Delete),
        ]
    }

    proptest! {
        /// Arrival order, redeliveries and compaction at any moment don't
        /// change the record, as long as every op arrives within the
        /// retention of its pair's newest op so far (the contract's promise).
        #[test]
        fn order_and_compaction_do_not_change_the_record(
            ops in prop::collection::vec((0i64..40, action()), 1..30),
            order in prop::collection::vec(any::<prop::sample::Index>(), 1..60),
            compact_every in 1usize..5,
        ) {
            let retention = Retention::new(Duration::from_secs(7 * 24 * 3600)).unwrap();
            let keyed: Vec<(OpKey, Action)> = ops
                .iter()
                .enumerate()
                .map(|(i, (day, a))| (key(day * DAY, &format!("w{i}")), a.clone()))
                .collect();
            let mut h = PairHistory::default();
            let mut received: Vec<(OpKey, Action)> = Vec::new();
            let arrivals = keyed.iter().cloned().chain(order.iter().map(|i| i.get(&keyed).clone()));
            for (n, (k, a)) in arrivals.enumerate() {
                let within = h.newest().is_none_or(|newest| !retention.compacts(k.issued_at, newest.issued_at));
                let offered = h.offer(k.clone(), a.clone());
                if within {
                    prop_assert_ne!(offered, Offered::BelowCompacted);
                }
                if offered != Offered::BelowCompacted {
                    received.push((k, a));
                }
                if n % compact_every == 0 {
                    h.compact(retention);
                }
                let model = record::fold(received.iter().map(|(k, a)| (k, a)));
                prop_assert_eq!(h.state(), model);
            }
        }
    }
}
