//! The randomised write mix of the model-based tests (the worker's and the
//! gateway's): seedable, the same on every machine, with `issued_at`s from a
//! minute to five years old and one message in ten published twice.

use serde_json::{Value, json};

use shared::domain::{AddonId, Sha256};
use shared::write::{Pair, WriteMessage};

/// The seed of the test command's runs.
pub const DEFAULT_SEED: u64 = 0x00ad_d0e5;
/// Writes in the test command's runs.
pub const DEFAULT_WRITES: usize = 600;
/// Moments the writes cluster around.
pub const ERAS: u64 = 8;
/// Pairs written from each era only.
pub const PAIRS_PER_ERA: u64 = 6;
/// Pairs written from every era: their ops span years, so they compact.
pub const SPREAD_PAIRS: u64 = 4;
const HOUR: u64 = 3_600_000_000;
const FIVE_YEARS: u64 = 5 * 365 * 24 * HOUR;

/// `name` from the environment, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// splitmix64: small, seedable, and the same on every machine.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What the test sends: the messages in publishing order (duplicates
/// included) and every distinct write, parsed.
pub struct Plan {
    /// The messages, in publishing order, duplicates included.
    pub bodies: Vec<Value>,
    /// Every distinct write, in the order it was generated.
    pub writes: Vec<WriteMessage>,
    /// The pairs written from every era.
    pub spread: Vec<Pair>,
}

/// `count` writes (and their duplicates) from `seed`.
pub fn plan(seed: u64, count: usize) -> Plan {
    let mut rng = Rng(seed);
    let now = chrono::Utc::now().timestamp_micros() as u64;
    // Each era is a moment from a minute to five years ago (log-uniform), and
    // its writes fall within a few hours after it: within the retention of
    // each other, where the contract promises order independence.
    let eras: Vec<u64> = (0..ERAS)
        .map(|_| {
            let exponent = rng.below(1000) as f64 / 1000.0;
            let ago = 60_000_000f64 * (FIVE_YEARS as f64 / 60_000_000f64).powf(exponent);
            now - ago as u64
        })
        .collect();
    let mut writes = Vec::with_capacity(count);
    let mut bodies = Vec::with_capacity(count * 11 / 10);
    for i in 0..count {
        let era = rng.below(ERAS);
        let window = (now - eras[era as usize]).min(6 * HOUR);
        let issued_at = eras[era as usize] + rng.below(window);
        let issued_at = chrono::DateTime::from_timestamp_micros(issued_at as i64)
            .expect("in range")
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        let ops: Vec<Value> = (0..1 + rng.below(4))
            .map(|_| {
                let (addon, n) = if rng.below(100) < 15 {
                    ("spread@model".to_string(), 9_000 + rng.below(SPREAD_PAIRS))
                } else {
                    (format!("era{era}@model"), era * 100 + rng.below(PAIRS_PER_ERA))
                };
                let sha = hash(n as u32);
                match rng.below(10) {
                    0..=5 => {
                        let version = [json!("1.0"), json!("2.0.1"), Value::Null]
                            [rng.below(3) as usize]
                            .clone();
                        json!({"op": "register", "addon_id": addon, "sha256": sha, "version": version})
                    }
                    6 | 7 => json!({"op": "revoke", "addon_id": addon, "sha256": sha}),
                    _ => json!({"op": "delete", "addon_id": addon, "sha256": sha}),
                }
            })
            .collect();
        let body = json!({"v": 1, "write_id": format!("m{seed:x}-{i}"), "issued_at": issued_at, "ops": ops});
        writes.push(WriteMessage::parse(body.to_string().as_bytes()).expect("valid"));
        bodies.push(body);
    }
    // Shuffled, and one in ten published twice (a redelivery AMO's outbox
    // or a crash would cause).
    for i in (1..bodies.len()).rev() {
        bodies.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for _ in 0..count / 10 {
        let again = bodies[rng.below(count as u64) as usize].clone();
        let at = rng.below(bodies.len() as u64) as usize;
        bodies.insert(at, again);
    }
    let spread = (0..SPREAD_PAIRS)
        .map(|k| Pair {
            addon_id: AddonId::parse("spread@model").expect("valid"),
            sha256: Sha256::parse(&hash(9_000 + k as u32)).expect("valid"),
        })
        .collect();
    Plan {
        bodies,
        writes,
        spread,
    }
}

/// A digest made from a number.
pub fn hash(n: u32) -> String {
    format!("{n:064x}")
}
