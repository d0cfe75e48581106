//! An index kept in step with a store, persisted next to it, rebuilt when lost.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::error::{IndexError, IndexResult as Result};
use super::reachable::{add_reachable, reinsert_missed};
use super::rerank::rerank;
use super::saved::{
    data_file, file_crc, read_meta, saved_index_info, IndexMeta, SavedIndexInfo,
    INDEX_FORMAT_VERSION, META_FILE,
};
use super::{FlatIndex, Hit, HnswIndex, IndexKind, IndexParams, KeyIndex};
use crate::fs::{atomic_write, atomic_write_bytes};
use crate::progress::Task;
use crate::store::{ImportBatch, NewExpert, Snapshot, Store};

/// How the index came to be on open (for logs, stats and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenedFrom {
    /// Loaded and caught up with `applied` changes.
    Loaded {
        /// Inserts and deletes replayed from the store.
        applied: usize,
    },
    /// Rebuilt from the store's keys (missing, corrupt, or different parameters).
    Rebuilt,
}

/// A vector index over a store's expert keys, kept in step with it.
///
/// Writes go through [`ExpertIndex::insert_batch`] / [`ExpertIndex::delete`], which
/// commit to the store first and then update the index; a crash in between is repaired
/// on the next open by replaying the store's changes after the sequence the saved index
/// covers. Searches never return an expert that is not live in the store.
pub struct ExpertIndex {
    store: Arc<Store>,
    index: Box<dyn KeyIndex>,
    /// The structural parameters; the search-time knobs live in the two atomics below
    /// ([`ExpertIndex::set_search`] changes them while searches run).
    params: IndexParams,
    expansion_search: AtomicUsize,
    rerank: AtomicUsize,
    /// [`IndexParams::own_search`] as last set.
    own_search: AtomicBool,
    dir: PathBuf,
    /// Writers hold it shared while they commit and apply; `save` holds it exclusively,
    /// so the sequence it records has every earlier commit applied.
    apply: RwLock<()>,
    dirty: AtomicBool,
    opened_from: OpenedFrom,
    /// Number of the last save (names its data file).
    generation: AtomicU64,
    /// Over a read-only store: the commit sequence whose changes the index holds
    /// ([`ExpertIndex::catch_up`] replays those after it). The writer's index applies
    /// its own writes instead.
    followed: AtomicU64,
}

impl std::fmt::Debug for ExpertIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertIndex")
            .field("params", &self.params)
            .field("len", &self.index.len())
            .finish_non_exhaustive()
    }
}

/// Result of checking a saved index against its store ([`ExpertIndex::check_saved`]).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct IndexCheck {
    /// The saved index's own description, when there is one.
    pub saved: Option<SavedIndexInfo>,
    /// Why the saved index cannot be loaded (it would be rebuilt on the next open).
    pub unusable: Option<String>,
    /// Store changes replayed on top of the saved index (the normal catch-up).
    pub replayed: usize,
    /// Keys in the index after the replay.
    pub indexed: usize,
    /// Live experts the index (after replay) does not hold.
    pub missing: Vec<u64>,
    /// Ids the index (after replay) holds that are not live experts.
    pub stale: Vec<u64>,
}

fn new_index(dim: usize, params: &IndexParams) -> Result<Box<dyn KeyIndex>> {
    Ok(match params.kind {
        IndexKind::Hnsw => Box::new(HnswIndex::new(dim, params)?),
        IndexKind::Flat => Box::new(FlatIndex::new(dim)),
    })
}

fn to_f32(key: &[half::f16]) -> Vec<f32> {
    key.iter().map(|x| x.to_f32()).collect()
}

/// Applies to `index` the store's inserts and deletes committed after `since` (the one
/// catch-up of an index loaded from disk and of a reader's index). Returns how many it
/// applied and the sequence they bring the index to.
fn replay(store: &Store, index: &dyn KeyIndex, since: u64) -> Result<(usize, u64)> {
    let applied = std::cell::Cell::new(0usize);
    let seq = store.changes_since(
        since,
        |id, key| {
            applied.set(applied.get() + 1);
            index.add(id, &to_f32(key))
        },
        |id| {
            applied.set(applied.get() + 1);
            index.remove(id).map(|_| ())
        },
    )?;
    Ok((applied.get(), seq))
}

impl ExpertIndex {
    /// Opens the index of `store` with the default parameters (or those it was saved with).
    pub fn open(store: Arc<Store>) -> Result<Self> {
        // Parameters out of bounds in a saved index.json are ignored (the index rebuilds).
        let saved = read_meta(&store.store_dir().index())
            .map(|m| m.params)
            .filter(|p| p.check().is_ok());
        Self::open_with(store, saved.unwrap_or_default())
    }

    /// Opens the index of `store`: loads the saved one and catches up, or rebuilds it
    /// when it is missing, corrupt, or was built with other structural parameters.
    pub fn open_with(store: Arc<Store>, params: IndexParams) -> Result<Self> {
        let params = params.upgraded();
        let dir = store.store_dir().index();
        let read_only = store.is_read_only();
        if !read_only {
            std::fs::create_dir_all(&dir).map_err(|e| IndexError::io(&dir, e))?;
        }
        let dim = store.config().key_dim as usize;
        let loaded = match Self::try_load(&dir, dim, &params) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "saved index unusable; rebuilding from the store");
                None
            }
        };
        let (index, opened_from, followed) = match loaded {
            Some((index, seq)) => {
                let (applied, followed) = replay(&store, index.as_ref(), seq)?;
                tracing::info!(
                    seq,
                    applied,
                    len = index.len(),
                    "index loaded and caught up"
                );
                (index, OpenedFrom::Loaded { applied }, followed)
            }
            None => {
                let (index, seq) = Self::rebuild(&store, dim, &params)?;
                (index, OpenedFrom::Rebuilt, seq)
            }
        };
        let generation = read_meta(&dir).map_or(0, |m| m.generation);
        let me = ExpertIndex {
            store,
            index,
            params,
            expansion_search: AtomicUsize::new(params.expansion_search),
            rerank: AtomicUsize::new(params.rerank),
            own_search: AtomicBool::new(params.own_search),
            dir,
            apply: RwLock::new(()),
            dirty: AtomicBool::new(true),
            opened_from,
            generation: AtomicU64::new(generation),
            followed: AtomicU64::new(followed),
        };
        if read_only {
            // A reader never writes the writer's files; its index lives in memory.
            me.dirty.store(false, Ordering::Release);
        } else if me.opened_from != (OpenedFrom::Loaded { applied: 0 }) {
            me.save()?;
        } else {
            me.dirty.store(false, Ordering::Release);
        }
        // After a save the copy was made there; a loaded index that needed no save (or a
        // reader's) makes it here.
        me.make_own_copy()?;
        Ok(me)
    }

    /// Makes the graph's search copy when [`IndexParams::own_search`] asks for one and
    /// the graph has none (an add or remove dropped it); i8 HNSW graphs only.
    fn make_own_copy(&self) -> Result<()> {
        let wants = self.own_search.load(Ordering::Relaxed)
            && self.params.kind == IndexKind::Hnsw
            && self.params.quantization != super::Quantization::F16;
        if wants && !self.index.own_traversal_active() {
            let t = std::time::Instant::now();
            self.index.own_traversal(true)?;
            tracing::debug!(
                seconds = t.elapsed().as_secs_f64(),
                len = self.index.len(),
                "search copy of the graph made"
            );
        }
        Ok(())
    }

    fn try_load(
        dir: &Path,
        dim: usize,
        params: &IndexParams,
    ) -> Result<Option<(Box<dyn KeyIndex>, u64)>> {
        let Some(meta) = read_meta(dir) else {
            return Ok(None);
        };
        if meta.version != INDEX_FORMAT_VERSION
            || meta.dim != dim
            || !meta.params.same_structure(params)
        {
            tracing::info!("saved index has another format or parameters; rebuilding");
            return Ok(None);
        }
        let path = meta.data_path(dir)?;
        let (len, crc) = file_crc(&path)?;
        if (len, crc) != (meta.file_len, meta.file_crc32c) {
            return Err(IndexError::corrupt(format!(
                "index file {} fails its checksum",
                path.display()
            )));
        }
        let index: Box<dyn KeyIndex> = match params.kind {
            IndexKind::Hnsw => Box::new(HnswIndex::load(&path, dim, params)?),
            IndexKind::Flat => Box::new(FlatIndex::load(&path, dim)?),
        };
        if index.len() != meta.count {
            return Err(IndexError::corrupt(format!(
                "index file {} holds {} keys, its metadata says {}",
                path.display(),
                index.len(),
                meta.count
            )));
        }
        Ok(Some((index, meta.seq)))
    }

    /// Over a read-only store, after [`Store::refresh`]: replays the inserts and deletes
    /// committed since the index last caught up. Returns how many it applied (0 over a
    /// writer's store, whose index applies its own writes).
    ///
    /// A delete whose tombstone the writer's compaction purged before this reader saw it
    /// leaves its id in this index; searches still never return it, because every
    /// search keeps only experts live in the store's snapshot.
    pub fn catch_up(&self) -> Result<usize> {
        if !self.store.is_read_only() {
            return Ok(0);
        }
        let _g = self.apply.write();
        let since = self.followed.load(Ordering::Acquire);
        if self.store.seq() == since {
            return Ok(0);
        }
        let (applied, seq) = replay(&self.store, self.index.as_ref(), since)?;
        self.followed.store(seq, Ordering::Release);
        self.make_own_copy()?;
        tracing::debug!(since, seq, applied, "reader index caught up");
        Ok(applied)
    }

    fn rebuild(
        store: &Store,
        dim: usize,
        params: &IndexParams,
    ) -> Result<(Box<dyn KeyIndex>, u64)> {
        let t = std::time::Instant::now();
        let index = new_index(dim, params)?;
        let progress = store.progress();
        let task = Task::start(&*progress, "index build", store.len());
        // Keys stream out of RocksDB in id order; adding them in parallel chunks keeps
        // every core busy (usearch adds are thread-safe) without holding all keys.
        let mut chunk: Vec<(u64, Vec<f32>)> = Vec::with_capacity(4096);
        let flush = |chunk: &mut Vec<(u64, Vec<f32>)>| -> Result<()> {
            add_reachable(index.as_ref(), chunk)?;
            task.advance(chunk.len() as u64);
            chunk.clear();
            Ok(())
        };
        let seq = store.scan_keys::<IndexError>(|id, key| {
            chunk.push((id, to_f32(key)));
            if chunk.len() == chunk.capacity() {
                flush(&mut chunk)?;
            }
            Ok(())
        })?;
        flush(&mut chunk)?;
        drop(task);
        tracing::info!(
            len = index.len(),
            seconds = t.elapsed().as_secs_f64(),
            "index rebuilt from the store"
        );
        Ok((index, seq))
    }

    /// Loads the saved index of `store` into memory, replays the store's changes after
    /// its sequence exactly as an open would, and compares the result with the live
    /// experts. Nothing is written: the saved index is checked, not repaired.
    pub fn check_saved(store: &Store) -> Result<IndexCheck> {
        let dir = store.store_dir().index();
        let mut check = IndexCheck {
            saved: saved_index_info(store.dir())?,
            ..Default::default()
        };
        let Some(info) = &check.saved else {
            return Ok(check);
        };
        let dim = store.config().key_dim as usize;
        let (index, seq) = match Self::try_load(&dir, dim, &info.params) {
            Ok(Some(v)) => v,
            Ok(None) => {
                check.unusable = Some(format!(
                    "saved index has dimension {} or a format this build does not read",
                    info.dim
                ));
                return Ok(check);
            }
            Err(e) => {
                check.unusable = Some(e.to_string());
                return Ok(check);
            }
        };
        let replayed = std::cell::Cell::new(0usize);
        let seen = store.changes_since(
            seq,
            |id, key| {
                replayed.set(replayed.get() + 1);
                index.add(id, &to_f32(key))
            },
            |id| {
                replayed.set(replayed.get() + 1);
                index.remove(id).map(|_| ())
            },
        )?;
        check.replayed = replayed.get();
        check.indexed = index.len();
        let snap = store.snapshot();
        if snap.seq() != seen {
            return Err(IndexError::InvalidArgument {
                name: "store",
                reason: "the store changed while its index was being checked".into(),
            });
        }
        check.missing = snap.ids().filter(|&id| !index.contains(id)).collect();
        let present = snap.len() as usize - check.missing.len();
        if index.len() > present {
            // Only ids below the store's next id can have been indexed.
            check.stale = (1..store.next_id())
                .filter(|&id| !snap.contains(id) && index.contains(id))
                .collect();
        }
        Ok(check)
    }

    /// How the index was obtained on open.
    pub fn opened_from(&self) -> OpenedFrom {
        self.opened_from
    }

    /// The store this index follows.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Parameters in force (with the search-time knobs as last set).
    pub fn params(&self) -> IndexParams {
        let mut p = self.params;
        p.expansion_search = self.expansion_search.load(Ordering::Relaxed);
        p.rerank = self.rerank.load(Ordering::Relaxed);
        p.own_search = self.own_search.load(Ordering::Relaxed);
        p
    }

    /// Changes the search-time knobs without a rebuild: the graph's expansion (ef) and
    /// the re-rank width ([`IndexParams::rerank`], 0 for none). Searches already running
    /// finish with the old values; the next save records the new ones (this alone does
    /// not make the index dirty: a knob is no reason to rewrite a large file).
    pub fn set_search(&self, expansion_search: usize, rerank: usize) -> Result<()> {
        let mut p = self.params;
        p.expansion_search = expansion_search;
        p.rerank = rerank;
        p.check().map_err(|reason| IndexError::InvalidArgument {
            name: "params",
            reason,
        })?;
        self.index.set_expansion_search(expansion_search);
        self.expansion_search
            .store(expansion_search, Ordering::Relaxed);
        self.rerank.store(rerank, Ordering::Relaxed);
        Ok(())
    }

    /// Changes [`IndexParams::own_search`]: `true` makes the search copy of an i8 graph
    /// now (see [`HnswIndex::own_traversal`]) and after every later save, `false` drops
    /// it and searches through usearch. Returns whether the copy now serves (never on
    /// an f16 or flat index). Like [`ExpertIndex::set_search`], recorded by the next
    /// save without making the index dirty.
    pub fn set_own_traversal(&self, on: bool) -> Result<bool> {
        self.own_search.store(on, Ordering::Relaxed);
        if on {
            self.make_own_copy()?;
        } else {
            self.index.own_traversal(false)?;
        }
        Ok(self.index.own_traversal_active())
    }

    /// Whether searches go through the crate's own traversal right now (an i8 graph with
    /// [`IndexParams::own_search`] and no write since the last save).
    pub fn own_search_active(&self) -> bool {
        self.index.own_traversal_active()
    }

    /// Number of indexed keys.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether `id` is in the index (whether or not it is live in the store).
    pub fn contains(&self, id: u64) -> bool {
        self.index.contains(id)
    }

    /// Approximate memory held by the index.
    pub fn memory_bytes(&self) -> usize {
        self.index.memory_bytes()
    }

    /// Inserts experts into the store (durably) and then into the index.
    pub fn insert_batch(&self, experts: Vec<NewExpert>) -> Result<Vec<u64>> {
        let keys: Vec<Vec<f32>> = experts.iter().map(|e| to_f32(&e.key)).collect();
        self.insert_with(keys, |store| store.insert_batch(experts))
    }

    /// One batch of an archive import ([`Store::import_batch`]: experts, their creation
    /// times and usage, and the archive's progress marker in one commit), then the index.
    pub(crate) fn import_batch(&self, batch: ImportBatch) -> Result<Vec<u64>> {
        let keys: Vec<Vec<f32>> = batch.experts.iter().map(|e| to_f32(&e.key)).collect();
        self.insert_with(keys, |store| store.import_batch(batch))
    }

    /// Commits new experts through `commit`, then adds their `keys` to the graph.
    fn insert_with(
        &self,
        keys: Vec<Vec<f32>>,
        commit: impl FnOnce(&Store) -> crate::store::StoreResult<Vec<u64>>,
    ) -> Result<Vec<u64>> {
        let _g = self.apply.read();
        let ids = commit(&self.store)?;
        self.dirty.store(true, Ordering::Release);
        let items: Vec<(u64, Vec<f32>)> = ids.iter().copied().zip(keys).collect();
        add_reachable(self.index.as_ref(), &items)?;
        Ok(ids)
    }

    /// Inserts `experts` and deletes `delete` in one store commit
    /// ([`Store::replace_batch`]), then updates the index.
    pub fn replace_batch(&self, experts: Vec<NewExpert>, delete: &[u64]) -> Result<Vec<u64>> {
        let keys: Vec<Vec<f32>> = experts.iter().map(|e| to_f32(&e.key)).collect();
        let _g = self.apply.read();
        let ids = self.store.replace_batch(experts, delete)?;
        self.dirty.store(true, Ordering::Release);
        for &id in delete {
            self.index.remove(id)?;
        }
        let items: Vec<(u64, Vec<f32>)> = ids.iter().copied().zip(keys).collect();
        add_reachable(self.index.as_ref(), &items)?;
        Ok(ids)
    }

    /// Re-inserts a stored expert's key into the graph, linking it from the graph as
    /// it is now. Approximate search can stop finding a node that later inserts crowded
    /// out of its neighbours' edge lists (seen with hundreds of facts of one prompt
    /// template, whose keys are near duplicates); the store is unchanged. A search that
    /// runs between the removal and the add may miss the expert, as it missed it before.
    pub fn relink(&self, id: u64) -> Result<()> {
        let key = to_f32(self.store.get(id)?.key());
        self.relink_key(id, &key)
    }

    /// [`Self::relink`] with the expert's key already at hand.
    fn relink_key(&self, id: u64, key: &[f32]) -> Result<()> {
        let _g = self.apply.read();
        self.index.remove(id)?;
        self.index.add(id, key)?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Checks that `find` (the caller's retrieval: a search with its K and any retry)
    /// returns each `(id, key)` for its own key, in parallel, and relinks
    /// ([`Self::relink`]) every expert it misses. Returns the ids that were relinked
    /// and those `find` still misses afterwards.
    ///
    /// Near-duplicate keys (facts of one prompt template) make HNSW prune a node's
    /// incoming edges as newer near-duplicates arrive: measured on 160 facts among 1M
    /// random distractors, a k = 32 search for its own key missed 2 such nodes, and
    /// found both after a relink (docs/BENCHMARKS.md).
    pub fn ensure_findable<F, E>(
        &self,
        items: &[(u64, Vec<f32>)],
        find: F,
    ) -> std::result::Result<(Vec<u64>, Vec<u64>), E>
    where
        F: Fn(&[f32]) -> std::result::Result<Vec<Hit>, E> + Sync,
        E: From<IndexError> + Send,
    {
        reinsert_missed(
            items,
            |id, key| Ok(find(key)?.iter().any(|h| h.id == id)),
            |id, key| self.relink_key(id, key).map_err(E::from),
        )
    }

    /// Deletes an expert from the store and then from the index.
    pub fn delete(&self, id: u64) -> Result<()> {
        self.delete_batch(&[id])
    }

    /// Deletes experts from the store (all or none) and then from the index.
    pub fn delete_batch(&self, ids: &[u64]) -> Result<()> {
        let _g = self.apply.read();
        self.store.delete_batch(ids)?;
        self.dirty.store(true, Ordering::Release);
        for &id in ids {
            self.index.remove(id)?;
        }
        Ok(())
    }

    /// The `k` live experts whose keys are most similar to `query`, best first.
    ///
    /// With a re-rank width `R` ([`IndexParams::rerank`] > 0) the graph returns its best
    /// `max(R, k)` by its own distances (i8 codes, say), and those are scored again by
    /// exact cosine with their fp16 keys read from the store's shards through a
    /// snapshot (each record checksum-verified on its first read, like every read: a
    /// corrupt candidate fails the search with the store's `CorruptRecord`, it is never
    /// scored or returned). Without one, the graph's scores are returned as they are.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        let width = self.rerank.load(Ordering::Relaxed).max(k);
        let hits = self.index.search(query, width)?;
        // The snapshot is taken after the search: every indexed id was committed to the
        // store before it was indexed, so only experts deleted from the store but not yet
        // from the index are dropped here.
        let snap = self.store.snapshot();
        self.finish(&snap, query, hits, k)
    }

    /// The last step of every search: keeps the candidates live in `snap`, re-ranks
    /// them exactly when a re-rank width is set, and keeps the best `k`.
    fn finish(
        &self,
        snap: &Snapshot,
        query: &[f32],
        mut hits: Vec<Hit>,
        k: usize,
    ) -> Result<Vec<Hit>> {
        hits.retain(|h| snap.contains(h.id));
        if self.rerank.load(Ordering::Relaxed) == 0 {
            hits.truncate(k);
            return Ok(hits);
        }
        let views = hits
            .iter()
            .map(|h| snap.get(h.id))
            .collect::<crate::store::StoreResult<Vec<_>>>()?;
        Ok(rerank(query, views.iter().map(|v| (v.id(), v.key())), k))
    }

    /// Searches many queries (`n × key_dim`, row-major) in one call, in parallel on the
    /// rayon pool; each query takes the one path of [`ExpertIndex::search`].
    pub fn search_batch(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        use rayon::prelude::*;
        let dim = self.index.dim();
        super::check_batch(queries, dim)?;
        queries
            .par_chunks_exact(dim)
            .map(|q| self.search(q, k))
            .collect()
    }

    /// Writes the index and the store sequence it covers, atomically: the data goes to a
    /// new file, then `index.json` (which names that file) is replaced, each through the
    /// crate's one atomic write (temp file, fsync, rename, fsync of the directory), and
    /// only then are older data files removed. A crash at any point leaves a consistent
    /// pair: the old one or the new one.
    ///
    /// Over a read-only store this does nothing: the saved index is the writer's.
    pub fn save(&self) -> Result<()> {
        if self.store.is_read_only() {
            return Ok(());
        }
        let _g = self.apply.write();
        let seq = self.store.seq();
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let name = data_file(self.params.kind, generation);
        let mut crc = (0, 0);
        atomic_write(&self.dir.join(&name), |tmp| {
            self.index.save(tmp)?;
            crc = file_crc(tmp)?;
            Ok::<(), IndexError>(())
        })?;
        let (file_len, file_crc32c) = crc;
        let meta = IndexMeta {
            version: INDEX_FORMAT_VERSION,
            params: self.params(),
            dim: self.index.dim(),
            seq,
            count: self.index.len(),
            file: Some(name.clone()),
            generation,
            file_len,
            file_crc32c,
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| IndexError::Encode {
            what: "index metadata".into(),
            reason: e.to_string(),
        })?;
        atomic_write_bytes::<IndexError>(&self.dir.join(META_FILE), &json)?;
        self.dirty.store(false, Ordering::Release);
        self.remove_old_data_files(&name);
        // Still under the apply lock: no write lands between the save and the copy.
        self.make_own_copy()?;
        tracing::debug!(seq, len = meta.count, "index saved");
        Ok(())
    }

    /// Deletes data files other than `current` (earlier saves, leftovers of interrupted
    /// ones). Failing to delete one only wastes space.
    fn remove_old_data_files(&self, current: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("keys.") && name != current {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(file = name, error = %e, "could not remove an old index file");
                }
            }
        }
    }
}

impl Drop for ExpertIndex {
    fn drop(&mut self) {
        // Saving on close keeps the next open's catch-up short; losing it is harmless.
        if self.dirty.load(Ordering::Acquire) {
            if let Err(e) = self.save() {
                tracing::warn!(error = %e, "could not save the index on close");
            }
        }
    }
}
