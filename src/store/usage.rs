//! Selection counters (the L2P usage statistics), accumulated in memory on the read path
//! and persisted to the store's `usage` column family in batches.
//!
//! A request that selects experts adds to one of several mutex-guarded maps chosen by a
//! hash of the expert id, so concurrent requests rarely touch the same lock and never
//! touch RocksDB. `flush` moves the pending counts into the store with one merge batch.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::error::StoreResult as Result;
use super::Store;

const SHARDS: usize = 16;

/// In-memory selection counts waiting to be persisted.
#[derive(Default)]
pub struct UsageAccumulator {
    shards: [Mutex<HashMap<u64, u64>>; SHARDS],
}

impl std::fmt::Debug for UsageAccumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageAccumulator")
            .field("pending_experts", &self.pending_len())
            .finish()
    }
}

fn shard_of(id: u64) -> usize {
    // Fibonacci hashing spreads sequential ids over the shards.
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

impl UsageAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one selection of each id (ids may repeat).
    pub fn record(&self, ids: &[u64]) {
        for &id in ids {
            *self.shards[shard_of(id)].lock().entry(id).or_default() += 1;
        }
    }

    /// Adds `n` selections of `id`.
    pub fn record_n(&self, id: u64, n: u64) {
        if n > 0 {
            *self.shards[shard_of(id)].lock().entry(id).or_default() += n;
        }
    }

    /// Selections of `id` not yet persisted.
    pub fn pending(&self, id: u64) -> u64 {
        self.shards[shard_of(id)]
            .lock()
            .get(&id)
            .copied()
            .unwrap_or(0)
    }

    /// Number of experts with pending counts.
    pub fn pending_len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Persists and clears the pending counts. On failure the counts are put back.
    pub fn flush(&self, store: &Store) -> Result<()> {
        let mut drained: Vec<(u64, u64)> = Vec::new();
        for s in &self.shards {
            drained.extend(s.lock().drain());
        }
        if drained.is_empty() {
            return Ok(());
        }
        if let Err(e) = store.add_usage(&drained) {
            for (id, n) in drained {
                self.record_n(id, n);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Total selections of `id`: persisted plus pending.
    pub fn total(&self, store: &Store, id: u64) -> Result<u64> {
        Ok(store.usage(id)? + self.pending(id))
    }
}
