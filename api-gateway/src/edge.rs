//! What the gateway tells a CDN in front of it (`docs/edge.md`): the
//! surrogate keys that label each cacheable answer, and which invalidations
//! this gateway has applied, so that the edge purger purges only once no
//! gateway can hand the edge an old answer again.
//!
//! Keys: a record's answer (200 or 404) is labelled with its pair's key, a
//! listing with its add-on's key; an event for a pair purges both. They are
//! digests (`p…`, `a…`), so that any add-on id fits every CDN's key syntax
//! (printable ASCII without spaces or commas, short).
//!
//! Applied: per key, the highest LSN of an event this gateway has applied
//! (fenced and evicted); and the primary's LSN at its last (re)subscription,
//! which covers every event it missed before it. A gateway not subscribed
//! gives shared caches only its short disconnected lifetime, so it holds
//! no purge back. The log is bounded: past its capacity the lowest entries
//! are dropped and counted as applied up to their LSN (asked about only
//! within moments of an event, they have long been confirmed by then).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256 as Sha};
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue};

use shared::domain::{AddonId, Sha256};
use shared::event::Lsn;
use shared::write::Pair;

/// The header Varnish's `xkey` vmod indexes objects by (space-separated).
pub const XKEY: &str = "xkey";
/// The header Fastly-style CDNs index objects by (space-separated).
pub const SURROGATE_KEY: &str = "surrogate-key";
/// The header Google Cloud CDN indexes objects by (comma-separated).
pub const CACHE_TAG: &str = "cache-tag";

/// Hex digits of a key's digest: 96 bits, so that two keys collide (and
/// one purge removes both) practically never.
const KEY_HEX_LEN: usize = 24;

fn digest_key(kind: char, parts: &[&[u8]]) -> String {
    let mut hasher = Sha::new();
    for part in parts {
        hasher.update(part);
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let mut key = String::with_capacity(KEY_HEX_LEN + 1);
    key.push(kind);
    for byte in &digest[..KEY_HEX_LEN / 2] {
        let _ = write!(key, "{byte:02x}");
    }
    key
}

/// The surrogate key of one pair's record answers (found or not).
pub fn pair_key(addon_id: &AddonId, sha256: &Sha256) -> String {
    digest_key(
        'p',
        &[
            b"addonreg pair",
            addon_id.as_str().as_bytes(),
            sha256.to_string().as_bytes(),
        ],
    )
}

/// The surrogate key of an add-on's listings.
pub fn addon_key(addon_id: &AddonId) -> String {
    digest_key('a', &[b"addonreg addon", addon_id.as_str().as_bytes()])
}

/// Every surrogate key an event's pairs make stale: each pair's and each
/// add-on's, without repeats, in a stable order.
pub fn keys_of(pairs: &[Pair]) -> Vec<String> {
    let keys: BTreeSet<String> = pairs
        .iter()
        .flat_map(|p| [pair_key(&p.addon_id, &p.sha256), addon_key(&p.addon_id)])
        .collect();
    keys.into_iter().collect()
}

/// Labels an answer with one surrogate key, in each CDN's header.
pub fn label(headers: &mut HeaderMap, key: &str) {
    // Hex digits and a letter: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(key) {
        headers.insert(XKEY, value.clone());
        headers.insert(SURROGATE_KEY, value.clone());
        headers.insert(CACHE_TAG, value);
    }
}

/// Most keys the applied log remembers.
pub const APPLIED_CAPACITY: usize = 200_000;

/// This gateway's subscription state and the invalidations it has applied,
/// for the edge purger. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EdgeState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    subscribed: AtomicBool,
    /// The primary's LSN at the last (re)subscription.
    subscribed_at: AtomicU64,
    /// Entries dropped for room count as applied up to here.
    dropped_up_to: AtomicU64,
    log: Mutex<Log>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Log {
    keys: HashMap<(AddonId, Sha256), Lsn>,
    by_lsn: BTreeSet<(Lsn, (AddonId, Sha256))>,
}

impl Default for EdgeState {
    fn default() -> Self {
        Self::with_capacity(APPLIED_CAPACITY)
    }
}

impl EdgeState {
    /// Not subscribed, nothing applied; remembering at most `capacity` keys.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                subscribed: AtomicBool::new(false),
                subscribed_at: AtomicU64::new(0),
                dropped_up_to: AtomicU64::new(0),
                log: Mutex::new(Log::default()),
                capacity: capacity.max(1),
            }),
        }
    }

    /// Whether invalidations are being received: only then may shared
    /// caches keep answers long.
    pub fn is_subscribed(&self) -> bool {
        self.inner.subscribed.load(Ordering::SeqCst)
    }

    /// (Re)subscribed; the cache was dropped and reads nothing older than
    /// `primary_lsn`.
    pub fn subscribed(&self, primary_lsn: Lsn) {
        self.inner
            .subscribed_at
            .fetch_max(primary_lsn.0, Ordering::SeqCst);
        self.inner.subscribed.store(true, Ordering::SeqCst);
    }

    /// No longer hearing invalidations.
    pub fn unsubscribed(&self) {
        self.inner.subscribed.store(false, Ordering::SeqCst);
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.inner.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cache has fenced and evicted `pairs` at `lsn`.
    pub fn applied(&self, pairs: &[Pair], lsn: Lsn) {
        let mut log = self.log();
        let log = &mut *log;
        for pair in pairs {
            let key = (pair.addon_id.clone(), pair.sha256);
            let lsn = match log.keys.get(&key) {
                Some(&old) if old >= lsn => continue,
                Some(&old) => {
                    log.by_lsn.remove(&(old, key.clone()));
                    lsn
                }
                None => lsn,
            };
            log.keys.insert(key.clone(), lsn);
            log.by_lsn.insert((lsn, key));
        }
        while log.keys.len() > self.inner.capacity {
            let Some((lsn, key)) = log.by_lsn.pop_first() else {
                break;
            };
            log.keys.remove(&key);
            self.inner.dropped_up_to.fetch_max(lsn.0, Ordering::SeqCst);
        }
    }

    /// Whether an answer this gateway gives about `pair` from now on is at
    /// least as new as `lsn`, or lives only briefly in shared caches.
    pub fn fresh(&self, pair: &Pair, lsn: Lsn) -> bool {
        let inner = &self.inner;
        if !self.is_subscribed()
            || inner.subscribed_at.load(Ordering::SeqCst) >= lsn.0
            || inner.dropped_up_to.load(Ordering::SeqCst) >= lsn.0
        {
            return true;
        }
        self.log()
            .keys
            .get(&(pair.addon_id.clone(), pair.sha256))
            .is_some_and(|&applied| applied >= lsn)
    }

    /// Answers an [`AppliedQuestion`].
    pub fn answer(&self, question: &AppliedQuestion) -> AppliedAnswer {
        AppliedAnswer {
            subscribed: self.is_subscribed(),
            fresh: question
                .items
                .iter()
                .map(|item| self.fresh(&item.pair, item.lsn))
                .collect(),
        }
    }
}

/// One invalidation the purger waits on: a pair changed at `lsn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedItem {
    /// The pair.
    #[serde(flatten)]
    pub pair: Pair,
    /// The event's LSN.
    pub lsn: Lsn,
}

/// The body of `POST /edge/applied` on the admin listener.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedQuestion {
    /// What the purger waits on.
    pub items: Vec<AppliedItem>,
}

/// Its answer: per item, whether this gateway is fresh for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedAnswer {
    /// Whether the gateway is subscribed to invalidations.
    pub subscribed: bool,
    /// One per item, in order.
    pub fresh: Vec<bool>,
}

/// Largest question body accepted, in bytes: the purger asks at most
/// [`crate::purge::ASK_MAX_ITEMS`] items of ~150 bytes.
const QUESTION_MAX_BYTES: u64 = 2 << 20;

/// `POST /edge/applied`, for the admin listener: internal, like `/metrics`.
pub fn admin_route(edge: EdgeState) -> shared::admin::ExtraRoutes {
    warp::path!("edge" / "applied")
        .and(warp::post())
        .and(warp::body::content_length_limit(QUESTION_MAX_BYTES))
        .and(warp::body::json::<AppliedQuestion>())
        .map(move |question: AppliedQuestion| {
            Box::new(warp::reply::json(&edge.answer(&question))) as Box<dyn warp::Reply>
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(addon: &str, byte: u8) -> Pair {
        Pair {
            addon_id: AddonId::parse(addon).unwrap(),
            sha256: Sha256::from_bytes([byte; 32]),
        }
    }

    #[test]
    fn keys_are_short_distinct_and_cover_the_listing() {
        let a = pair("a@b", 1);
        let k = pair_key(&a.addon_id, &a.sha256);
        assert_eq!(k.len(), 25);
        assert!(k.starts_with('p'));
        assert_ne!(k, pair_key(&a.addon_id, &Sha256::from_bytes([2; 32])));
        assert_ne!(
            addon_key(&a.addon_id),
            addon_key(&AddonId::parse("{3550f703-e582-4d05-9a08-453d09bdfdc6}").unwrap())
        );
        let keys = keys_of(&[a.clone(), pair("a@b", 2), a.clone()]);
        assert_eq!(keys.len(), 3, "two pairs and their one add-on: {keys:?}");
        assert!(keys.contains(&addon_key(&a.addon_id)));
        let mut headers = HeaderMap::new();
        label(&mut headers, &k);
        for name in [XKEY, SURROGATE_KEY, CACHE_TAG] {
            assert_eq!(headers[name], k.as_str());
        }
    }

    #[test]
    fn fresh_once_applied_resubscribed_or_unsubscribed() {
        let edge = EdgeState::with_capacity(2);
        let (a, b, c) = (pair("a@b", 1), pair("a@b", 2), pair("a@b", 3));
        assert!(edge.fresh(&a, Lsn(10)), "unsubscribed: short-lived answers");
        edge.subscribed(Lsn(5));
        assert!(edge.fresh(&a, Lsn(5)), "covered by the resubscription");
        assert!(!edge.fresh(&a, Lsn(10)));
        edge.applied(std::slice::from_ref(&a), Lsn(10));
        assert!(edge.fresh(&a, Lsn(10)));
        assert!(!edge.fresh(&a, Lsn(11)));
        assert!(!edge.fresh(&b, Lsn(10)), "per key");
        // A later event for the same key covers the earlier one.
        edge.applied(std::slice::from_ref(&a), Lsn(20));
        assert!(edge.fresh(&a, Lsn(15)));
        // Past the capacity the lowest is dropped and counted as applied.
        edge.applied(std::slice::from_ref(&b), Lsn(30));
        edge.applied(std::slice::from_ref(&c), Lsn(40));
        assert!(edge.fresh(&a, Lsn(20)));
        assert!(edge.fresh(&b, Lsn(30)) && edge.fresh(&c, Lsn(40)));
        assert!(!edge.fresh(&b, Lsn(31)));
        edge.unsubscribed();
        assert!(edge.fresh(&b, Lsn(99)));
        let answer = edge.answer(&AppliedQuestion {
            items: vec![AppliedItem {
                pair: b,
                lsn: Lsn(99),
            }],
        });
        assert_eq!((answer.subscribed, answer.fresh), (false, vec![true]));
    }
}
