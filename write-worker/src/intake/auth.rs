//! Who may post: AMO, holding a bearer token whose SHA-256 digest is
//! configured. Only digests are kept (a leaked config does not leak a
//! token), compared in constant time; two are accepted at once so that a
//! token can rotate without downtime.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Most digests accepted at once: the current token and the next.
pub const MAX_TOKENS: usize = 2;

/// The SHA-256 digest of one accepted token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is no secret, but it needs no printing either.
        f.write_str("TokenDigest(***)")
    }
}

impl FromStr for TokenDigest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || "a token digest is 64 hex digits (sha256sum of the token)".to_string();
        if s.len() != 64 {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(Self(digest))
    }
}

/// The accepted tokens, as digests.
#[derive(Debug, Clone)]
pub struct Tokens(Vec<TokenDigest>);

impl Tokens {
    /// One or two distinct digests.
    pub fn new(mut digests: Vec<TokenDigest>) -> Result<Self, String> {
        digests.dedup();
        match digests.len() {
            0 => Err("at least one token digest is required".into()),
            n if n > MAX_TOKENS => Err(format!(
                "at most {MAX_TOKENS} token digests (the current and the next), not {n}"
            )),
            _ => Ok(Self(digests)),
        }
    }

    /// Whether an `Authorization` header value carries an accepted bearer
    /// token. Every digest is compared, whichever matches, so the time
    /// taken does not tell which one did.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(token) = authorization.and_then(bearer) else {
            return false;
        };
        let digest = Sha256::digest(token.as_bytes());
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, accepted| {
                found | accepted.0.ct_eq(&digest[..])
            })
            .into()
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The hex SHA-256 of a token, as configured (tests, docs' examples).
pub fn digest_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(list: &[&str]) -> Result<Tokens, String> {
        Tokens::new(
            list.iter()
                .map(|t| digest_hex(t).parse().unwrap())
                .collect(),
        )
    }

    #[test]
    fn two_tokens_rotate_and_nothing_else_passes() {
        let t = tokens(&["old-token", "new-token"]).unwrap();
        assert!(t.accepts(Some("Bearer old-token")));
        assert!(t.accepts(Some("bearer new-token")));
        for refused in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic old-token"),
            Some("Bearer other"),
            Some("Bearer old-tokenx"),
            Some("old-token"),
        ] {
            assert!(!t.accepts(refused), "{refused:?}");
        }
        assert!(tokens(&[]).is_err());
        assert!(tokens(&["a", "b", "c"]).is_err());
        assert!(tokens(&["a", "a"]).is_ok(), "the same digest twice is one");
    }

    #[test]
    fn digests_parse_from_hex_only() {
        let hex = digest_hex("t");
        assert!(hex.parse::<TokenDigest>().is_ok());
        assert!(hex.to_uppercase().parse::<TokenDigest>().is_ok());
        assert!(hex[1..].parse::<TokenDigest>().is_err());
        assert!(format!("{}g", &hex[1..]).parse::<TokenDigest>().is_err());
        assert!("é".repeat(32).parse::<TokenDigest>().is_err());
        assert_eq!(
            format!("{:?}", hex.parse::<TokenDigest>().unwrap()),
            "TokenDigest(***)"
        );
    }
}
