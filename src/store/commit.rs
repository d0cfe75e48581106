//! Group commit: concurrent writers queue their operations; one of them (the leader)
//! writes every queued operation with a single round of fsyncs and one synced RocksDB
//! batch, then hands each writer its own result. Batches amortize the fsync without any
//! writer returning before its data is durable.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::error::StoreResult as Result;
use super::expert::NewExpert;

pub(crate) enum Op {
    Insert(Vec<NewExpert>),
    Delete(Vec<u64>),
    /// Inserts and deletes in one commit: a replaced fact's new expert and the
    /// tombstones of the experts it replaces become visible together.
    Replace {
        insert: Vec<NewExpert>,
        delete: Vec<u64>,
    },
    /// One batch of an archive import: experts with their original creation times and
    /// usage counts, committed together with the archive's progress marker.
    Import(ImportBatch),
}

/// One batch of an archive import ([`super::Store::import_batch`]).
pub(crate) struct ImportBatch {
    pub(crate) experts: Vec<NewExpert>,
    /// Creation time of each expert in the exporting store.
    pub(crate) created_at_ms: Vec<u64>,
    /// Selection count of each expert in the exporting store.
    pub(crate) usage: Vec<u64>,
    /// The archive's id (a digest of its bytes).
    pub(crate) archive: [u8; 16],
    /// Records of the archive committed before this batch (the marker must say so,
    /// or the batch is refused: another import of the same archive got there first).
    pub(crate) start: u64,
    /// Records in the whole archive.
    pub(crate) total: u64,
}

pub(crate) type Slot = Arc<Mutex<Option<Result<Vec<u64>>>>>;

#[derive(Default)]
struct Queue {
    pending: Vec<(Op, Slot)>,
    leader_active: bool,
}

#[derive(Default)]
pub(crate) struct GroupCommit {
    queue: Mutex<Queue>,
    cv: Condvar,
}

/// Clears the leader flag even if the commit function unwinds, so followers never wait
/// forever on a leader that is gone.
struct LeaderGuard<'a>(&'a GroupCommit);

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock();
        q.leader_active = false;
        self.0.cv.notify_all();
    }
}

impl GroupCommit {
    /// Queues `op` and returns once it is committed (by this thread or another).
    /// `commit` receives a group of operations and must fill every slot.
    pub(crate) fn submit(&self, op: Op, commit: impl Fn(Vec<(Op, Slot)>)) -> Result<Vec<u64>> {
        let slot: Slot = Arc::new(Mutex::new(None));
        let mut q = self.queue.lock();
        q.pending.push((op, slot.clone()));
        loop {
            if let Some(result) = slot.lock().take() {
                return result;
            }
            if q.leader_active {
                self.cv.wait(&mut q);
                continue;
            }
            q.leader_active = true;
            let group = std::mem::take(&mut q.pending);
            drop(q);
            {
                let _guard = LeaderGuard(self);
                commit(group);
            }
            q = self.queue.lock();
        }
    }
}
