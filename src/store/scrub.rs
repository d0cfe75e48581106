//! Background verification: a thread that checks the checksum of every live record after
//! open, so that lookups find their records already verified instead of paying for the
//! CRC (and the first page faults of a fresh mapping) on the query path.
//!
//! It only moves work earlier; it never relaxes the read path's guarantee. A record the
//! thread has not reached yet is still verified by the read that touches it first, and a
//! record the thread finds corrupt is left unverified, so every read of it keeps failing
//! with [`StoreError::CorruptRecord`](super::StoreError::CorruptRecord). Nothing is
//! persisted: a verified bit lives in one mapping of one process, because bytes on disk
//! can rot after they were checked.
//!
//! Deciding from doing: [`next_work`] picks the next shard and its slots from a snapshot
//! (pure); [`run`] executes, holding the store only through a `Weak` so that a running
//! verification never keeps a dropped store (and its writer lock) alive.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::error::StoreError;
use super::read::State;
use super::shard::Shard;
use super::verify::Problem;
use super::Store;

/// How hard the background verification may work (the caller's policy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackgroundVerifyPolicy {
    /// Upper bound on the bytes checked per second; `None` runs at full speed (one core
    /// and whatever the disk gives). A bound keeps a scan of shards larger than memory
    /// from crowding out the queries' own reads.
    pub max_bytes_per_sec: Option<u64>,
}

impl BackgroundVerifyPolicy {
    /// Full speed.
    pub fn unthrottled() -> Self {
        Self::default()
    }

    /// At most `bytes` checked per second.
    pub fn throttled(bytes: u64) -> Self {
        BackgroundVerifyPolicy {
            max_bytes_per_sec: Some(bytes.max(1)),
        }
    }
}

/// Where a background verification stands.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct BackgroundVerifyStatus {
    /// Records whose checksum this verification computed.
    pub records_checked: u64,
    /// Records found already verified (by a read or an earlier pass) and skipped.
    pub records_skipped: u64,
    /// Bytes read and checksummed.
    pub bytes_checked: u64,
    /// Shards finished.
    pub shards_done: u32,
    /// Corrupt records found (id, shard, offset, what is wrong); each stays unverified,
    /// so reads of it fail.
    pub problems: Vec<Problem>,
    /// The thread ended: every live record was reached, it was stopped, or the store
    /// was dropped.
    pub finished: bool,
    /// Time from the start to now, or to the end once finished.
    pub elapsed: Duration,
}

/// A running background verification ([`Store::verify_in_background`]). Dropping the
/// handle stops the thread and waits for it (at most one record's check).
pub struct BackgroundVerify {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    finished: AtomicBool,
    checked: AtomicU64,
    skipped: AtomicU64,
    bytes: AtomicU64,
    shards_done: AtomicU64,
    problems: Mutex<Vec<Problem>>,
    /// Nanoseconds from `started` to the end, 0 while running.
    elapsed_ns: AtomicU64,
    started: Instant,
}

impl BackgroundVerify {
    /// Where it stands now.
    pub fn status(&self) -> BackgroundVerifyStatus {
        let s = &self.shared;
        let finished = s.finished.load(Ordering::Acquire);
        let elapsed = if finished {
            Duration::from_nanos(s.elapsed_ns.load(Ordering::Acquire))
        } else {
            s.started.elapsed()
        };
        BackgroundVerifyStatus {
            records_checked: s.checked.load(Ordering::Relaxed),
            records_skipped: s.skipped.load(Ordering::Relaxed),
            bytes_checked: s.bytes.load(Ordering::Relaxed),
            shards_done: s.shards_done.load(Ordering::Relaxed) as u32,
            problems: s.problems.lock().clone(),
            finished,
            elapsed,
        }
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.shared.finished.load(Ordering::Acquire)
    }

    /// Waits for the verification to reach every live record and returns the final
    /// status.
    pub fn wait(mut self) -> BackgroundVerifyStatus {
        if let Some(t) = self.thread.take() {
            // A panic in the thread (none is expected: it only reads) still ends it.
            let _ = t.join();
        }
        self.shared.finished.store(true, Ordering::Release);
        self.status()
    }

    /// Stops the thread after the record it is checking and returns where it got.
    pub fn stop(self) -> BackgroundVerifyStatus {
        self.shared.stop.store(true, Ordering::Release);
        self.wait()
    }
}

impl Drop for BackgroundVerify {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for BackgroundVerify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundVerify")
            .field("status", &self.status())
            .finish()
    }
}

/// One shard to verify and its live records as (slot, id), in file order.
pub(crate) type ShardWork = (Arc<Shard>, Vec<(u32, u64)>);

/// The next shard to verify after shard id `after` (shards are visited in id order;
/// compaction's outputs get new, higher ids, so they are reached too) and its live
/// records as (slot, id) in slot order, i.e. in file order.
pub(crate) fn next_work(state: &State, after: Option<u32>) -> Option<ShardWork> {
    let lower = match after {
        None => std::ops::Bound::Unbounded,
        Some(a) => std::ops::Bound::Excluded(a),
    };
    let (&sid, shard) = state
        .shards
        .range((lower, std::ops::Bound::Unbounded))
        .next()?;
    let mut slots: Vec<(u32, u64)> = state
        .locs
        .iter()
        .filter(|(_, loc)| loc.shard == sid)
        .map(|(id, loc)| (loc.slot, id))
        .collect();
    slots.sort_unstable();
    Some((shard.clone(), slots))
}

impl Store {
    /// Starts verifying every live record's checksum on a background thread, marking
    /// each good one verified in this process's mapping so that lookups skip the check.
    ///
    /// Reads stay safe before it finishes (an unreached record is checked by its first
    /// read) and after it (a corrupt record is never marked, so reads of it fail with
    /// `CorruptRecord`). Meant for long-running processes right after open; a one-shot
    /// command would read every shard to answer one question, so nothing starts it
    /// implicitly. Records committed after the start are verified by their first read.
    pub fn verify_in_background(
        self: &Arc<Self>,
        policy: BackgroundVerifyPolicy,
    ) -> BackgroundVerify {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            checked: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            shards_done: AtomicU64::new(0),
            problems: Mutex::new(Vec::new()),
            elapsed_ns: AtomicU64::new(0),
            started: Instant::now(),
        });
        let weak = Arc::downgrade(self);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mome-verify".into())
            .spawn(move || run(weak, policy, &s));
        match thread {
            Ok(t) => BackgroundVerify {
                shared,
                thread: Some(t),
            },
            Err(e) => {
                // No thread: reads verify on first touch as they always do.
                tracing::warn!("background verification not started: {e}");
                shared.finished.store(true, Ordering::Release);
                BackgroundVerify {
                    shared,
                    thread: None,
                }
            }
        }
    }
}

fn run(store: Weak<Store>, policy: BackgroundVerifyPolicy, s: &Shared) {
    let started = s.started;
    let mut after = None;
    tracing::info!("background verification started");
    // Asked to stop, or the store is gone (its records no longer matter to anyone).
    let stopped = || s.stop.load(Ordering::Acquire) || store.strong_count() == 0;
    while !stopped() {
        // Upgrade only to take the snapshot: the thread never keeps the store alive.
        let Some(state) = store.upgrade().map(|st| st.state.load_full()) else {
            break;
        };
        let Some((shard, slots)) = next_work(&state, after) else {
            break;
        };
        drop(state);
        after = Some(shard.id);
        shard.advise_sequential();
        for (slot, id) in slots {
            if stopped() {
                break;
            }
            if shard.is_verified(slot) {
                s.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match shard.verify_slot(slot, id) {
                Ok(()) => {}
                Err(StoreError::CorruptRecord {
                    id,
                    shard,
                    offset,
                    reason,
                }) => {
                    tracing::warn!(
                        "background verification: expert {id:016x}, shard {shard}, offset {offset}: {reason}"
                    );
                    s.problems.lock().push(Problem {
                        id: Some(id),
                        shard: Some(shard),
                        offset: Some(offset),
                        detail: reason,
                    });
                }
                Err(e) => {
                    tracing::warn!("background verification: expert {id:016x}: {e}");
                    s.problems.lock().push(Problem {
                        id: Some(id),
                        shard: Some(shard.id),
                        offset: Some(shard.layout.slot_offset(slot)),
                        detail: e.to_string(),
                    });
                }
            }
            s.checked.fetch_add(1, Ordering::Relaxed);
            let bytes = s
                .bytes
                .fetch_add(shard.layout.record_size as u64, Ordering::Relaxed)
                + shard.layout.record_size as u64;
            throttle(policy, bytes, started, &stopped);
        }
        if !stopped() {
            s.shards_done.fetch_add(1, Ordering::Relaxed);
        }
    }
    let elapsed = started.elapsed();
    s.elapsed_ns
        .store(elapsed.as_nanos() as u64, Ordering::Release);
    s.finished.store(true, Ordering::Release);
    tracing::info!(
        "background verification ended after {:.1}s: {} records checked, {} already verified, {} corrupt",
        elapsed.as_secs_f64(),
        s.checked.load(Ordering::Relaxed),
        s.skipped.load(Ordering::Relaxed),
        s.problems.lock().len()
    );
}

/// Sleeps while `bytes` checked since `started` are ahead of the policy's rate.
fn throttle(
    policy: BackgroundVerifyPolicy,
    bytes: u64,
    started: Instant,
    stopped: &dyn Fn() -> bool,
) {
    let Some(rate) = policy.max_bytes_per_sec else {
        return;
    };
    let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
    loop {
        let now = started.elapsed();
        if due <= now || stopped() {
            return;
        }
        // In steps, so that a stop request is seen within a tenth of a second.
        std::thread::sleep((due - now).min(Duration::from_millis(100)));
    }
}
