//! usearch HNSW adapter. usearch is C++ behind `cxx`; its calls are safe Rust functions,
//! so this module needs no `unsafe`, but it must respect two rules of the library:
//! capacity must be reserved before adds (and reserving is not thread-safe), and at most
//! `threads` calls may run at once (each borrows a per-thread scratch slot; one more
//! fails with "Reserve capacity ahead of searches!"). A read-write lock covers the first
//! rule, a counting semaphore the second.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use half::f16;
use parking_lot::{Condvar, Mutex, RwLock};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::error::{IndexError, IndexResult as Result};
use super::graph::FrozenGraph;
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
    params: super::IndexParams,
    index: RwLock<Index>,
    slots: Slots,
    /// The search expansion in force, for the own search: reading usearch's back would
    /// take the index guard, which a save holds for seconds at 1M.
    ef: AtomicUsize,
    /// The crate's own traversal over a copy of the graph ([`HnswIndex::own_traversal`]),
    /// dropped by the first add or remove.
    frozen: RwLock<Option<Arc<FrozenGraph>>>,
}

fn err(op: &'static str, e: impl std::fmt::Display) -> IndexError {
    IndexError::Usearch {
        op,
        reason: e.to_string(),
    }
}

/// `v` as i8 codes scaled by 127 / its largest magnitude, rounded to nearest. Cosine is
/// blind to the scale, so this loses only rounding; usearch's own cast divides by the L2
/// norm instead, which leaves a 576-dim unit vector's coordinates around ±5 of ±127
/// (about 4 bits) and truncates them.
pub(crate) fn quantize_i8(v: &[f32]) -> Vec<i8> {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max <= 0.0 {
        return vec![0; v.len()];
    }
    let scale = 127.0 / max;
    // In range by construction: |x| ≤ max, so |x · scale| ≤ 127 (the clamp guards rounding).
    v.iter()
        .map(|&x| (x * scale).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

/// Storage type of vectors inside the graph.
pub(crate) fn scalar(quant: super::Quantization) -> ScalarKind {
    match quant {
        super::Quantization::F16 => ScalarKind::F16,
        super::Quantization::I8 | super::Quantization::LegacyI8 => ScalarKind::I8,
    }
}

impl HnswIndex {
    /// An empty index.
    pub fn new(dim: usize, params: &super::IndexParams) -> Result<Self> {
        params
            .check()
            .map_err(|reason| IndexError::InvalidArgument {
                name: "params",
                reason,
            })?;
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
            params: *params,
            index: RwLock::new(index),
            slots: Slots {
                free: Mutex::new(THREAD_SLOTS),
                cv: Condvar::new(),
            },
            ef: AtomicUsize::new(params.expansion_search),
            frozen: RwLock::new(None),
        })
    }

    /// Loads a saved index. usearch trusts the bytes it loads (a count it reads sizes its
    /// allocations, a neighbour slot indexes its nodes), so the file's structure is
    /// checked first ([`check_file`]): a corrupt or hostile file is a typed error, never
    /// a hang, a huge allocation or a read out of bounds.
    pub fn load(path: &Path, dim: usize, params: &super::IndexParams) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| IndexError::io(path, e))?;
        check_file(&bytes, dim, params).map_err(|what| {
            IndexError::corrupt(format!("saved index {}: {what}", path.display()))
        })?;
        drop(bytes);
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
        self.ef.store(ef, Ordering::Relaxed);
    }

    /// Turns the crate's own search on (`true`) or off: a read-only copy of the graph
    /// usearch built, searched with prefetching (see `graph.rs`), serving searches until
    /// the next add or remove, which drops it (searches then go to usearch again until
    /// this is called again). Returns whether it now serves. Only an i8 graph has one
    /// (an f16 graph returns an `InvalidArgument` when asked to turn it on). The copy
    /// costs about half the memory of usearch's i8 graph at dim 576 (813 against
    /// 1,528 MiB at 1M keys, M 32) while it is held.
    pub fn own_traversal(&self, on: bool) -> Result<bool> {
        if !on {
            *self.frozen.write() = None;
            return Ok(false);
        }
        if self.params.quantization == super::Quantization::F16 {
            return Err(IndexError::InvalidArgument {
                name: "own_traversal",
                reason: "the crate's own search runs over i8 codes; this graph stores f16".into(),
            });
        }
        // The write guard keeps adds out while the graph is copied, and the copy is
        // installed before it is released: an add after this clears it.
        let g = self.index.write();
        let mut bytes = vec![0u8; g.serialized_length()];
        g.save_to_buffer(&mut bytes)
            .map_err(|e| err("serialize", e))?;
        let frozen = FrozenGraph::from_saved(&bytes, self.dim, &self.params)
            .map_err(|what| IndexError::corrupt(format!("usearch's own serialisation: {what}")))?;
        drop(bytes);
        *self.frozen.write() = Some(Arc::new(frozen));
        drop(g);
        Ok(true)
    }

    /// Whether the graph changes: the frozen copy no longer answers for it. Called with
    /// the index guard held, so no copy is being made meanwhile.
    fn graph_changes(&self) {
        if self.frozen.read().is_some() {
            *self.frozen.write() = None;
        }
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
                self.graph_changes();
                if g.contains(id) {
                    g.remove(id).map_err(|e| err("remove", e))?;
                }
                return match self.params.quantization {
                    super::Quantization::F16 => g.add(id, key),
                    // Codes made here (see `quantize_i8`) are stored as they are.
                    super::Quantization::I8 | super::Quantization::LegacyI8 => {
                        g.add(id, &quantize_i8(key)[..])
                    }
                }
                .map_err(|e| err("add", e));
            }
            drop(g);
            self.reserve(THREAD_SLOTS)?;
        }
    }

    fn remove(&self, id: u64) -> Result<bool> {
        let _slot = self.slots.acquire();
        let g = self.index.read();
        self.graph_changes();
        let n = g.remove(id).map_err(|e| err("remove", e))?;
        Ok(n > 0)
    }

    fn contains(&self, id: u64) -> bool {
        self.index.read().contains(id)
    }

    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        check_query(query, self.dim, "query")?;
        check_k(k)?;
        let frozen = self.frozen.read().clone();
        if let Some(f) = frozen {
            let ef = self.ef.load(Ordering::Relaxed);
            return Ok(f.search(&quantize_i8(query), k, ef));
        }
        let _slot = self.slots.acquire();
        let g = self.index.read();
        // usearch reserves room for `k` results up front: a huge `k` (K from a hostile
        // engine.json) must not become a huge allocation. More than the index holds
        // cannot be returned anyway.
        let k = k.min(g.size().max(1));
        let m = match self.params.quantization {
            super::Quantization::F16 => g.search(query, k),
            // The query is quantized like the keys, so the graph compares codes with codes.
            super::Quantization::I8 | super::Quantization::LegacyI8 => {
                g.search(&quantize_i8(query)[..], k)
            }
        }
        .map_err(|e| err("search", e))?;
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

    fn set_expansion_search(&self, ef: usize) {
        HnswIndex::set_expansion_search(self, ef);
    }

    fn save(&self, path: &Path) -> Result<()> {
        let g = self.index.write();
        let p = path
            .to_str()
            .ok_or_else(|| err("save", "path is not UTF-8"))?;
        g.save(p).map_err(|e| err("save", e))
    }

    fn memory_bytes(&self) -> usize {
        let copy = self.frozen.read().as_ref().map_or(0, |f| f.memory_bytes());
        self.index.read().memory_usage() + copy
    }

    fn own_traversal(&self, on: bool) -> Result<bool> {
        HnswIndex::own_traversal(self, on)
    }

    fn own_traversal_active(&self) -> bool {
        self.frozen.read().is_some()
    }
}

/// Checks that `bytes` is a usearch dense index as [`HnswIndex`] saves it (usearch 2.x:
/// 32-bit matrix dimensions, u64 keys, u32 slots, cosine, one vector per key) for keys of
/// `dim` stored as `params` says, and that every count, level and neighbour slot in it
/// lies within the file and the graph:
///
/// ```text
/// rows u32 | cols u32 | rows × cols vector bytes
/// head (64 bytes): "usearch" | version 3 × u16 | metric u8 | scalar u8 | key u8 | slot u8
///                  | present u64 | deleted u64 | dimensions u64 | multi u8 | padding
/// graph: size u64 | connectivity u64 | connectivity_base u64 | max_level u64 | entry u64
///        | size × level i16
///        | size × node: key u64 | level i16 | count u32, connectivity_base × slot u32
///                     | level × (count u32, connectivity × slot u32)
/// ```
fn check_file(
    bytes: &[u8],
    dim: usize,
    params: &super::IndexParams,
) -> std::result::Result<(), String> {
    walk_file(bytes, dim, params, &mut ())
}

/// What [`walk_file`] hands on, in file order, once each part is checked: the graph's
/// shape and its vectors, then every node's links level by level.
pub(super) trait FileVisitor {
    /// The graph: `size` nodes, `vectors` their `size × vector_bytes` codes in slot
    /// order, `base` the link capacity at level 0.
    fn graph(&mut self, head: GraphHead<'_>);
    /// Node `slot` (key `key`, top level `level`): its `count` links at `at_level`,
    /// as little-endian u32 slots (each checked to lie in the graph).
    fn links(&mut self, slot: usize, key: u64, level: usize, at_level: usize, links: &[u8]);
}

/// The shape of a saved graph (see [`check_file`] for the layout).
pub(super) struct GraphHead<'a> {
    pub(super) size: usize,
    pub(super) vector_bytes: usize,
    pub(super) vectors: &'a [u8],
    pub(super) base: usize,
    pub(super) max_level: usize,
    pub(super) entry: usize,
}

/// Checking alone visits nothing.
impl FileVisitor for () {
    fn graph(&mut self, _: GraphHead<'_>) {}
    fn links(&mut self, _: usize, _: u64, _: usize, _: usize, _: &[u8]) {}
}

/// The one reader of usearch's file layout: checks every part of `bytes` (as
/// [`check_file`] documents) and hands each checked part to `visit`.
pub(super) fn walk_file(
    bytes: &[u8],
    dim: usize,
    params: &super::IndexParams,
    visit: &mut dyn FileVisitor,
) -> std::result::Result<(), String> {
    struct Cur<'a>(&'a [u8], usize);
    impl<'a> Cur<'a> {
        fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
            let end = self.1.checked_add(n).filter(|&e| e <= self.0.len());
            let end = end.ok_or_else(|| format!("the file ends inside the {what}"))?;
            let s = &self.0[self.1..end];
            self.1 = end;
            Ok(s)
        }
        fn u16(&mut self, what: &str) -> std::result::Result<u16, String> {
            let b = self.take(2, what)?;
            Ok(u16::from_le_bytes([b[0], b[1]]))
        }
        fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
            let b = self.take(4, what)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
            let b = self.take(8, what)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(u64::from_le_bytes(a))
        }
    }
    let mut c = Cur(bytes, 0);
    let rows = c.u32("matrix dimensions")? as usize;
    let cols = c.u32("matrix dimensions")? as usize;
    let (scalar_kind, vector_bytes) = match params.quantization {
        super::Quantization::F16 => (12u8, dim * 2),
        super::Quantization::I8 | super::Quantization::LegacyI8 => (23u8, dim),
    };
    if rows > 0 && cols != vector_bytes {
        return Err(format!("vectors of {cols} bytes, expected {vector_bytes}"));
    }
    let matrix = rows.checked_mul(cols).ok_or("matrix size overflows")?;
    let vectors = c.take(matrix, "vectors")?;
    let head = c.take(64, "index head")?;
    if &head[0..7] != b"usearch" {
        return Err("bad magic".into());
    }
    // Metric cosine ('c'), the quantization's scalar, u64 keys (14), u32 slots (15).
    if head[13..17] != [b'c', scalar_kind, 14, 15] {
        return Err(format!(
            "metric and types {:?} are not this index's",
            &head[13..17]
        ));
    }
    let head_u64 = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&head[o..o + 8]);
        u64::from_le_bytes(a)
    };
    if head_u64(33) != dim as u64 || head[41] != 0 {
        return Err(format!(
            "dimension {} (expected {dim}) or a multi-key index",
            head_u64(33)
        ));
    }
    let size = c.u64("graph header")?;
    let connectivity = c.u64("graph header")?;
    let base = c.u64("graph header")?;
    let max_level = c.u64("graph header")?;
    let entry = c.u64("graph header")?;
    if size == 0 {
        return if rows == 0 && c.1 == bytes.len() {
            Ok(())
        } else {
            Err("an empty graph with vectors or trailing bytes".into())
        };
    }
    if size != rows as u64 {
        return Err(format!("{size} graph nodes for {rows} vectors"));
    }
    if connectivity != params.connectivity as u64 || base < connectivity || base > 2 * connectivity
    {
        return Err(format!(
            "connectivity {connectivity} / {base}, expected {} (at most twice that at the base)",
            params.connectivity
        ));
    }
    // Levels are i16 in usearch; real graphs stay far below 64.
    if max_level > 64 || entry >= size {
        return Err(format!(
            "max level {max_level}, entry slot {entry} of {size}"
        ));
    }
    let n = rows;
    let levels_raw = c.take(n * 2, "node levels")?;
    let levels: Vec<u16> = levels_raw
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    if levels.iter().any(|&l| l as u64 > max_level) || levels[entry as usize] as u64 != max_level {
        return Err("a node level above the graph's maximum, or an entry below it".into());
    }
    let (connectivity, base) = (connectivity as usize, base as usize);
    visit.graph(GraphHead {
        size: n,
        vector_bytes,
        vectors,
        base,
        max_level: max_level as usize,
        entry: entry as usize,
    });
    for (i, &level) in levels.iter().enumerate() {
        let key = c.u64("node key")?;
        if c.u16("node level")? != level {
            return Err(format!("node {i}'s level disagrees with the level table"));
        }
        for l in 0..=level as usize {
            let cap = if l == 0 { base } else { connectivity };
            let count = c.u32("neighbour count")? as usize;
            let slots = c.take(cap * 4, "neighbour slots")?;
            if count > cap {
                return Err(format!(
                    "node {i} has {count} neighbours at level {l}, at most {cap}"
                ));
            }
            if slots[..count * 4]
                .chunks_exact(4)
                .any(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize >= n)
            {
                return Err(format!("node {i} links to a slot outside the graph"));
            }
            visit.links(i, key, level as usize, l, &slots[..count * 4]);
        }
    }
    if c.1 != bytes.len() {
        return Err(format!("{} bytes after the graph", bytes.len() - c.1));
    }
    Ok(())
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
