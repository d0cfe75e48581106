//! A node's copy of one shard: the embedded engine (a local `Store` + `ExpertIndex`)
//! filled from the shard's segments. It is a cache: nothing in it is durable only here,
//! and a node rebuilds it from object storage whenever it cannot follow the manifest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mome::{AdapterPair, ExpertIndex, IndexKind, IndexParams, Store, StoreConfig};
use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::manifest::{ClusterConfig, Manifest};
use crate::segment::{ClusterExpert, SegmentView};

/// Experts inserted into the local store per batch while applying a segment.
const APPLY_BATCH: usize = 512;

/// One search result with a cluster-wide id.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Cluster-wide expert id.
    pub id: u64,
    /// Cosine similarity of the query and the expert's key.
    pub score: f32,
}

/// Orders hits best first, ties by id: the one order every merge uses.
pub fn sort_hits(hits: &mut [Hit]) {
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
}

/// What a replica has applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The manifest it reflects.
    pub manifest: Manifest,
    /// That manifest's etcd mod revision (0: nothing applied).
    pub revision: i64,
}

#[derive(Default)]
struct IdMaps {
    /// cluster id → (local id, created_at_ms)
    local: HashMap<u64, (u64, u64)>,
    /// local id → cluster id
    global: HashMap<u64, u64>,
}

/// Removes a replica's directory once everything in it is closed.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove replica directory");
        }
    }
}

/// Maps an error of the embedded store or index to the shard's [`Error::Engine`].
fn local_err<E: Into<mome::Error>>(shard: u32) -> impl Fn(E) -> Error {
    move |e| Error::Engine {
        shard,
        source: e.into(),
    }
}

/// A shard's local cache. Searches and fetches run concurrently with applies.
pub struct Replica {
    shard: u32,
    // Field order matters: the index (and the store it holds) closes before the
    // directory guard removes the files.
    index: ExpertIndex,
    maps: RwLock<IdMaps>,
    applied: Mutex<Applied>,
    _dir: DirGuard,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replica(shard {}, {} experts)", self.shard, self.len())
    }
}

impl Replica {
    /// An empty replica of `shard` in a new directory `dir` (blocking).
    pub fn create(dir: &Path, shard: u32, config: &ClusterConfig) -> Result<Self> {
        let store_config: StoreConfig = config.store.clone();
        let store = Store::create(dir, store_config).map_err(local_err(shard))?;
        let params = match config.index {
            IndexKind::Flat => IndexParams::flat(),
            _ => IndexParams::default(),
        };
        let index = ExpertIndex::open_with(Arc::new(store), params).map_err(local_err(shard))?;
        Ok(Replica {
            shard,
            index,
            maps: RwLock::new(IdMaps::default()),
            applied: Mutex::new(Applied::default()),
            _dir: DirGuard(dir.to_path_buf()),
        })
    }

    /// The shard.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Live experts.
    pub fn len(&self) -> usize {
        self.maps.read().local.len()
    }

    /// Whether the replica holds no expert.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the replica holds `id`.
    pub fn contains(&self, id: u64) -> bool {
        self.maps.read().local.contains_key(&id)
    }

    /// What has been applied.
    pub fn applied(&self) -> Applied {
        self.applied.lock().clone()
    }

    /// Records that the replica now reflects `manifest` at `revision`.
    pub fn set_applied(&self, manifest: Manifest, revision: i64) {
        *self.applied.lock() = Applied { manifest, revision };
    }

    /// Applies a segment's inserts and tombstones (blocking). Inserts of ids already
    /// present and tombstones of absent ids are skipped, so applying is idempotent.
    pub fn apply(&self, name: &str, bytes: &[u8], config: &StoreConfig) -> Result<()> {
        let seg = |source| Error::Segment {
            object: name.to_string(),
            source,
        };
        let view = SegmentView::parse(bytes).map_err(seg)?;
        view.check_config(config).map_err(seg)?;
        if view.shard != self.shard {
            return Err(Error::invalid(format!(
                "segment {name} is of shard {}, applied to shard {}",
                view.shard, self.shard
            )));
        }
        let todo: Vec<usize> = (0..view.len())
            .filter(|&i| !self.contains(view.id(i)))
            .collect();
        for chunk in todo.chunks(APPLY_BATCH) {
            let experts: Vec<ClusterExpert> = chunk
                .iter()
                .map(|&i| view.expert(i))
                .collect::<Result<_, _>>()
                .map_err(seg)?;
            let locals = self
                .index
                .insert_batch(experts.iter().map(ClusterExpert::to_new_expert).collect())
                .map_err(local_err(self.shard))?;
            let mut maps = self.maps.write();
            for (e, l) in experts.iter().zip(locals) {
                maps.local.insert(e.id, (l, e.created_at_ms));
                maps.global.insert(l, e.id);
            }
        }
        let dead: Vec<(u64, u64)> = {
            let maps = self.maps.read();
            view.tombstones()
                .filter_map(|g| maps.local.get(&g).map(|&(l, _)| (g, l)))
                .collect()
        };
        if !dead.is_empty() {
            let locals: Vec<u64> = dead.iter().map(|d| d.1).collect();
            self.index
                .delete_batch(&locals)
                .map_err(local_err(self.shard))?;
            let mut maps = self.maps.write();
            for (g, l) in dead {
                maps.local.remove(&g);
                maps.global.remove(&l);
            }
        }
        Ok(())
    }

    /// The `k` best experts of the shard for `query`, best first, ties by id.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        let local = self.index.search(query, k).map_err(local_err(self.shard))?;
        let maps = self.maps.read();
        let mut hits: Vec<Hit> = local
            .iter()
            .filter_map(|h| maps.global.get(&h.id).map(|&id| Hit { id, score: h.score }))
            .collect();
        sort_hits(&mut hits);
        Ok(hits)
    }

    /// Copies of the experts with these ids; ids the shard does not hold are returned
    /// apart.
    pub fn fetch(&self, ids: &[u64]) -> Result<(Vec<ClusterExpert>, Vec<u64>)> {
        let store = self.index.store();
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for &id in ids {
            let Some((local, created_at_ms)) = self.maps.read().local.get(&id).copied() else {
                missing.push(id);
                continue;
            };
            let r = store.get(local).map_err(local_err(self.shard))?;
            let meta = store.meta(local).map_err(local_err(self.shard))?;
            let layers = (0..r.n_layers())
                .map(|l| AdapterPair {
                    a: r.a(l).to_vec(),
                    b: r.b(l).to_vec(),
                })
                .collect();
            found.push(ClusterExpert {
                id,
                key: r.key().to_vec(),
                layers,
                provenance: meta.provenance,
                created_at_ms,
            });
        }
        Ok((found, missing))
    }

    /// Every live expert id (unordered).
    pub fn ids(&self) -> Vec<u64> {
        self.maps.read().local.keys().copied().collect()
    }
}
