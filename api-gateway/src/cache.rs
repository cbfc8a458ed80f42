//! The in-memory record cache in front of the store ([`CachedReads`]), and
//! the handle the invalidation task drives it with ([`CacheControl`]).
//!
//! Single-record reads are cached, found and missing alike, for
//! `ADDONREG_CACHE_TTL_FOUND_SECS` / `_MISSING_SECS` (the same lifetimes the
//! HTTP answers advertise), bounded by `ADDONREG_CACHE_MAX_ENTRIES` and
//! `ADDONREG_CACHE_MAX_BYTES` (0 entries turns the cache off; fences stay).
//! A found record is kept encoded ([`RecordAnswer`]: body and validators),
//! so a hit costs no serialising or hashing. Concurrent misses for one key
//! share one fill (moka's `try_get_with`), and the fills of different keys
//! running at once share one query ([`Misses`]).
//!
//! Freshness rests on invalidation events and on knowing how far each
//! source has replayed ([`Fences`], `docs/freshness.md`). Each event fences
//! its keys at its LSN, then bumps a global generation, then evicts them
//! (fence first: a fill that reads the new generation must find the fence).
//! A fill remembers the generation when it started; if its key got a newer
//! fence, or the whole cache was cleared, meanwhile, its result is answered
//! but not cached (returned to the waiters through the `Err` side of
//! `try_get_with`, which moka never caches), and whoever sees the change
//! after the insert evicts the key again, closing the window between check
//! and insert. Every read (record, lookup, listing, receipt) that needs
//! more than every source is known to have replayed (its key's fence, the
//! global floor, or for a receipt not found the newest LSN known) goes to a
//! source that has replayed it; when none has, the read fails (503) rather
//! than answer an old value, and nothing is cached.
//!
//! While not subscribed to invalidations (before the first subscription and
//! after losing the broker) entries live at most
//! `ADDONREG_CACHE_DISCONNECTED_TTL_MS`. Losing the subscription and every
//! (re)subscription drop the whole cache, since events may have been missed;
//! a (re)subscription also raises the floor to the primary's LSN then.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use moka::Expiry;
use shared::domain::{AddonId, Sha256, WriteId};
use shared::event::Lsn;
use shared::receipt::Receipt;
use shared::record::Record;
use shared::write::Pair;

use crate::answer::RecordAnswer;
use crate::fences::{Fences, Key};
use crate::metrics::Metrics;
use crate::misses::Misses;
use crate::replicas::Replay;
use crate::store::{Reads, StoreError};

/// How many times a read that joined a fill discarded by an invalidation
/// starts over rather than answer the value that invalidation made old.
const RETRIES_AFTER_RACE: usize = 3;

/// How many fenced keys of one bulk lookup are read concurrently.
const FENCED_LOOKUPS_AT_ONCE: usize = 4;

/// A single-record read's answer: the encoded record, or `None`.
pub type Answer = Option<Arc<RecordAnswer>>;

/// A cached answer and how long it may live.
/// moka applies per-entry expiry only once its housekeeping has seen the
/// insert, so reads also check `expires_at` themselves: a short lifetime
/// (while disconnected) must hold to the millisecond.
#[derive(Debug, Clone)]
struct Entry {
    answer: Answer,
    ttl: Duration,
    expires_at: Instant,
}

impl Entry {
    fn is_live(&self) -> bool {
        Instant::now() < self.expires_at
    }
}

/// What one entry costs in the process's memory beyond its key's and
/// answer's own bytes: moka's node, hash-table slot, deque and timer links,
/// the `Arc`s, each allocation's header and the allocator's fragmentation.
/// Measured, not counted: `loadtest bench` saw the gateway's RSS grow by
/// 3,589 bytes an entry with 1 M entries cached (glibc malloc). At the
/// 256 bytes first assumed, the default 512 MiB bound let the cache grow
/// to about 3.4 GB of RSS, past the pod's memory limit.
const ENTRY_OVERHEAD_BYTES: usize = 3_300;

/// An entry's weight for the memory bound: its estimated bytes, but at
/// least `floor` (the memory bound over the entry bound), so that both
/// bounds hold with one moka capacity.
fn weight(key: &Key, entry: &Entry, floor: u64) -> u32 {
    let answer = entry.answer.as_ref().map_or(0, |a| a.heap_bytes());
    let bytes = (key.0.as_str().len() + answer + ENTRY_OVERHEAD_BYTES) as u64;
    u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
}

/// Each entry lives for the lifetime chosen when it was filled.
struct EntryTtl;

impl Expiry<Key, Entry> for EntryTtl {
    fn expire_after_create(&self, _: &Key, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Why a fill was not cached; moka hands the same `Arc` to every waiter.
#[derive(Debug)]
enum Fill {
    /// The store failed, or no source had replayed the key's fence.
    Store(StoreError),
    /// Invalidated or cleared while the query ran: answer, don't cache.
    Raced(Answer),
}

/// Lifetimes and bounds of cached entries.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Most entries kept; 0 turns the cache off (every read queries, with
    /// the same fences).
    pub max_entries: u64,
    /// Most bytes the entries take, estimated.
    pub max_bytes: u64,
    /// Lifetime of a found record.
    pub ttl_found: Duration,
    /// Lifetime of a "no record" entry.
    pub ttl_missing: Duration,
    /// Longest lifetime while not subscribed to invalidations.
    pub ttl_disconnected: Duration,
    /// How many sources the store reads from (replay positions to track).
    pub sources: usize,
    /// Most key fences (and add-on fences) kept; past it the oldest are
    /// folded into the global floor.
    pub max_fences: usize,
}

/// Fences kept by default (as the moka fence caches they replace held): a
/// few hundred bytes each, reached only while some source lags behind a
/// million invalidated keys; past it the floor takes over.
pub const DEFAULT_MAX_FENCES: usize = 1_000_000;

struct Shared {
    entries: moka::future::Cache<Key, Entry>,
    fences: Fences,
    /// Bumped by every invalidation and every clear.
    generation: AtomicU64,
    /// Held while moving `generation`, so that a fence and the generation
    /// it names are set in that order by one writer at a time.
    bumping: Mutex<()>,
    /// The generation of the last clear.
    cleared_at: AtomicU64,
    subscribed: AtomicBool,
    config: CacheConfig,
    metrics: Metrics,
}

impl Shared {
    /// Whether `key` was invalidated, or the cache cleared, after `started`.
    fn changed_since(&self, key: &Key, started: u64) -> bool {
        self.cleared_at.load(Ordering::SeqCst) > started || self.fences.changed_since(key, started)
    }

    fn ttl_for(&self, answer: &Answer) -> Duration {
        let ttl = match answer {
            Some(_) => self.config.ttl_found,
            None => self.config.ttl_missing,
        };
        if self.subscribed.load(Ordering::SeqCst) {
            ttl
        } else {
            ttl.min(self.config.ttl_disconnected)
        }
    }

    fn enabled(&self) -> bool {
        self.config.max_entries > 0
    }

    /// Fences `key` at `lsn`, then bumps the generation: in this order, a
    /// fill that reads the new generation (and so would cache) finds the
    /// fence and reads from a source that has replayed it. `between` runs
    /// in the middle (tests look there).
    fn fence_then_bump(&self, key: &Key, lsn: Lsn, between: impl FnOnce()) {
        let _bumping = self.bumping.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        self.fences.fence(key, lsn, generation);
        between();
        self.generation.store(generation, Ordering::SeqCst);
    }

    /// Bumps the generation as a clear: fills in flight won't be cached.
    fn bump_clear(&self) {
        let _bumping = self.bumping.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        self.cleared_at.store(generation, Ordering::SeqCst);
        self.generation.store(generation, Ordering::SeqCst);
    }
}

/// What the invalidation task (and the heartbeat) use to drive the cache.
#[derive(Clone)]
pub struct CacheControl {
    shared: Arc<Shared>,
}

impl CacheControl {
    /// Fences and evicts every key of an event; an event with no keys (a
    /// batch that only rejected writes) still moves the newest LSN known,
    /// which receipts not found are read at.
    pub async fn invalidate(&self, keys: Vec<Pair>, lsn: Lsn) {
        let shared = &self.shared;
        shared.metrics.invalidation_events.inc();
        shared.fences.saw(lsn);
        for pair in keys {
            let key = (pair.addon_id, pair.sha256);
            shared.fence_then_bump(&key, lsn, || {});
            shared.entries.invalidate(&key).await;
        }
    }

    /// Subscribed again: drop everything (events were missed), read nothing
    /// older than `primary_lsn` (the primary's position once bound) from
    /// now on, and go back to full lifetimes.
    pub fn subscribed(&self, primary_lsn: Lsn) {
        let shared = &self.shared;
        shared.fences.raise_floor(primary_lsn);
        self.clear();
        shared.subscribed.store(true, Ordering::SeqCst);
        shared.metrics.broker_connected.set(1);
    }

    /// Drops every entry; fills in flight are not cached.
    pub fn clear(&self) {
        let shared = &self.shared;
        shared.bump_clear();
        shared.entries.invalidate_all();
        shared.metrics.cache_clears.inc();
    }

    /// No longer hearing invalidations: drop what was cached (events may
    /// already be missed), and short lifetimes from now on.
    pub fn unsubscribed(&self) {
        if self.shared.subscribed.swap(false, Ordering::SeqCst) {
            self.clear();
        }
        self.shared.metrics.broker_connected.set(0);
    }

    /// Whether invalidations are being received.
    pub fn is_subscribed(&self) -> bool {
        self.shared.subscribed.load(Ordering::SeqCst)
    }

    /// The newest LSN known (events, resubscriptions): what every replica
    /// should have replayed by now.
    pub fn latest_lsn(&self) -> Option<Lsn> {
        self.shared.fences.newest()
    }

    /// Records what the monitor found source `index` had replayed; fences
    /// every source has replayed are dropped.
    pub fn replayed(&self, index: usize, replay: Replay) {
        let lsn = match replay {
            Replay::Primary(_) => u64::MAX,
            Replay::Standby(Some(lsn)) => lsn.0,
            Replay::Standby(None) | Replay::Down => return,
        };
        self.shared.fences.replayed(index, lsn);
    }

    /// Records how long after its commit an event was applied.
    pub fn observe_delay(&self, delay: Duration) {
        self.shared
            .metrics
            .invalidation_delay
            .observe(delay.as_secs_f64());
    }

    /// Publishes the cache's size (entries, estimated bytes) as metrics,
    /// after applying pending inserts and evictions (moka counts lazily).
    pub async fn report_size(&self) {
        let entries = &self.shared.entries;
        entries.run_pending_tasks().await;
        let metrics = &self.shared.metrics;
        metrics
            .cache_entries
            .set(i64::try_from(entries.entry_count()).unwrap_or(i64::MAX));
        metrics
            .cache_weighted_bytes
            .set(i64::try_from(entries.weighted_size()).unwrap_or(i64::MAX));
    }
}

/// The gateway's reads: single-record answers kept in memory, encoded, in
/// front of a [`Reads`] store; every read fenced against replica lag.
#[derive(Clone)]
pub struct CachedReads<R> {
    store: R,
    misses: Misses<R>,
    shared: Arc<Shared>,
}

impl<R: Reads> CachedReads<R> {
    /// A cache in front of `store`, and the handle that invalidates it.
    pub fn new(store: R, config: CacheConfig, metrics: Metrics) -> (Self, CacheControl) {
        let floor = config.max_bytes / config.max_entries.max(1);
        let shared = Arc::new(Shared {
            entries: moka::future::Cache::builder()
                .max_capacity(config.max_bytes)
                .weigher(move |key, entry| weight(key, entry, floor))
                .expire_after(EntryTtl)
                .build(),
            fences: Fences::new(config.sources, config.max_fences),
            generation: AtomicU64::new(0),
            bumping: Mutex::new(()),
            cleared_at: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            config,
            metrics,
        });
        let control = CacheControl {
            shared: shared.clone(),
        };
        let misses = Misses::new(store.clone(), shared.metrics.clone());
        (
            Self {
                store,
                misses,
                shared,
            },
            control,
        )
    }

    /// Queries the store for one key, from a source that has replayed what
    /// the key needs, and decides whether the answer may be cached: `Err`
    /// when it may not.
    async fn fill(&self, key: &Key, started: u64) -> Result<Entry, Fill> {
        let shared = &self.shared;
        let metrics = &shared.metrics;
        // Read with the other keys missing now; freshness stays per key:
        // the need below, and `changed_since` once the row is back.
        let need = shared.fences.needed_for_key(key);
        let record = self.misses.record(key.clone(), need).await;
        if matches!(record, Err(StoreError::Behind(_))) {
            metrics.cache_fill_discarded.inc();
        }
        let answer = encode(record.map_err(Fill::Store)?).map_err(Fill::Store)?;
        if shared.changed_since(key, started) {
            metrics.cache_fill_discarded.inc();
            return Err(Fill::Raced(answer));
        }
        let ttl = shared.ttl_for(&answer);
        let expires_at = Instant::now() + ttl;
        Ok(Entry {
            answer,
            ttl,
            expires_at,
        })
    }

    /// One attempt at a cached read. `Err(None)` asks the caller to start
    /// over: it joined a fill that an invalidation made old.
    async fn answer_once(&self, key: &Key, last_try: bool) -> Result<Answer, Option<StoreError>> {
        let shared = &self.shared;
        if !shared.enabled() {
            shared.metrics.cache_misses.inc();
            // Nothing is cached, so no fill can race an invalidation (as if
            // started after every one): only an unreplayed fence counts.
            return match self.fill(key, u64::MAX).await {
                Ok(entry) => Ok(entry.answer),
                Err(Fill::Store(e)) => Err(Some(e)),
                Err(Fill::Raced(answer)) => Ok(answer),
            };
        }
        if let Some(entry) = shared.entries.get(key).await {
            if entry.is_live() {
                shared.metrics.cache_hits.inc();
                return Ok(entry.answer);
            }
            shared.entries.invalidate(key).await;
        }
        let started = shared.generation.load(Ordering::SeqCst);
        let ran = AtomicBool::new(false);
        let fill = async {
            ran.store(true, Ordering::SeqCst);
            self.fill(key, started).await
        };
        let outcome = shared.entries.try_get_with(key.clone(), fill).await;
        let ran = ran.load(Ordering::SeqCst);
        if ran {
            shared.metrics.cache_misses.inc();
        } else {
            shared.metrics.cache_coalesced.inc();
        }
        if shared.changed_since(key, started) {
            // An insert may have landed after the invalidation's eviction.
            shared.entries.invalidate(key).await;
        }
        match outcome {
            Ok(entry) => Ok(entry.answer),
            Err(fill) => match fill.as_ref() {
                Fill::Store(e) => Err(Some(e.clone())),
                Fill::Raced(_) if !ran && !last_try => Err(None),
                Fill::Raced(answer) => Ok(answer.clone()),
            },
        }
    }

    /// The answer for one pair: from memory when cached, else from the
    /// store (one query for concurrent misses of the same pair).
    pub async fn answer(&self, addon_id: &AddonId, sha256: &Sha256) -> Result<Answer, StoreError> {
        let key = (addon_id.clone(), *sha256);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.answer_once(&key, tries > RETRIES_AFTER_RACE).await {
                Ok(answer) => return Ok(answer),
                Err(Some(e)) => return Err(e),
                Err(None) => {}
            }
        }
    }

    /// The answer for each pair, in order: cached ones from memory, keys
    /// with a fence of their own through [`Self::answer`], the rest in one
    /// query (not cached: a bulk lookup must not push the hot keys out),
    /// from a source at or past the floor.
    pub async fn lookup(&self, keys: &[(AddonId, Sha256)]) -> Result<Vec<Answer>, StoreError> {
        let shared = &self.shared;
        let mut results = vec![None; keys.len()];
        let mut rest = Vec::new();
        let mut fenced = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let cached = match shared.enabled() {
                true => shared.entries.get(key).await.filter(Entry::is_live),
                false => None,
            };
            if let Some(entry) = cached {
                shared.metrics.cache_hits.inc();
                results[i] = entry.answer;
            } else if shared.fences.get(key).is_some() {
                fenced.push(i);
            } else {
                rest.push(i);
            }
        }
        // A few at a time: each is a query (or two), and the pool is small.
        let answers: Vec<Answer> = futures_util::stream::iter(fenced.clone())
            .map(|i| self.answer(&keys[i].0, &keys[i].1))
            .buffered(FENCED_LOOKUPS_AT_ONCE)
            .try_collect()
            .await?;
        for (i, answer) in fenced.into_iter().zip(answers) {
            results[i] = answer;
        }
        if !rest.is_empty() {
            let unfenced: Vec<Key> = rest.iter().map(|&i| keys[i].clone()).collect();
            let found = match shared.fences.needed_for_any() {
                None => {
                    shared
                        .metrics
                        .store_queries
                        .with_label_values(&["lookup"])
                        .inc();
                    self.store.lookup(&unfenced).await?
                }
                Some(lsn) => {
                    shared
                        .metrics
                        .store_queries
                        .with_label_values(&["lookup_fenced"])
                        .inc();
                    self.store.lookup_at_least(&unfenced, lsn).await?
                }
            };
            for (i, record) in rest.into_iter().zip(found) {
                results[i] = encode(record)?;
            }
        }
        Ok(results)
    }

    /// A listing page (see [`Reads::list`]), from a source that has replayed
    /// the add-on's fence and the floor.
    pub async fn list(
        &self,
        addon_id: &AddonId,
        after: Option<Sha256>,
        limit: u16,
    ) -> Result<Vec<Record>, StoreError> {
        match self.shared.fences.needed_for_addon(addon_id) {
            None => self.store.list(addon_id, after, limit).await,
            Some(lsn) => self.store.list_at_least(addon_id, after, limit, lsn).await,
        }
    }

    /// A write's receipt. Receipts never change once written, so only their
    /// absence can be old: not found, it is asked again of a source that has
    /// replayed the newest LSN known, unless every source has.
    pub async fn receipt(&self, write_id: &WriteId) -> Result<Option<Receipt>, StoreError> {
        match self.store.receipt(write_id).await? {
            Some(receipt) => Ok(Some(receipt)),
            None => match self.shared.fences.needed_for_absence() {
                None => Ok(None),
                Some(lsn) => self.store.receipt_at_least(write_id, lsn).await,
            },
        }
    }
}

/// Encodes a record read from the store.
fn encode(record: Option<Record>) -> Result<Answer, StoreError> {
    record
        .map(|record| {
            RecordAnswer::of(&record)
                .map(Arc::new)
                .map_err(|e| StoreError::CorruptRow(format!("encode record: {e}")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use shared::domain::Timestamp;
    use shared::record::Status;

    /// A store with one mutable record whose reads take `delay`.
    #[derive(Clone)]
    struct SlowStore {
        version: Arc<Mutex<Option<&'static str>>>,
        queries: Arc<AtomicUsize>,
        delay: Duration,
        caught_up: Arc<AtomicBool>,
    }

    impl SlowStore {
        fn new(delay: Duration) -> Self {
            Self {
                version: Arc::new(Mutex::new(Some("1.0"))),
                queries: Arc::new(AtomicUsize::new(0)),
                delay,
                caught_up: Arc::new(AtomicBool::new(true)),
            }
        }

        fn set(&self, version: &'static str) {
            *self.version.lock().unwrap() = Some(version);
        }

        fn queries(&self) -> usize {
            self.queries.load(Ordering::SeqCst)
        }
    }

    fn key() -> (AddonId, Sha256) {
        (AddonId::parse("a@b").unwrap(), Sha256::from_bytes([7; 32]))
    }

    fn record(a: &AddonId, s: &Sha256, version: &str) -> Record {
        Record {
            addon_id: a.clone(),
            sha256: *s,
            status: Status::Registered,
            version: Some(shared::domain::Version::parse(version).unwrap()),
            registered_at: None,
            updated_at: Timestamp::from_utc(chrono::Utc::now()),
        }
    }

    impl Reads for SlowStore {
        async fn record(&self, a: &AddonId, s: &Sha256) -> Result<Option<Record>, StoreError> {
            self.queries.fetch_add(1, Ordering::SeqCst);
            // Read at the start, answer after the delay: a slow replica query.
            let version = *self.version.lock().unwrap();
            tokio::time::sleep(self.delay).await;
            Ok(version.map(|v| record(a, s, v)))
        }
        async fn record_at_least(
            &self,
            a: &AddonId,
            s: &Sha256,
            lsn: Lsn,
        ) -> Result<Option<Record>, StoreError> {
            if !self.caught_up.load(Ordering::SeqCst) {
                return Err(StoreError::Behind(lsn));
            }
            self.record(a, s).await
        }
        async fn lookup(&self, keys: &[Key]) -> Result<Vec<Option<Record>>, StoreError> {
            // One query for every key, as the store's: read at the start.
            self.queries.fetch_add(1, Ordering::SeqCst);
            let version = *self.version.lock().unwrap();
            tokio::time::sleep(self.delay).await;
            Ok(keys
                .iter()
                .map(|(a, s)| version.map(|v| record(a, s, v)))
                .collect())
        }
        async fn lookup_at_least(
            &self,
            keys: &[Key],
            lsn: Lsn,
        ) -> Result<Vec<Option<Record>>, StoreError> {
            if !self.caught_up.load(Ordering::SeqCst) {
                return Err(StoreError::Behind(lsn));
            }
            self.lookup(keys).await
        }
        async fn list(
            &self,
            _: &AddonId,
            _: Option<Sha256>,
            _: u16,
        ) -> Result<Vec<Record>, StoreError> {
            Ok(vec![])
        }
        async fn receipt(&self, _: &WriteId) -> Result<Option<Receipt>, StoreError> {
            Ok(None)
        }
    }

    fn cache(store: SlowStore) -> (CachedReads<SlowStore>, CacheControl) {
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let (reads, control) = CachedReads::new(
            store,
            CacheConfig {
                max_entries: 100,
                max_bytes: 1 << 20,
                ttl_found: Duration::from_secs(60),
                ttl_missing: Duration::from_secs(60),
                ttl_disconnected: Duration::from_secs(60),
                sources: 1,
                max_fences: DEFAULT_MAX_FENCES,
            },
            metrics,
        );
        control.subscribed(Lsn(0));
        (reads, control)
    }

    fn version(answer: Answer) -> String {
        let record: serde_json::Value = serde_json::from_slice(&answer.unwrap().body).unwrap();
        record["version"].as_str().unwrap().to_string()
    }

    fn pair() -> Pair {
        let (addon_id, sha256) = key();
        Pair { addon_id, sha256 }
    }

    #[tokio::test]
    async fn an_invalidation_during_a_slow_fill_wins() {
        let store = SlowStore::new(Duration::from_millis(200));
        let (reads, control) = cache(store.clone());
        let (a, s) = key();
        let slow = tokio::spawn({
            let (reads, a, s) = (reads.clone(), a.clone(), s);
            async move { reads.answer(&a, &s).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.set("2.0");
        control.invalidate(vec![pair()], Lsn(1)).await;
        // The fill that began before the invalidation answers its old value…
        assert_eq!(version(slow.await.unwrap().unwrap()), "1.0");
        // …but didn't cache it.
        assert_eq!(version(reads.answer(&a, &s).await.unwrap()), "2.0");
        assert_eq!(version(reads.answer(&a, &s).await.unwrap()), "2.0");
        assert_eq!(store.queries(), 2, "the second read was cached");
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_query() {
        let store = SlowStore::new(Duration::from_millis(100));
        let (reads, _control) = cache(store.clone());
        let (a, s) = key();
        let all = futures_util::future::join_all((0..50).map(|_| reads.answer(&a, &s))).await;
        assert!(all.into_iter().all(|r| version(r.unwrap()) == "1.0"));
        assert_eq!(store.queries(), 1);
    }

    #[tokio::test]
    async fn concurrent_misses_of_different_keys_share_one_query() {
        let store = SlowStore::new(Duration::from_millis(100));
        let (reads, _control) = cache(store.clone());
        let keys: Vec<_> = (0..50).map(nth_key).collect();
        let all =
            futures_util::future::join_all(keys.iter().map(|(a, s)| reads.answer(a, s))).await;
        for ((_, s), answer) in keys.iter().zip(all) {
            let body: serde_json::Value =
                serde_json::from_slice(&answer.unwrap().unwrap().body).unwrap();
            assert_eq!(
                body["sha256"],
                s.to_string(),
                "each waiter gets its own row"
            );
        }
        assert_eq!(store.queries(), 1);
        for (a, s) in &keys {
            reads.answer(a, s).await.unwrap();
        }
        assert_eq!(store.queries(), 1, "every key of the batch was cached");
    }

    #[tokio::test]
    async fn a_key_fenced_while_its_batch_is_in_flight_is_not_cached() {
        let store = SlowStore::new(Duration::from_millis(200));
        let (reads, control) = cache(store.clone());
        let keys: Vec<_> = (1..=3).map(nth_key).collect();
        let batch = tokio::spawn({
            let (reads, keys) = (reads.clone(), keys.clone());
            async move {
                let answers = keys.iter().map(|(a, s)| reads.answer(a, s));
                futures_util::future::join_all(answers).await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Key 1 changes and is invalidated while the batch's query runs.
        store.set("2.0");
        let (addon_id, sha256) = keys[0].clone();
        control
            .invalidate(vec![Pair { addon_id, sha256 }], Lsn(1))
            .await;
        for answer in batch.await.unwrap() {
            assert_eq!(version(answer.unwrap()), "1.0", "read before the write");
        }
        assert_eq!(store.queries(), 1, "one query for the three keys");
        let (a, s) = &keys[0];
        assert_eq!(version(reads.answer(a, s).await.unwrap()), "2.0");
        assert_eq!(version(reads.answer(a, s).await.unwrap()), "2.0");
        assert_eq!(store.queries(), 2, "the fenced key was read again, once");
        for (a, s) in &keys[1..] {
            // Not invalidated: the batch's rows stay cached.
            assert_eq!(version(reads.answer(a, s).await.unwrap()), "1.0");
        }
        assert_eq!(store.queries(), 2);
    }

    #[tokio::test]
    async fn a_fenced_key_no_source_has_replayed_fails_alone() {
        let store = SlowStore::new(Duration::from_millis(50));
        store.caught_up.store(false, Ordering::SeqCst);
        let (reads, control) = cache(store.clone());
        let (fenced, free) = (nth_key(1), nth_key(2));
        let (addon_id, sha256) = fenced.clone();
        control
            .invalidate(vec![Pair { addon_id, sha256 }], Lsn(1))
            .await;
        let (a, b) = tokio::join!(
            reads.answer(&fenced.0, &fenced.1),
            reads.answer(&free.0, &free.1)
        );
        assert!(matches!(a, Err(StoreError::Behind(Lsn(1)))));
        assert_eq!(version(b.unwrap()), "1.0", "its batch went to any source");
        reads.answer(&free.0, &free.1).await.unwrap();
        assert_eq!(store.queries(), 1, "and was cached");
    }

    #[tokio::test]
    async fn a_read_no_source_has_replayed_fails_and_is_not_cached() {
        let store = SlowStore::new(Duration::ZERO);
        store.caught_up.store(false, Ordering::SeqCst);
        let (reads, control) = cache(store.clone());
        let (a, s) = key();
        control.invalidate(vec![pair()], Lsn(1)).await;
        for _ in 0..2 {
            assert!(matches!(
                reads.answer(&a, &s).await,
                Err(StoreError::Behind(Lsn(1)))
            ));
        }
        // Lookups of a fenced key take the same path.
        assert!(matches!(
            reads.lookup(&[key()]).await,
            Err(StoreError::Behind(_))
        ));
        assert_eq!(store.queries(), 0, "nothing old was read");
        store.caught_up.store(true, Ordering::SeqCst);
        reads.answer(&a, &s).await.unwrap();
        reads.answer(&a, &s).await.unwrap();
        assert_eq!(store.queries(), 1, "cached once a source caught up");
    }

    #[tokio::test]
    async fn a_fence_is_set_before_the_generation_that_names_it() {
        // A fill starting between the two steps of an invalidation reads
        // the generation and then looks for the key's fence: whichever
        // generation it reads, it must either find the fence (and read
        // from a source that replayed it) or see its fill as raced.
        let store = SlowStore::new(Duration::ZERO);
        let (reads, _control) = cache(store);
        let shared = &reads.shared;
        let key = key();
        let mut seen = None;
        shared.fence_then_bump(&key, Lsn(5), || {
            let started = shared.generation.load(Ordering::SeqCst);
            let fenced = shared.fences.needed_for_key(&key);
            seen = Some((started, fenced));
        });
        let (started, fenced) = seen.unwrap();
        assert_eq!(fenced, Some(Lsn(5)), "a fill reading {started} is fenced");
        assert!(
            shared.changed_since(&key, started),
            "and its result is not cached"
        );
        // After both steps, a fill that started before sees the change too.
        assert!(shared.changed_since(&key, started));
        assert!(!shared.changed_since(&key, shared.generation.load(Ordering::SeqCst)));
    }

    #[tokio::test]
    async fn an_event_without_keys_fences_receipts_not_found() {
        let event: shared::event::InvalidationEvent =
            serde_json::from_str(r#"{"v": 1, "keys": [], "lsn": "0/3000060"}"#).unwrap();
        assert!(event.keys.is_empty());
        let store = SlowStore::new(Duration::ZERO);
        let (reads, control) = cache(store);
        assert_eq!(control.latest_lsn(), Some(Lsn(0)).filter(|l| l.0 > 0));
        control.invalidate(event.keys, event.lsn).await;
        assert_eq!(control.latest_lsn(), Some(Lsn(0x3000060)));
        assert_eq!(
            reads.shared.fences.needed_for_absence(),
            Some(Lsn(0x3000060)),
            "a receipt not found is asked of a source that replayed it"
        );
        assert_eq!(
            reads.shared.fences.needed_for_any(),
            None,
            "no key is fenced"
        );
    }

    #[tokio::test]
    async fn losing_the_broker_drops_the_cache_and_shortens_lifetimes() {
        let store = SlowStore::new(Duration::ZERO);
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let config = CacheConfig {
            max_entries: 100,
            max_bytes: 1 << 20,
            ttl_found: Duration::from_secs(60),
            ttl_missing: Duration::from_secs(60),
            ttl_disconnected: Duration::from_millis(100),
            sources: 1,
            max_fences: DEFAULT_MAX_FENCES,
        };
        let (reads, control) = CachedReads::new(store.clone(), config, metrics);
        control.subscribed(Lsn(0));
        let (a, s) = key();
        reads.answer(&a, &s).await.unwrap();
        reads.answer(&a, &s).await.unwrap();
        assert_eq!(store.queries(), 1);
        control.unsubscribed();
        reads.answer(&a, &s).await.unwrap();
        reads.answer(&a, &s).await.unwrap();
        assert_eq!(store.queries(), 2, "dropped, then cached briefly");
        tokio::time::sleep(Duration::from_millis(150)).await;
        reads.answer(&a, &s).await.unwrap();
        assert_eq!(store.queries(), 3, "expired after the short lifetime");
    }

    #[tokio::test]
    async fn a_clear_drops_entries_and_fills_in_flight() {
        let store = SlowStore::new(Duration::from_millis(100));
        let (reads, control) = cache(store.clone());
        let (a, s) = key();
        let slow = tokio::spawn({
            let (reads, a, s) = (reads.clone(), a.clone(), s);
            async move { reads.answer(&a, &s).await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        store.set("2.0");
        control.subscribed(Lsn(0));
        slow.await.unwrap().unwrap();
        assert_eq!(version(reads.answer(&a, &s).await.unwrap()), "2.0");
        assert_eq!(store.queries(), 2);
    }

    fn config(max_entries: u64, max_bytes: u64) -> CacheConfig {
        CacheConfig {
            max_entries,
            max_bytes,
            ttl_found: Duration::from_secs(60),
            ttl_missing: Duration::from_secs(60),
            ttl_disconnected: Duration::from_secs(60),
            sources: 1,
            max_fences: DEFAULT_MAX_FENCES,
        }
    }

    fn nth_key(i: u8) -> (AddonId, Sha256) {
        (AddonId::parse("a@b").unwrap(), Sha256::from_bytes([i; 32]))
    }

    #[tokio::test]
    async fn a_disabled_cache_queries_every_read_and_still_fences() {
        let store = SlowStore::new(Duration::ZERO);
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let (reads, control) = CachedReads::new(store.clone(), config(0, 0), metrics.clone());
        control.subscribed(Lsn(0));
        let (a, s) = key();
        reads.answer(&a, &s).await.unwrap();
        reads.answer(&a, &s).await.unwrap();
        assert_eq!(store.queries(), 2);
        assert_eq!(metrics.cache_hits.get(), 0);
        control.invalidate(vec![pair()], Lsn(1)).await;
        store.set("2.0");
        assert_eq!(version(reads.answer(&a, &s).await.unwrap()), "2.0");
        assert_eq!(
            metrics
                .store_queries
                .with_label_values(&["record_fenced"])
                .get(),
            1,
            "a fenced key is read from a source that replayed its fence"
        );
        assert_eq!(
            metrics.cache_fill_discarded.get(),
            0,
            "with nothing cached, no fill counts as discarded by a race"
        );
        store.caught_up.store(false, Ordering::SeqCst);
        let (reads, _control) = CachedReads::new(store.clone(), config(0, 0), metrics);
        assert!(reads.answer(&a, &s).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn both_bounds_hold() {
        let store = SlowStore::new(Duration::ZERO);
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        // By entries: 10 entries, memory to spare.
        let (reads, control) =
            CachedReads::new(store.clone(), config(10, 1 << 30), metrics.clone());
        control.subscribed(Lsn(0));
        for i in 0..100 {
            let (a, s) = nth_key(i);
            reads.answer(&a, &s).await.unwrap();
        }
        reads.shared.entries.run_pending_tasks().await;
        assert!(reads.shared.entries.entry_count() <= 10);
        // By memory: room for about 9 entries of ~3.6 KB, entries to spare.
        let (reads, control) = CachedReads::new(store, config(1000, 32 << 10), metrics);
        control.subscribed(Lsn(0));
        for i in 0..100 {
            let (a, s) = nth_key(i);
            reads.answer(&a, &s).await.unwrap();
        }
        reads.shared.entries.run_pending_tasks().await;
        let entries = reads.shared.entries.entry_count();
        assert!(entries > 0 && entries <= 9, "{entries} entries");
        assert!(reads.shared.entries.weighted_size() <= 32 << 10);
    }
}
