//! The mix `loadtest writes` publishes: single-op and bulk writes over a
//! shared set of pairs (so ops of one pair meet across messages and
//! workers), registers, revokes and deletes, `issued_at`s shuffled against
//! the publish order (with ties, broken by `write_id`), some writes
//! published twice, and poison messages. Every pair and id carries the
//! run's tag, so a check on a running stack only looks at its own data.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use shared::domain::Timestamp;
use shared::record::{self, RecordState};
use shared::write::{Action, OpKey, WriteMessage};

use crate::BenchError;
use crate::publish::Outgoing;

/// What to publish.
#[derive(Debug, Clone, Copy)]
pub struct MixSettings {
    /// Distinct valid writes.
    pub messages: usize,
    /// Share of them carrying `bulk_ops` ops (at least one when > 0).
    pub bulk_share: f64,
    /// Ops in a bulk write.
    pub bulk_ops: usize,
    /// Share of writes published a second time (same body and id).
    pub duplicate_share: f64,
    /// Share of ops that revoke.
    pub revoke_share: f64,
    /// Share of ops that delete.
    pub delete_share: f64,
    /// Invalid messages mixed in.
    pub poison: usize,
    /// The generator's seed: the same seed gives the same mix.
    pub seed: u64,
}

/// A valid write as published and as the contract reads it.
pub struct PlannedWrite {
    /// The body.
    pub body: Vec<u8>,
    /// The body parsed by the worker's own parser.
    pub message: WriteMessage,
    /// Whether it is published twice.
    pub duplicated: bool,
}

/// An invalid message and the reason code it must be dead-lettered with.
pub struct Poison {
    /// Its AMQP `message_id`, under which it gets its `rejected` receipt.
    pub message_id: String,
    /// The body.
    pub body: Vec<u8>,
    /// `RejectReason::code` of the worker's parser for it.
    pub code: &'static str,
}

/// What is published, and in which order.
pub struct Plan {
    /// The tag every id of this run starts with (`lt-<hex>`).
    pub run: String,
    /// The valid writes.
    pub writes: Vec<PlannedWrite>,
    /// The poison messages.
    pub poison: Vec<Poison>,
    /// Publish order: `Ok(write index)` or `Err(poison index)`.
    order: Vec<Result<usize, usize>>,
}

/// One pair as the database lists it: add-on id and lowercase hex digest.
pub type PairKey = (String, String);

/// A small, seedable generator (splitmix64): the mix is reproducible from
/// the seed printed with the results.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// A count that is a share of `n`, at least one when the share is not zero.
fn share(n: usize, share: f64) -> usize {
    if share <= 0.0 || n == 0 {
        0
    } else {
        ((n as f64 * share).round() as usize).clamp(1, n)
    }
}

impl Plan {
    /// Builds the mix. Every valid body is parsed with the worker's parser
    /// and every poison body must fail it, so the plan is what the
    /// contract says it is.
    pub fn new(settings: MixSettings, base: Timestamp) -> Result<Self, BenchError> {
        let mut rng = Rng::new(settings.seed);
        let run = format!("lt-{:010x}", rng.next_u64() >> 24);
        let bulk = share(settings.messages, settings.bulk_share);
        let total_ops = bulk * settings.bulk_ops + (settings.messages - bulk);
        // ~3 ops per pair on average, so that most pairs see several ops
        // from different messages, in both orders.
        let pairs = (total_ops / 3).max(1);
        let addon = |k: usize| format!("{run}-{}@loadtest", k % 100);
        let sha = |k: usize| format!("{k:064x}");

        let mut bulk_flags: Vec<bool> = (0..settings.messages).map(|i| i < bulk).collect();
        rng.shuffle(&mut bulk_flags);
        let mut writes = Vec::with_capacity(settings.messages);
        for (i, is_bulk) in bulk_flags.into_iter().enumerate() {
            let n_ops = if is_bulk { settings.bulk_ops } else { 1 };
            let ops: Vec<Value> = (0..n_ops)
                .map(|_| {
                    let k = rng.below(pairs);
                    let roll = rng.unit();
                    if roll < settings.delete_share {
                        json!({"op": "delete", "addon_id": addon(k), "sha256": sha(k)})
                    } else if roll < settings.delete_share + settings.revoke_share {
                        json!({"op": "revoke", "addon_id": addon(k), "sha256": sha(k)})
                    } else {
                        let version =
                            [json!("1.0"), json!("2.0.1"), Value::Null][rng.below(3)].clone();
                        json!({"op": "register", "addon_id": addon(k),
                               "sha256": format!("sha256:{}", sha(k)), "version": version})
                    }
                })
                .collect();
            // Half as many milliseconds as messages: many ties on issued_at,
            // which the write_id then orders.
            let offset = rng.below(settings.messages / 2 + 1) as i64 * 1_000;
            let issued_at = chrono::DateTime::from_timestamp_micros(base.unix_micros() + offset)
                .map(Timestamp::from_utc)
                .ok_or_else(|| BenchError::Check("issued_at out of range".into()))?;
            let body = json!({"v": 1, "write_id": format!("{run}-w{i}"),
                              "issued_at": issued_at.to_string(), "ops": ops})
            .to_string()
            .into_bytes();
            let message = WriteMessage::parse(&body)
                .map_err(|e| BenchError::Check(format!("generated write {i} is invalid: {e}")))?;
            writes.push(PlannedWrite {
                body,
                message,
                duplicated: false,
            });
        }
        let mut picks: Vec<usize> = (0..writes.len()).collect();
        rng.shuffle(&mut picks);
        for &i in picks
            .iter()
            .take(share(writes.len(), settings.duplicate_share))
        {
            writes[i].duplicated = true;
        }

        let poison = (0..settings.poison)
            .map(|n| poison(&run, n, &addon(n % pairs), &sha(n % pairs), base))
            .collect::<Result<Vec<_>, _>>()?;

        let mut order: Vec<Result<usize, usize>> = (0..writes.len()).map(Ok).collect();
        order.extend(
            writes
                .iter()
                .enumerate()
                .filter(|(_, w)| w.duplicated)
                .map(|(i, _)| Ok(i)),
        );
        order.extend((0..poison.len()).map(Err));
        rng.shuffle(&mut order);
        Ok(Self {
            run,
            writes,
            poison,
            order,
        })
    }

    /// Messages published in all (duplicates and poison included).
    pub fn publishes(&self) -> usize {
        self.order.len()
    }

    /// Ops in the valid writes.
    pub fn ops(&self) -> usize {
        self.writes.iter().map(|w| w.message.ops.len()).sum()
    }

    /// Writes published twice.
    pub fn duplicates(&self) -> usize {
        self.writes.iter().filter(|w| w.duplicated).count()
    }

    /// The messages in publish order.
    pub fn outgoing(&self) -> impl Iterator<Item = Outgoing> + '_ {
        self.order.iter().map(|entry| match *entry {
            Ok(i) => Outgoing {
                message_id: self.writes[i].message.write_id.to_string(),
                body: self.writes[i].body.clone(),
            },
            Err(p) => Outgoing {
                message_id: self.poison[p].message_id.clone(),
                body: self.poison[p].body.clone(),
            },
        })
    }

    /// Every op sent for each pair, by op key, with the write it came in.
    pub fn ops_by_pair(&self) -> BTreeMap<PairKey, BTreeMap<OpKey, (Action, usize)>> {
        let mut by_pair: BTreeMap<PairKey, BTreeMap<OpKey, (Action, usize)>> = BTreeMap::new();
        for (w, write) in self.writes.iter().enumerate() {
            for (key, op) in write.message.keyed_ops() {
                let pair = (op.pair.addon_id.to_string(), op.pair.sha256.to_string());
                by_pair
                    .entry(pair)
                    .or_default()
                    .insert(key, (op.action.clone(), w));
            }
        }
        by_pair
    }
}

/// The contract's record of a pair from the ops sent for it.
pub fn expected(ops: &BTreeMap<OpKey, (Action, usize)>) -> Option<RecordState> {
    record::fold(ops.iter().map(|(k, (a, _))| (k, a)))
}

/// The `n`-th poison message: one of several kinds of bad input. Those that
/// name a pair name one of the run's, with a valid first op, so a rejected
/// message that leaked an op would show in that pair's record.
fn poison(
    run: &str,
    n: usize,
    addon: &str,
    sha: &str,
    base: Timestamp,
) -> Result<Poison, BenchError> {
    let id = format!("{run}-p{n}");
    let at = base.to_string();
    let good = json!({"op": "register", "addon_id": addon, "sha256": sha, "version": "poison"});
    let body = match n % 10 {
        0 => format!("{{\"v\": 1, \"write_id\": \"{id}\", \"ops\": ["),
        1 => "[1, 2, 3]".to_string(),
        2 => json!({"v": 2, "write_id": id, "issued_at": at, "ops": [good]}).to_string(),
        3 => json!({"v": 1, "write_id": id, "ops": [good]}).to_string(),
        4 => json!({"v": 1, "write_id": id, "issued_at": at,
                    "ops": [good, {"op": "register", "addon_id": addon, "sha256": "12"}]})
        .to_string(),
        5 => json!({"v": 1, "write_id": id, "issued_at": at,
                    "ops": [good, {"op": "frob", "addon_id": addon, "sha256": sha}]})
        .to_string(),
        6 => json!({"v": 1, "write_id": id, "issued_at": at, "ops": []}).to_string(),
        7 => json!({"v": 1, "write_id": id, "issued_at": at,
                    "ops": [good, {"op": "delete", "addon_id": "no at sign", "sha256": sha}]})
        .to_string(),
        // An invalid write_id in the body: the receipt goes under message_id.
        8 => json!({"v": 1, "write_id": "not a write id!", "issued_at": at, "ops": [good]})
            .to_string(),
        _ => json!({"v": 1, "write_id": id, "issued_at": at,
                    "ops": [good, {"op": "register", "addon_id": addon, "sha256": sha,
                                   "version": "x".repeat(129)}]})
        .to_string(),
    };
    let code = match WriteMessage::parse(body.as_bytes()) {
        Ok(_) => {
            return Err(BenchError::Check(format!("generated poison {n} is valid")));
        }
        Err(rejection) => rejection.reason.code(),
    };
    Ok(Poison {
        message_id: id,
        body: body.into_bytes(),
        code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MixSettings {
        MixSettings {
            messages: 500,
            bulk_share: 0.01,
            bulk_ops: 100,
            duplicate_share: 0.1,
            revoke_share: 0.1,
            delete_share: 0.05,
            poison: 25,
            seed: 7,
        }
    }

    #[test]
    fn the_plan_has_the_mix_asked_for() {
        let plan = Plan::new(settings(), Timestamp::now()).unwrap();
        assert_eq!(plan.writes.len(), 500);
        assert_eq!(plan.duplicates(), 50);
        assert_eq!(plan.poison.len(), 25);
        assert_eq!(plan.publishes(), 500 + 50 + 25);
        assert_eq!(plan.ops(), 5 * 100 + 495);
        let kinds: std::collections::BTreeSet<_> = plan.poison.iter().map(|p| p.code).collect();
        assert!(kinds.len() >= 6, "{kinds:?}");
        let by_pair = plan.ops_by_pair();
        assert!(
            by_pair.values().any(|ops| ops.len() >= 3),
            "pairs are shared"
        );
        let actions: Vec<_> = by_pair
            .values()
            .flat_map(|ops| ops.values().map(|(a, _)| a.name()))
            .collect();
        for name in ["register", "revoke", "delete"] {
            assert!(actions.contains(&name), "{name}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let base = Timestamp::now();
        let a = Plan::new(settings(), base).unwrap();
        let b = Plan::new(settings(), base).unwrap();
        assert_eq!(a.run, b.run);
        let bodies = |p: &Plan| p.outgoing().map(|o| o.body).collect::<Vec<_>>();
        assert_eq!(bodies(&a), bodies(&b));
    }
}
