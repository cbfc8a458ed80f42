//! Invalidation events: what workers tell every gateway after a commit.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::write::Pair;

/// A WAL position (`pg_lsn`), e.g. `0/3000060`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// A string that is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("not a WAL position (hex/hex)")]
pub struct InvalidLsn;

impl FromStr for Lsn {
    type Err = InvalidLsn;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s.split_once('/').ok_or(InvalidLsn)?;
        let part = |p: &str| {
            if (1..=8).contains(&p.len()) {
                u32::from_str_radix(p, 16).map_err(|_| InvalidLsn)
            } else {
                Err(InvalidLsn)
            }
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// "These pairs changed; the primary's WAL was at `lsn` after the commit."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidationEvent {
    /// Schema version, always 1.
    pub v: u8,
    /// The pairs whose records, listings and negative entries are stale.
    pub keys: Vec<Pair>,
    /// The primary's WAL position at or after the commit.
    pub lsn: Lsn,
}

impl InvalidationEvent {
    /// A v1 event.
    pub fn new(keys: Vec<Pair>, lsn: Lsn) -> Self {
        Self { v: 1, keys, lsn }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn contract_example_round_trips() {
        let json = r#"{"v":1,"keys":[{"addon_id":"a@b","sha256":"5f0c3a5e0b9d2a4c8e7f6a5b4c3d2e1f00112233445566778899aabbccddeeff"}],"lsn":"0/3000060"}"#;
        let e: InvalidationEvent = serde_json::from_str(json).unwrap();
        assert_eq!(e.lsn, Lsn(0x3000060));
        assert_eq!(serde_json::to_string(&e).unwrap(), json);
        assert!("0/".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
        assert!("1".parse::<Lsn>().is_err());
    }

    proptest! {
        #[test]
        fn lsn_round_trips(v in any::<u64>()) {
            prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }
    }
}
