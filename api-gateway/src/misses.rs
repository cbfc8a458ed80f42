//! Cache misses coalesced across keys ([`Misses`]): the keys that miss
//! while the store is busy are read together, one query per batch (the
//! store's `lookup`, keys joined against the primary key), and each waiter
//! is handed its own row.
//!
//! A miss joins the open batch of its *need* (any source, or a source that
//! has replayed a given LSN: see `fences.rs`), so one lagging key never
//! sends the others to a caught-up source, nor fails them with `Behind`.
//! A batch is sent once one of [`BATCHES_IN_FLIGHT`] query slots is free,
//! after one yield, so every miss that arrived meanwhile rides along (up to
//! [`MAX_BATCH`] keys); when the store keeps up, a batch holds one key and
//! costs what one single-key query does.
//!
//! Freshness is not decided here: each caller reads the cache generation
//! before it asks, and checks its own key's fence when its row comes back
//! (`cache.rs`), exactly as for a query of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shared::event::Lsn;
use shared::record::Record;
use tokio::sync::{Semaphore, oneshot};

use crate::fences::Key;
use crate::metrics::Metrics;
use crate::store::{Reads, StoreError};

/// Most batch queries running at once: below the pool's default size (8),
/// leaving connections to listings, receipts and bulk lookups. While all
/// run, misses gather into the next batch.
pub const BATCHES_IN_FLIGHT: usize = 4;

/// Most keys in one batch: a query of 256 keys takes a few ms, still short
/// next to the read timeout, and keeps one slow batch from holding many.
pub const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<Option<Record>, StoreError>>;

/// A batch gathering keys of one need.
struct Open {
    id: u64,
    need: Option<Lsn>,
    keys: Vec<Key>,
    /// Where each key is in `keys`: the same key asked twice is read once.
    index: HashMap<Key, usize>,
    /// Each waiter and the position of its key.
    waiters: Vec<(usize, Reply)>,
}

#[derive(Default)]
struct State {
    open: Vec<Open>,
    next_id: u64,
}

/// Coalesces concurrent single-record reads into batch queries.
#[derive(Clone)]
pub struct Misses<R> {
    store: R,
    state: Arc<Mutex<State>>,
    slots: Arc<Semaphore>,
    metrics: Metrics,
}

impl<R: Reads> Misses<R> {
    /// Batches over `store`.
    pub fn new(store: R, metrics: Metrics) -> Self {
        Self {
            store,
            state: Arc::default(),
            slots: Arc::new(Semaphore::new(BATCHES_IN_FLIGHT)),
            metrics,
        }
    }

    /// The record of `key`, from any source (`need` `None`) or from one that
    /// has replayed `need`, read in a batch with the other keys missing now.
    pub async fn record(&self, key: Key, need: Option<Lsn>) -> Result<Option<Record>, StoreError> {
        let (reply, answer) = oneshot::channel();
        if let Some(id) = self.join(key, need, reply) {
            // Run by a task of its own, not by this request: a client that
            // hangs up must not strand the others waiting on the batch.
            let this = self.clone();
            tokio::spawn(async move { this.send(id).await });
        }
        // The batch's task only ends without replying by panicking.
        answer.await.unwrap_or(Err(StoreError::Unavailable))
    }

    /// Adds `key` to the open batch of its need, or opens one: then the
    /// batch's id, for the caller to send it.
    fn join(&self, key: Key, need: Option<Lsn>, reply: Reply) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = state
            .open
            .iter_mut()
            .find(|o| o.need == need && o.keys.len() < MAX_BATCH)
        {
            let at = match open.index.get(&key) {
                Some(&at) => at,
                None => {
                    open.keys.push(key.clone());
                    open.index.insert(key, open.keys.len() - 1);
                    open.keys.len() - 1
                }
            };
            open.waiters.push((at, reply));
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.open.push(Open {
            id,
            need,
            keys: vec![key.clone()],
            index: HashMap::from([(key, 0)]),
            waiters: vec![(0, reply)],
        });
        Some(id)
    }

    /// Waits for a query slot, closes batch `id`, reads it and replies.
    async fn send(&self, id: u64) {
        let _slot = self.slots.acquire().await;
        // Misses already on their way (woken by the same events) join first.
        tokio::task::yield_now().await;
        let open = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(at) = state.open.iter().position(|o| o.id == id) else {
                return;
            };
            state.open.swap_remove(at)
        };
        let records = self.read(&open.keys, open.need).await;
        match records {
            Ok(mut records) => {
                // Answer the last waiter of a key with the row itself.
                let mut left = vec![0usize; open.keys.len()];
                for (at, _) in &open.waiters {
                    left[*at] += 1;
                }
                for (at, reply) in open.waiters {
                    left[at] -= 1;
                    let record = match left[at] {
                        0 => records[at].take(),
                        _ => records[at].clone(),
                    };
                    let _ = reply.send(Ok(record));
                }
            }
            Err(e) => {
                for (_, reply) in open.waiters {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// One query for `keys`: by primary key when there is one.
    async fn read(
        &self,
        keys: &[Key],
        need: Option<Lsn>,
    ) -> Result<Vec<Option<Record>>, StoreError> {
        let kind = match (keys.len(), need) {
            (1, None) => "record",
            (1, Some(_)) => "record_fenced",
            (_, None) => "record_batch",
            (_, Some(_)) => "record_batch_fenced",
        };
        self.metrics.store_queries.with_label_values(&[kind]).inc();
        self.metrics.miss_batch_keys.observe(keys.len() as f64);
        match (keys, need) {
            ([(addon_id, sha256)], None) => Ok(vec![self.store.record(addon_id, sha256).await?]),
            ([(addon_id, sha256)], Some(lsn)) => Ok(vec![
                self.store.record_at_least(addon_id, sha256, lsn).await?,
            ]),
            (keys, None) => self.store.lookup(keys).await,
            (keys, Some(lsn)) => self.store.lookup_at_least(keys, lsn).await,
        }
    }
}
