//! What the gateway knows about replica lag ([`Fences`]): per key and per
//! add-on, the LSN a source must have replayed before it may serve them
//! (fences); each source's replay position; a global floor every read must
//! meet; and the newest LSN any event carried. See `docs/freshness.md`.
//!
//! Nothing here expires with time: lag doesn't. A fence is dropped only
//! once every source has replayed it (then it no longer excludes any), or,
//! past [`Fences::capacity`], lowest LSN first, after raising the floor to
//! its LSN, so that what a dropped fence protected stays protected. Memory
//! is bounded, and no fence is ever refused (unlike an admission-filtered
//! cache, which turns away the new, rarely read entries: exactly fences).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use shared::domain::{AddonId, Sha256};
use shared::event::Lsn;

/// A record's key.
pub type Key = (AddonId, Sha256);

/// A key's fence: the generation of its last invalidation and the highest
/// LSN any source must have replayed before reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The cache generation its last invalidation was given.
    pub generation: u64,
    /// The highest LSN of the events that invalidated it.
    pub lsn: Lsn,
}

/// The fences and what each source has replayed.
#[derive(Debug)]
pub struct Fences {
    maps: Mutex<Maps>,
    /// Per source, in the order reads list them: the LSN it has replayed,
    /// as last probed (`u64::MAX` for a primary; 0 while unknown).
    replayed: Mutex<Vec<u64>>,
    /// The lowest of `replayed` (0 until every source has been probed): a
    /// read needing no more than this may go to any source.
    min_replayed: AtomicU64,
    /// Every read needs a source at or past this: raised by fences dropped
    /// for room and by every (re)subscription.
    floor: AtomicU64,
    /// The highest LSN any event (or resubscription) carried.
    newest: AtomicU64,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Maps {
    keys: HashMap<Key, Fence>,
    keys_by_lsn: BTreeSet<(Lsn, Key)>,
    addons: HashMap<AddonId, Lsn>,
    addons_by_lsn: BTreeSet<(Lsn, AddonId)>,
    /// The highest generation of a key fence dropped: a fill that started
    /// before it can no longer tell whether its key was invalidated.
    dropped_generation: u64,
}

impl Fences {
    /// No fences, for `sources` sources (replay unknown), keeping at most
    /// `capacity` key fences and as many add-on fences.
    pub fn new(sources: usize, capacity: usize) -> Self {
        Self {
            maps: Mutex::new(Maps::default()),
            replayed: Mutex::new(vec![0; sources]),
            min_replayed: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            newest: AtomicU64::new(0),
            capacity: capacity.max(1),
        }
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding it leaves maps that are still consistent
        // enough: at worst a fence too many.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Most key fences (and add-on fences) kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Fences `key` (and its add-on) at `lsn` with `generation`; keeps the
    /// higher LSN when already fenced (events may arrive out of order).
    pub fn fence(&self, key: &Key, lsn: Lsn, generation: u64) {
        self.saw(lsn);
        let mut maps = self.maps();
        let maps = &mut *maps;
        let lsn = match maps.keys.get(key) {
            Some(old) => {
                maps.keys_by_lsn.remove(&(old.lsn, key.clone()));
                old.lsn.max(lsn)
            }
            None => lsn,
        };
        maps.keys.insert(key.clone(), Fence { generation, lsn });
        maps.keys_by_lsn.insert((lsn, key.clone()));
        let addon = &key.0;
        let addon_lsn = match maps.addons.get(addon) {
            Some(&old) => {
                maps.addons_by_lsn.remove(&(old, addon.clone()));
                old.max(lsn)
            }
            None => lsn,
        };
        maps.addons.insert(addon.clone(), addon_lsn);
        maps.addons_by_lsn.insert((addon_lsn, addon.clone()));
        while maps.keys.len() > self.capacity {
            let Some((lsn, key)) = maps.keys_by_lsn.pop_first() else {
                break;
            };
            if let Some(fence) = maps.keys.remove(&key) {
                maps.dropped_generation = maps.dropped_generation.max(fence.generation);
            }
            self.raise_floor(lsn);
        }
        while maps.addons.len() > self.capacity {
            let Some((lsn, addon)) = maps.addons_by_lsn.pop_first() else {
                break;
            };
            maps.addons.remove(&addon);
            self.raise_floor(lsn);
        }
    }

    /// An event (possibly with no keys) carried `lsn`.
    pub fn saw(&self, lsn: Lsn) {
        self.newest.fetch_max(lsn.0, Ordering::SeqCst);
    }

    /// Every read from now on needs a source at or past `lsn` (until every
    /// source has replayed it, when the floor no longer excludes any).
    pub fn raise_floor(&self, lsn: Lsn) {
        self.floor.fetch_max(lsn.0, Ordering::SeqCst);
        self.saw(lsn);
    }

    /// `key`'s fence, if it has one.
    pub fn get(&self, key: &Key) -> Option<Fence> {
        self.maps().keys.get(key).copied()
    }

    /// Whether a fence of `key`, or any fence dropped since, is newer than
    /// `generation`.
    pub fn changed_since(&self, key: &Key, generation: u64) -> bool {
        let maps = self.maps();
        maps.dropped_generation > generation
            || maps
                .keys
                .get(key)
                .is_some_and(|fence| fence.generation > generation)
    }

    /// What a source must have replayed to serve `key`; `None` when any
    /// source may (every source has replayed it).
    pub fn needed_for_key(&self, key: &Key) -> Option<Lsn> {
        let fence = self.get(key).map_or(0, |f| f.lsn.0);
        self.needed(fence)
    }

    /// What a source must have replayed to list `addon_id`; `None` when any
    /// source may.
    pub fn needed_for_addon(&self, addon_id: &AddonId) -> Option<Lsn> {
        let fence = self.maps().addons.get(addon_id).map_or(0, |l| l.0);
        self.needed(fence)
    }

    /// What a source must have replayed to answer that something (a
    /// receipt) does not exist yet: the newest LSN known. `None` when any
    /// source may.
    pub fn needed_for_absence(&self) -> Option<Lsn> {
        self.needed(self.newest.load(Ordering::SeqCst))
    }

    /// What a source must have replayed to serve a key with no fence of its
    /// own: the floor. `None` when any source may.
    pub fn needed_for_any(&self) -> Option<Lsn> {
        self.needed(0)
    }

    fn needed(&self, lsn: u64) -> Option<Lsn> {
        let needed = lsn.max(self.floor.load(Ordering::SeqCst));
        (needed > self.min_replayed.load(Ordering::SeqCst)).then_some(Lsn(needed))
    }

    /// The newest LSN known (from events and resubscriptions), if any.
    pub fn newest(&self) -> Option<Lsn> {
        match self.newest.load(Ordering::SeqCst) {
            0 => None,
            lsn => Some(Lsn(lsn)),
        }
    }

    /// Records what source `index` has replayed (`u64::MAX`: a primary);
    /// replay only moves forward, so a lower figure is ignored, except from
    /// a source that was a primary and is now replaying (a failover demoted
    /// it): its real position replaces "everything". Then drops the fences
    /// every source has replayed.
    pub fn replayed(&self, index: usize, lsn: u64) {
        let min = {
            let mut replayed = self.replayed.lock().unwrap_or_else(|e| e.into_inner());
            let Some(slot) = replayed.get_mut(index) else {
                return;
            };
            *slot = if *slot == u64::MAX {
                lsn
            } else {
                (*slot).max(lsn)
            };
            let min = replayed.iter().copied().min().unwrap_or(0);
            // Stored, not raised: a demoted primary lowers it again.
            self.min_replayed.store(min, Ordering::SeqCst);
            min
        };
        self.prune(Lsn(min));
    }

    /// Drops the fences at or below `replayed_by_all`.
    fn prune(&self, replayed_by_all: Lsn) {
        let mut maps = self.maps();
        let maps = &mut *maps;
        while maps
            .keys_by_lsn
            .first()
            .is_some_and(|(lsn, _)| *lsn <= replayed_by_all)
        {
            let Some((_, key)) = maps.keys_by_lsn.pop_first() else {
                break;
            };
            if let Some(fence) = maps.keys.remove(&key) {
                maps.dropped_generation = maps.dropped_generation.max(fence.generation);
            }
        }
        while maps
            .addons_by_lsn
            .first()
            .is_some_and(|(lsn, _)| *lsn <= replayed_by_all)
        {
            let Some((_, addon)) = maps.addons_by_lsn.pop_first() else {
                break;
            };
            maps.addons.remove(&addon);
        }
    }

    /// How many key fences are kept.
    pub fn len(&self) -> usize {
        self.maps().keys.len()
    }

    /// Whether no key is fenced.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Key {
        let mut bytes = [0; 32];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        (
            AddonId::parse(&format!("a{}@b", i % 7)).unwrap(),
            Sha256::from_bytes(bytes),
        )
    }

    #[test]
    fn no_fence_is_refused_and_the_floor_covers_those_dropped_for_room() {
        let fences = Fences::new(2, 100);
        // Read-skewed: the first ten fences are asked for over and over
        // (what an admission filter counts), then a flood of new ones.
        for i in 0..10 {
            fences.fence(&key(i), Lsn(u64::from(i) + 1), u64::from(i) + 1);
        }
        for i in 10..1_000 {
            for hot in 0..10 {
                let _ = fences.get(&key(hot));
            }
            fences.fence(&key(i), Lsn(u64::from(i) + 1), u64::from(i) + 1);
        }
        assert_eq!(fences.len(), 100);
        // The newest hundred are all kept…
        for i in 900..1_000 {
            assert_eq!(fences.needed_for_key(&key(i)), Some(Lsn(u64::from(i) + 1)));
        }
        // …and every older one, dropped, is covered by the floor.
        for i in 0..900 {
            assert_eq!(fences.get(&key(i)), None);
            assert!(fences.needed_for_key(&key(i)) >= Some(Lsn(u64::from(i) + 1)));
        }
        assert!(fences.changed_since(&key(0), 5), "a dropped fence counts");
    }

    #[test]
    fn fences_live_until_every_source_has_replayed_them() {
        let fences = Fences::new(2, 100);
        fences.fence(&key(1), Lsn(10), 1);
        fences.fence(&key(2), Lsn(20), 2);
        assert_eq!(fences.needed_for_key(&key(1)), Some(Lsn(10)));
        assert_eq!(fences.needed_for_addon(&key(2).0), Some(Lsn(20)));
        // One source (a primary) has everything; the other is paused at 5.
        fences.replayed(1, u64::MAX);
        fences.replayed(0, 5);
        assert_eq!(fences.len(), 2, "however long the pause");
        assert_eq!(fences.needed_for_key(&key(1)), Some(Lsn(10)));
        fences.replayed(0, 15);
        assert_eq!(fences.len(), 1);
        assert_eq!(fences.needed_for_key(&key(1)), None);
        assert_eq!(fences.needed_for_key(&key(2)), Some(Lsn(20)));
        // A lower figure (a stale probe) never moves replay back.
        fences.replayed(0, 1);
        assert_eq!(fences.needed_for_key(&key(1)), None);
        fences.replayed(0, 20);
        assert!(fences.is_empty());
        assert_eq!(fences.needed_for_addon(&key(2).0), None);
    }

    #[test]
    fn a_demoted_primary_counts_at_its_replay_position() {
        let fences = Fences::new(2, 100);
        fences.replayed(0, 100);
        fences.replayed(1, u64::MAX);
        // A failover makes source 1 a standby that has replayed only 50.
        fences.replayed(1, 50);
        fences.fence(&key(1), Lsn(60), 1);
        fences.replayed(0, 200);
        assert_eq!(
            fences.needed_for_key(&key(1)),
            Some(Lsn(60)),
            "kept: source 1 has not replayed it"
        );
        fences.replayed(1, 60);
        assert_eq!(fences.needed_for_key(&key(1)), None);
    }

    #[test]
    fn the_floor_and_the_newest_lsn_hold_until_replayed_by_all() {
        let fences = Fences::new(1, 100);
        assert_eq!(fences.needed_for_any(), None);
        assert_eq!(fences.newest(), None);
        fences.saw(Lsn(30));
        assert_eq!(fences.needed_for_absence(), Some(Lsn(30)));
        assert_eq!(
            fences.needed_for_any(),
            None,
            "an event alone fences no key"
        );
        fences.raise_floor(Lsn(40));
        assert_eq!(fences.needed_for_any(), Some(Lsn(40)));
        assert_eq!(fences.needed_for_key(&key(3)), Some(Lsn(40)));
        assert_eq!(fences.newest(), Some(Lsn(40)));
        fences.replayed(0, 40);
        assert_eq!(fences.needed_for_any(), None);
        assert_eq!(fences.needed_for_absence(), None);
    }
}
