//! The identifiers and values of a registration: add-on ids, file hashes,
//! versions, write ids and timestamps, each parsed once at the edge.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Why a value could not be parsed into a domain type; the message is meant
/// for a person and never echoes more than the value's length.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidValue {
    /// `addon_id` is empty, longer than 255 bytes, or neither a GUID nor e-mail-like.
    #[error(
        "must be 1 to 255 bytes: a GUID in braces or an e-mail-like id (name@domain of [A-Za-z0-9-._])"
    )]
    AddonId,
    /// `sha256` is not 64 hex digits (optionally prefixed by `sha256:`).
    #[error("must be 64 hex digits, optionally prefixed by \"sha256:\"")]
    Sha256,
    /// `version` is longer than 128 bytes.
    #[error("must be at most 128 bytes")]
    Version,
    /// A text field holds U+0000, which Postgres `text` cannot store.
    #[error("must not contain U+0000 (NUL)")]
    Nul,
    /// `write_id` is empty, longer than 64 characters or has a character outside `[A-Za-z0-9._:-]`.
    #[error("must be 1 to 64 characters of [A-Za-z0-9._:-]")]
    WriteId,
    /// A timestamp that is not RFC 3339 with `Z` or a numeric offset.
    #[error("must be an RFC 3339 time with \"Z\" or a numeric offset")]
    Timestamp,
}

/// An add-on id as AMO spells it: a GUID in braces or an e-mail-like id,
/// 1 to 255 bytes, compared exactly (case kept).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddonId(Box<str>);

impl AddonId {
    /// Longest accepted id, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Parses an id, accepting only the two forms of the contract.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > Self::MAX_LEN || !(is_guid(s) || is_email_like(s)) {
            return Err(InvalidValue::AddonId);
        }
        Ok(Self(s.into()))
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    let Some(inner) = b.strip_prefix(b"{").and_then(|b| b.strip_suffix(b"}")) else {
        return false;
    };
    let groups = [8, 4, 4, 4, 12];
    let mut parts = inner.split(|&c| c == b'-');
    groups.iter().all(|&len| {
        parts
            .next()
            .is_some_and(|p| p.len() == len && p.iter().all(u8::is_ascii_hexdigit))
    }) && parts.next().is_none()
}

fn is_email_like(s: &str) -> bool {
    let id_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_');
    // `[…]*@[…]+`: the local part cannot hold '@', so the first '@' splits it.
    match s.split_once('@') {
        Some((local, domain)) => {
            local.bytes().all(id_char) && !domain.is_empty() && domain.bytes().all(id_char)
        }
        None => false,
    }
}

impl fmt::Display for AddonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AddonId {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A file's SHA-256 digest. Parsed from 64 hex digits in any case, with an
/// optional `sha256:` prefix in any case; always shown in lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// Parses any accepted spelling of a digest.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let hex = match s.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => &s[7..],
            _ => s,
        };
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return Err(InvalidValue::Sha256);
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(Self(out))
    }

    /// The digest's 32 bytes, as stored.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a digest from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

fn nibble(c: u8) -> Result<u8, InvalidValue> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(InvalidValue::Sha256),
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl FromStr for Sha256 {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An add-on version string of at most 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(Box<str>);

impl Version {
    /// Longest accepted version, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Parses a version: any text of at most [`Version::MAX_LEN`] bytes
    /// that Postgres can store, so without U+0000.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.len() > Self::MAX_LEN {
            return Err(InvalidValue::Version);
        }
        if s.contains('\0') {
            return Err(InvalidValue::Nul);
        }
        Ok(Self(s.into()))
    }

    /// The version as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id AMO gives one write message: 1 to 64 characters of `[A-Za-z0-9._:-]`,
/// compared as bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteId(Box<str>);

impl WriteId {
    /// Longest accepted id, in characters.
    pub const MAX_LEN: usize = 64;

    /// Parses a write id.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len())
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(InvalidValue::WriteId)
        }
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WriteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for WriteId {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An instant at microsecond precision (what Postgres keeps), shown as
/// RFC 3339 UTC with exactly six fraction digits and `Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// Parses RFC 3339 with `Z` or a numeric offset and up to 9 fraction
    /// digits; digits past the microsecond are truncated, not rounded.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        // chrono also takes a space for 'T' and "-00:00"; the contract allows
        // neither more nor less than RFC 3339, whose 'T' may be lowercase.
        let b = s.as_bytes();
        if b.len() < 20 || !matches!(b[10], b'T' | b't') {
            return Err(InvalidValue::Timestamp);
        }
        let frac_digits = s
            .find('.')
            .map(|dot| s[dot + 1..].bytes().take_while(u8::is_ascii_digit).count());
        if frac_digits.is_some_and(|n| !(1..=9).contains(&n)) {
            return Err(InvalidValue::Timestamp);
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Self::from_utc(t.with_timezone(&Utc)))
            .map_err(|_| InvalidValue::Timestamp)
    }

    /// Truncates any instant to microseconds.
    pub fn from_utc(t: DateTime<Utc>) -> Self {
        Self(t.trunc_subsecs(6))
    }

    /// Now, truncated to microseconds.
    pub fn now() -> Self {
        Self::from_utc(Utc::now())
    }

    /// The instant as chrono's type, for the database layer.
    pub fn as_utc(&self) -> DateTime<Utc> {
        self.0
    }

    /// Microseconds since the Unix epoch.
    pub fn unix_micros(&self) -> i64 {
        self.0.timestamp_micros()
    }

    /// Whole seconds since the Unix epoch (the resolution of `Last-Modified`).
    pub fn unix_seconds(&self) -> i64 {
        self.0.timestamp()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Micros, true))
    }
}

macro_rules! string_serde {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                <$ty>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    )*};
}
string_serde!(AddonId, Sha256, Version, WriteId, Timestamp);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HASH: &str = "5f0c3a5e0b9d2a4c8e7f6a5b4c3d2e1f00112233445566778899aabbccddeeff";

    #[test]
    fn addon_id_forms() {
        for ok in [
            "{3550f703-e582-4d05-9a08-453d09bdfdc6}",
            "{3550F703-E582-4D05-9A08-453D09BDFDC6}",
            "uBlock0@raymondhill.net",
            "@x",
            "a.b-c_d@e",
        ] {
            assert_eq!(AddonId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "plain",
            "{3550f703-e582-4d05-9a08-453d09bdfdc}",
            "{3550f703-e582-4d05-9a08-453d09bdfdc6",
            "{3550f703e582-4d05-9a08-453d09bdfdc6a}",
            "{g550f703-e582-4d05-9a08-453d09bdfdc6}",
            "a@",
            "a@b@c",
            "a b@c",
            "é@x",
        ] {
            assert_eq!(AddonId::parse(bad), Err(InvalidValue::AddonId), "{bad:?}");
        }
        let long = format!("{}@x", "a".repeat(253));
        assert!(AddonId::parse(&long).is_ok());
        assert!(AddonId::parse(&format!("a{long}")).is_err());
    }

    #[test]
    fn sha256_forms_answer_lowercase() {
        let upper = HASH.to_uppercase();
        for spelling in [
            HASH.to_string(),
            upper.clone(),
            format!("sha256:{HASH}"),
            format!("SHA256:{upper}"),
        ] {
            assert_eq!(Sha256::parse(&spelling).unwrap().to_string(), HASH);
        }
        for bad in [&HASH[1..], "sha256:", "sha256:sha256:", &format!("{HASH}0")] {
            assert_eq!(Sha256::parse(bad), Err(InvalidValue::Sha256));
        }
        assert!(Sha256::parse(&format!("sha25:{}", &HASH[..57])).is_err());
        assert!(Sha256::parse(&HASH.replace('5', "g")).is_err());
    }

    #[test]
    fn write_id_rule() {
        assert!(WriteId::parse("7d0c8f7e-5a43-4f39-9b43-0c1c6a1e2b11").is_ok());
        assert!(WriteId::parse("a.B_c:d-9").is_ok());
        assert!(WriteId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "é", &"a".repeat(65)] {
            assert_eq!(WriteId::parse(bad), Err(InvalidValue::WriteId), "{bad:?}");
        }
    }

    #[test]
    fn timestamps_truncate_to_micros_and_print_six_digits() {
        let t = Timestamp::parse("2026-11-22T11:00:00.123456789+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-22T10:00:00.123456Z");
        assert_eq!(
            Timestamp::parse("2026-11-22T10:00:00Z")
                .unwrap()
                .to_string(),
            "2026-11-22T10:00:00.000000Z"
        );
        for bad in [
            "2026-11-22 10:00:00Z",
            "2026-11-22T10:00:00",
            "2026-11-22T10:00:00.Z",
            "2026-11-22T10:00:00.1234567890Z",
            "yesterday",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn version_limit_is_inclusive() {
        assert!(Version::parse(&"v".repeat(128)).is_ok());
        assert_eq!(Version::parse(&"v".repeat(129)), Err(InvalidValue::Version));
    }

    #[test]
    fn nul_is_refused_in_every_text_field() {
        // Postgres refuses U+0000 in text; a version holding it must be bad
        // input here, not a refusal of the whole batch there.
        for bad in ["\0", "1.0\0", "\u{0}1.0", "1.\0.0"] {
            assert_eq!(Version::parse(bad), Err(InvalidValue::Nul), "{bad:?}");
        }
        assert!(
            Version::parse("1.0 \u{1}\u{7f}é").is_ok(),
            "other controls are text"
        );
        // The other text fields' character rules already exclude it.
        assert!(AddonId::parse("a\0@b").is_err());
        assert!(AddonId::parse("{00000000-0000-0000-0000-00000000000\0}").is_err());
        assert!(WriteId::parse("w\0").is_err());
    }

    proptest! {
        #[test]
        fn every_guid_round_trips(s in "\\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\\}") {
            prop_assert_eq!(AddonId::parse(&s).unwrap().to_string(), s);
        }

        #[test]
        fn every_email_like_id_round_trips(s in "[A-Za-z0-9._-]{0,100}@[A-Za-z0-9._-]{1,100}") {
            prop_assert_eq!(AddonId::parse(&s).unwrap().to_string(), s);
        }

        #[test]
        fn every_hash_spelling_round_trips(bytes in any::<[u8; 32]>(), upper in any::<bool>(), prefix in any::<bool>()) {
            let canonical = Sha256::from_bytes(bytes).to_string();
            let mut spelled = if upper { canonical.to_uppercase() } else { canonical.clone() };
            if prefix { spelled.insert_str(0, "sha256:"); }
            prop_assert_eq!(Sha256::parse(&spelled).unwrap().to_string(), canonical);
        }

        #[test]
        fn every_write_id_round_trips(s in "[A-Za-z0-9._:-]{1,64}") {
            prop_assert_eq!(WriteId::parse(&s).unwrap().to_string(), s);
        }

        #[test]
        fn timestamps_round_trip(micros in 0i64..4_102_444_800_000_000) {
            let t = Timestamp::from_utc(DateTime::from_timestamp_micros(micros).unwrap());
            prop_assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        }

        #[test]
        fn no_input_panics(s in "\\PC{0,300}") {
            let _ = AddonId::parse(&s);
            let _ = Sha256::parse(&s);
            let _ = WriteId::parse(&s);
            let _ = Version::parse(&s);
            let _ = Timestamp::parse(&s);
        }
    }
}
