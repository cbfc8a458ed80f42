//! HTTP caching of single-record answers: their validators (`ETag`,
//! `Last-Modified`), their `Cache-Control`, and conditional GET/HEAD
//! (`If-None-Match`, `If-Modified-Since`) as RFC 9110 §13 evaluates them.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use headers::{ETag, HeaderMapExt, IfModifiedSince, IfNoneMatch, LastModified};
use sha2::{Digest, Sha256};
use warp::http::header::{CACHE_CONTROL, ETAG, LAST_MODIFIED};
use warp::http::{HeaderMap, HeaderValue};

use shared::domain::{AddonId, Sha256 as FileSha256, Timestamp};

use crate::edge::{self, EdgeState};

/// The `Cache-Control` of found and missing records and of listings: how
/// long a browser (`max-age`) and a shared cache (`s-maxage`) may keep the
/// answer; and their surrogate keys, by which the edge is purged
/// (`docs/edge.md`). Shared caches get the long `s-maxage` only while the
/// gateway is subscribed to invalidations (so the edge purger covers what
/// it answers); otherwise no longer than the disconnected lifetime.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    found: HeaderValue,
    missing: HeaderValue,
    found_disconnected: HeaderValue,
    missing_disconnected: HeaderValue,
    edge: EdgeState,
}

/// Lifetimes, in seconds, of the answers a [`CachePolicy`] marks.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// `max-age` of found records and listings.
    pub found: u32,
    /// `max-age` of missing records.
    pub missing: u32,
    /// `s-maxage` while subscribed.
    pub shared: u32,
    /// `s-maxage` cap while not subscribed.
    pub disconnected: u32,
}

impl CachePolicy {
    /// `public, max-age=…, s-maxage=…` for 200s (and their 304s), 404s and
    /// listings, following `edge`'s subscription.
    pub fn new(lifetimes: Lifetimes, edge: EdgeState) -> Self {
        let Lifetimes {
            found,
            missing,
            shared,
            disconnected,
        } = lifetimes;
        Self {
            found: public_max_age(found, shared),
            missing: public_max_age(missing, shared),
            // Never longer than the gateway keeps the answer itself.
            found_disconnected: public_max_age(found, shared.min(disconnected).min(found)),
            missing_disconnected: public_max_age(missing, shared.min(disconnected).min(missing)),
            edge,
        }
    }

    /// Sets the `Cache-Control` and surrogate keys of a found record.
    pub fn mark_found(&self, headers: &mut HeaderMap, addon_id: &AddonId, sha256: &FileSha256) {
        let value = if self.edge.is_subscribed() {
            &self.found
        } else {
            &self.found_disconnected
        };
        headers.insert(CACHE_CONTROL, value.clone());
        edge::label(headers, &edge::pair_key(addon_id, sha256));
    }

    /// Sets the `Cache-Control` and surrogate keys of a missing record.
    pub fn mark_missing(&self, headers: &mut HeaderMap, addon_id: &AddonId, sha256: &FileSha256) {
        let value = if self.edge.is_subscribed() {
            &self.missing
        } else {
            &self.missing_disconnected
        };
        headers.insert(CACHE_CONTROL, value.clone());
        edge::label(headers, &edge::pair_key(addon_id, sha256));
    }

    /// Sets the `Cache-Control` and surrogate key of an add-on's listing
    /// page (as long-lived as a found record).
    pub fn mark_listing(&self, headers: &mut HeaderMap, addon_id: &AddonId) {
        let value = if self.edge.is_subscribed() {
            &self.found
        } else {
            &self.found_disconnected
        };
        headers.insert(CACHE_CONTROL, value.clone());
        edge::label(headers, &edge::addon_key(addon_id));
    }
}

fn public_max_age(secs: u32, shared_secs: u32) -> HeaderValue {
    // ASCII letters and digits: always a valid header value.
    HeaderValue::from_str(&format!("public, max-age={secs}, s-maxage={shared_secs}"))
        .unwrap_or(HeaderValue::from_static("no-cache"))
}

/// What identifies one version of a record's answer, as header values ready
/// to send: computed once per cached answer, cloned (a reference count) per hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// The strong `ETag`, quotes included.
    etag: HeaderValue,
    /// `updated_at`, truncated to the second (HTTP dates have no fraction).
    last_modified: SystemTime,
    /// `last_modified` as an HTTP date.
    last_modified_header: HeaderValue,
}

impl Validators {
    /// Characters of the digest's hex kept in the `ETag`: 128 bits, plenty
    /// to tell versions of one record apart, short on the wire.
    const ETAG_HEX_LEN: usize = 32;

    /// About what the two header values hold on the heap (their bytes and
    /// allocation headers), for the cache's memory bound.
    pub const HEAP_BYTES: usize = 2 * 64;

    /// The validators of a record's answer `body`. The `ETag` digests the
    /// whole body, so any change of the record changes it, also two within
    /// one second (the body's times have microseconds).
    pub fn of(body: &[u8], updated_at: Timestamp) -> Self {
        let digest = Sha256::digest(body);
        let mut etag = String::with_capacity(Self::ETAG_HEX_LEN + 2);
        etag.push('"');
        for byte in &digest[..Self::ETAG_HEX_LEN / 2] {
            let _ = write!(etag, "{byte:02x}");
        }
        etag.push('"');
        let seconds = u64::try_from(updated_at.unix_seconds()).unwrap_or(0);
        let last_modified = UNIX_EPOCH + Duration::from_secs(seconds);
        let mut dated = HeaderMap::new();
        dated.typed_insert(LastModified::from(last_modified));
        Self {
            // Quotes and hex digits only: always a valid header value.
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
            last_modified,
            last_modified_header: dated
                .remove(LAST_MODIFIED)
                .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT")),
        }
    }

    /// The `ETag` as `headers` compares it; parsed only for conditional
    /// requests, so a plain hit keeps sending the ready header value.
    fn entity_tag(&self) -> Option<ETag> {
        self.etag.to_str().ok()?.parse().ok()
    }

    /// Sets `ETag` and `Last-Modified`.
    pub fn write(&self, headers: &mut HeaderMap) {
        headers.insert(ETAG, self.etag.clone());
        headers.insert(LAST_MODIFIED, self.last_modified_header.clone());
    }
}

/// The preconditions of a GET or HEAD.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    /// `If-None-Match` (all its lines: an entity-tag list, or `*`).
    if_none_match: Option<IfNoneMatch>,
    /// `If-Modified-Since`, when it is one valid HTTP date.
    if_modified_since: Option<IfModifiedSince>,
}

impl Preconditions {
    /// Reads the preconditions from request headers; an unreadable
    /// `If-Modified-Since` is ignored, as RFC 9110 says.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self {
            if_none_match: headers.typed_get(),
            if_modified_since: headers.typed_get(),
        }
    }

    /// Whether the client's copy is current, so the answer is a 304. When
    /// `If-None-Match` is present it alone decides (RFC 9110 §13.2.2).
    pub fn not_modified(&self, current: &Validators) -> bool {
        // Weak comparison (`W/"x"` matches `"x"`); malformed tags in the
        // list are skipped.
        if let Some(if_none_match) = &self.if_none_match {
            return current
                .entity_tag()
                .is_some_and(|tag| !if_none_match.precondition_passes(&tag));
        }
        self.if_modified_since
            .as_ref()
            .is_some_and(|since| !since.is_modified(current.last_modified))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    fn preconditions(pairs: &[(&'static str, &'static str)]) -> Preconditions {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        Preconditions::from_headers(&headers)
    }

    #[test]
    fn validators_follow_every_byte_and_the_second() {
        let t = at("2026-11-22T10:00:00.000001Z");
        let a = Validators::of(br#"{"updated_at":"2026-11-22T10:00:00.000001Z"}"#, t);
        let b = Validators::of(br#"{"updated_at":"2026-11-22T10:00:00.000002Z"}"#, t);
        assert_ne!(a.etag, b.etag);
        let opaque = &a.etag.as_bytes()[1..33];
        assert_eq!(a.etag.as_bytes()[33..], *b"\"");
        assert!(
            opaque
                .iter()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        let mut headers = HeaderMap::new();
        a.write(&mut headers);
        assert_eq!(headers[ETAG], a.etag);
        assert_eq!(headers["last-modified"], "Sun, 22 Nov 2026 10:00:00 GMT");
    }

    #[test]
    fn if_none_match_lists() {
        let v = Validators::of(b"x", at("2026-11-22T10:00:00Z"));
        let quoted = v.etag.to_str().unwrap().to_string();
        let opaque = quoted.trim_matches('"').to_string();
        let matching = [
            vec![quoted.clone()],
            vec![format!("W/{quoted}")],
            vec![format!("\"other\", {quoted}")],
            vec![format!("\"a,b\" ,\t{quoted}")],
            vec![format!("garbage, {quoted}")],
            vec!["\"other\"".to_string(), quoted.clone()],
            vec!["*".to_string()],
        ];
        for lines in &matching {
            assert!(if_none_match(lines).not_modified(&v), "{lines:?}");
        }
        for line in ["\"other\"", "", "garbage", &opaque, "\"unterminated"] {
            assert!(
                !if_none_match(&[line.to_string()]).not_modified(&v),
                "{line}"
            );
        }
    }

    fn if_none_match(lines: &[String]) -> Preconditions {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("if-none-match", HeaderValue::from_str(line).unwrap());
        }
        Preconditions::from_headers(&headers)
    }

    #[test]
    fn if_modified_since_to_the_second_unless_if_none_match() {
        let v = Validators::of(b"x", at("2026-11-22T10:00:00.900000Z"));
        let same_second = preconditions(&[("if-modified-since", "Sun, 22 Nov 2026 10:00:00 GMT")]);
        assert!(same_second.not_modified(&v));
        let obsolete_format =
            preconditions(&[("if-modified-since", "Sunday, 22-Nov-26 10:00:00 GMT")]);
        assert!(obsolete_format.not_modified(&v));
        let earlier = preconditions(&[("if-modified-since", "Sun, 22 Nov 2026 09:59:59 GMT")]);
        assert!(!earlier.not_modified(&v));
        let unreadable = preconditions(&[("if-modified-since", "yesterday")]);
        assert!(!unreadable.not_modified(&v));
        let overridden = preconditions(&[
            ("if-none-match", "\"stale\""),
            ("if-modified-since", "Sun, 22 Nov 2026 10:00:00 GMT"),
        ]);
        assert!(!overridden.not_modified(&v));
        assert!(!preconditions(&[]).not_modified(&v));
    }

    #[test]
    fn cache_control_values_follow_the_subscription() {
        let edge = EdgeState::default();
        let policy = CachePolicy::new(
            Lifetimes {
                found: 60,
                missing: 5,
                shared: 3600,
                disconnected: 1,
            },
            edge.clone(),
        );
        let addon = AddonId::parse("a@b").unwrap();
        let sha = FileSha256::from_bytes([7; 32]);
        let mut headers = HeaderMap::new();
        policy.mark_found(&mut headers, &addon, &sha);
        assert_eq!(headers[CACHE_CONTROL], "public, max-age=60, s-maxage=1");
        edge.subscribed(shared::event::Lsn(1));
        policy.mark_found(&mut headers, &addon, &sha);
        assert_eq!(headers[CACHE_CONTROL], "public, max-age=60, s-maxage=3600");
        assert_eq!(headers[edge::XKEY], edge::pair_key(&addon, &sha).as_str());
        policy.mark_missing(&mut headers, &addon, &sha);
        assert_eq!(headers[CACHE_CONTROL], "public, max-age=5, s-maxage=3600");
        policy.mark_listing(&mut headers, &addon);
        assert_eq!(headers[CACHE_CONTROL], "public, max-age=60, s-maxage=3600");
        assert_eq!(
            headers[edge::SURROGATE_KEY],
            edge::addon_key(&addon).as_str()
        );
    }
}
