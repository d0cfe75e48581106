//! usearch HNSW adapter. usearch is C++ behind `cxx`; its calls are safe Rust functions,
//! so this module needs no `unsafe`, but it must respect two rules of the library:
//! capacity must be reserved before adds (and reserving is not thread-safe), and at most
//! `threads` calls may run at once (each borrows a per-thread scratch slot; one more
//! fails with "Reserve capacity ahead of searches!"). A read-write lock covers the first
//! rule, a counting semaphore the second.

use std::path::Path;

use half::f16;
use parking_lot::{Condvar, Mutex, RwLock};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::error::{IndexError, IndexResult as Result};
use super::{check_k, check_query, Hit, KeyIndex};

/// Concurrent calls into one usearch index.
const THREAD_SLOTS: usize = 64;

struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

struct SlotGuard<'a>(&'a Slots);

impl Slots {
    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock();
        while *free == 0 {
            self.cv.wait(&mut free);
        }
        *free -= 1;
        SlotGuard(self)
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock() += 1;
        self.0.cv.notify_one();
    }
}

/// HNSW graph over expert keys, cosine metric.
pub struct HnswIndex {
    dim: usize,
    index: RwLock<Index>,
    slots: Slots,
}

fn err(op: &'static str, e: impl std::fmt::Display) -> IndexError {
    IndexError::Usearch {
        op,
        reason: e.to_string(),
    }
}

/// Storage type of vectors inside the graph.
pub(crate) fn scalar(quant: super::Quantization) -> ScalarKind {
    match quant {
        super::Quantization::F16 => ScalarKind::F16,
        super::Quantization::I8 => ScalarKind::I8,
    }
}

impl HnswIndex {
    /// An empty index.
    pub fn new(dim: usize, params: &super::IndexParams) -> Result<Self> {
        let opts = IndexOptions {
            dimensions: dim,
            metric: MetricKind::Cos,
            quantization: scalar(params.quantization),
            connectivity: params.connectivity,
            expansion_add: params.expansion_add,
            expansion_search: params.expansion_search,
            multi: false,
        };
        let index = Index::new(&opts).map_err(|e| err("create", e))?;
        index
            .reserve_capacity_and_threads(1024, THREAD_SLOTS)
            .map_err(|e| err("reserve", e))?;
        Ok(HnswIndex {
            dim,
            index: RwLock::new(index),
            slots: Slots {
                free: Mutex::new(THREAD_SLOTS),
                cv: Condvar::new(),
            },
        })
    }

    /// Loads a saved index; the caller has verified the file's checksum, because usearch
    /// trusts the bytes it loads.
    pub fn load(path: &Path, dim: usize, params: &super::IndexParams) -> Result<Self> {
        let idx = HnswIndex::new(dim, params)?;
        {
            let g = idx.index.write();
            let p = path
                .to_str()
                .ok_or_else(|| err("load", "path is not UTF-8"))?;
            g.load(p).map_err(|e| err("load", e))?;
            if g.dimensions() != dim {
                return Err(IndexError::DimMismatch {
                    what: format!("saved index {}", path.display()),
                    expected: dim,
                    found: g.dimensions(),
                });
            }
            let cap = g.size().max(1024);
            g.reserve_capacity_and_threads(cap, THREAD_SLOTS)
                .map_err(|e| err("reserve", e))?;
            g.change_expansion_search(params.expansion_search);
        }
        Ok(idx)
    }

    /// Reserves room for `additional` more keys (doubling, so adds stay amortised O(1)).
    pub fn reserve(&self, additional: usize) -> Result<()> {
        {
            let g = self.index.read();
            if g.size() + additional <= g.capacity() {
                return Ok(());
            }
        }
        let g = self.index.write();
        let need = g.size() + additional;
        if need > g.capacity() {
            let cap = need.max(g.capacity() * 2);
            g.reserve_capacity_and_threads(cap, THREAD_SLOTS)
                .map_err(|e| err("reserve", e))?;
        }
        Ok(())
    }

    /// Changes the search expansion (ef) at run time.
    pub fn set_expansion_search(&self, ef: usize) {
        self.index.read().change_expansion_search(ef);
    }

    /// Adds an fp16 key without converting it (the store's native key type).
    pub fn add_f16(&self, id: u64, key: &[f16]) -> Result<()> {
        if key.len() != self.dim {
            return Err(IndexError::DimMismatch {
                what: format!("key of expert {id}"),
                expected: self.dim,
                found: key.len(),
            });
        }
        let k32: Vec<f32> = key.iter().map(|x| x.to_f32()).collect();
        self.add(id, &k32)
    }
}

impl KeyIndex for HnswIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.index.read().size()
    }

    fn add(&self, id: u64, key: &[f32]) -> Result<()> {
        check_query(key, self.dim, "key")?;
        let _slot = self.slots.acquire();
        // The capacity check and the add must see the same graph: checking `size + 1`
        // and adding under a later guard let concurrent adders overrun the capacity
        // ("Reserve capacity ahead of insertions!"). Under one read guard, at most
        // THREAD_SLOTS adds (each holding a slot) run between any check and its add.
        loop {
            let g = self.index.read();
            if g.size() + THREAD_SLOTS <= g.capacity() {
                if g.contains(id) {
                    g.remove(id).map_err(|e| err("remove", e))?;
                }
                return g.add(id, key).map_err(|e| err("add", e));
            }
            drop(g);
            self.reserve(THREAD_SLOTS)?;
        }
    }

    fn remove(&self, id: u64) -> Result<bool> {
        let _slot = self.slots.acquire();
        let g = self.index.read();
        let n = g.remove(id).map_err(|e| err("remove", e))?;
        Ok(n > 0)
    }

    fn contains(&self, id: u64) -> bool {
        self.index.read().contains(id)
    }

    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        check_query(query, self.dim, "query")?;
        check_k(k)?;
        let _slot = self.slots.acquire();
        let g = self.index.read();
        let m = g.search(query, k).map_err(|e| err("search", e))?;
        Ok(m.keys
            .iter()
            .zip(&m.distances)
            .map(|(&id, &d)| Hit { id, score: 1.0 - d })
            .collect())
    }

    /// Queries of a batch run in parallel on the rayon pool (usearch searches are
    /// thread-safe; the slot semaphore bounds them).
    fn search_batch(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        use rayon::prelude::*;
        if self.dim == 0 || !queries.len().is_multiple_of(self.dim) {
            return Err(IndexError::DimMismatch {
                what: "batch of queries (length must be a multiple of key_dim)".into(),
                expected: self.dim,
                found: queries.len(),
            });
        }
        queries
            .par_chunks_exact(self.dim)
            .map(|q| self.search(q, k))
            .collect()
    }

    fn save(&self, path: &Path) -> Result<()> {
        let g = self.index.write();
        let p = path
            .to_str()
            .ok_or_else(|| err("save", "path is not UTF-8"))?;
        g.save(p).map_err(|e| err("save", e))
    }

    fn memory_bytes(&self) -> usize {
        self.index.read().memory_usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many threads adding into a fresh index cross every capacity boundary while
    /// others add: no add may fail for want of reserved capacity.
    #[test]
    fn concurrent_adds_grow_capacity_safely() {
        let dim = 8;
        let idx = HnswIndex::new(dim, &crate::index::IndexParams::default()).expect("index");
        let threads = 8u64;
        let per = 1500u64;
        std::thread::scope(|s| {
            for t in 0..threads {
                let idx = &idx;
                s.spawn(move || {
                    for i in 0..per {
                        let id = t * per + i + 1;
                        let key: Vec<f32> = (0..dim)
                            .map(|d| ((id * 31 + d as u64 * 7) % 97) as f32 + 1.0)
                            .collect();
                        idx.add(id, &key).expect("add");
                    }
                });
            }
        });
        assert_eq!(idx.len(), (threads * per) as usize);
    }
}
