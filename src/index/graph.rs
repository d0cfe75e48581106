//! The crate's own search over a sealed HNSW graph of i8 codes (issue 17 item 3).
//!
//! usearch builds the graph and stays the index of record (adds, removes, saves); this
//! is a read-only copy of the graph that usearch built, laid out for search: codes in
//! 64-byte-aligned rows, level-0 links in one flat array, and a search that prefetches
//! the codes of the next few neighbours while it scores the current one and the links of
//! the next candidate while it expands this one — the two things usearch's search does
//! not do (no software prefetch; each vector reached through a pointer table). The copy
//! is made by [`FrozenGraph::from_saved`] from usearch's own serialisation, read by the
//! one reader of that layout (`hnsw::walk_file`), and it is dropped by the first add or
//! remove: it never answers for a graph that has changed since it was made.
//!
//! The search is the textbook HNSW one (greedy descent on the upper levels, a beam of
//! width `max(ef, k)` at level 0) with usearch's cosine over i8 codes, so at one ef it
//! visits what usearch's visits, up to ties; `tests` checks it against an exact scan.

// One of the named modules allowed `unsafe` (workspace lints): prefetch hints and calls
// into the `#[target_feature]` dot product behind a CPU-detection token.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use super::hnsw::{walk_file, FileVisitor, GraphHead};
use super::Hit;

/// Neighbours whose codes are prefetched ahead of the one being scored.
const PREFETCH_AHEAD: usize = 4;

/// One cache line of codes; rows of codes are whole lines, so every row starts on one.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([i8; 64]);

/// A score with a total order (scores are finite: products of finite codes).
#[derive(Clone, Copy, PartialEq)]
struct Score(f32);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The i8 dot product this CPU runs best.
#[derive(Clone, Copy)]
enum Dot {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2),
}

/// Proof that the CPU supports AVX2: only [`Avx2::detect`] makes one.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    fn detect() -> Option<Self> {
        std::arch::is_x86_feature_detected!("avx2").then_some(Avx2(()))
    }
}

impl Dot {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = Avx2::detect() {
            return Dot::Avx2(t);
        }
        Dot::Portable
    }

    #[inline(always)]
    fn dot(self, a: &[i8], b: &[i8]) -> i32 {
        match self {
            Dot::Portable => dot_portable(a, b),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: an `Avx2` token exists only if the CPU has AVX2, all the function
            // enables.
            Dot::Avx2(_) => unsafe { dot_avx2(a, b) },
        }
    }
}

/// `a · b` over the common length, widened to i32 (the plain reference).
fn dot_portable(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// `a · b` with 32 products per `vpmaddubsw`: that instruction multiplies unsigned bytes
/// by signed ones, so it is given |a| and b with a's sign moved onto it (`vpsignb`), and
/// adds neighbouring products into i16 — at most 2 × 127² = 32,258, so it never
/// saturates for codes in [-127, 127], the only ones the graph holds (see `Builder`)
/// and `quantize_i8` makes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let load = |s: &[i8]| -> __m256i {
        bytemuck::cast::<[i8; 32], __m256i>(<[i8; 32]>::try_from(s).unwrap_or([0; 32]))
    };
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    let mut ca = a.chunks_exact(32);
    let mut cb = b.chunks_exact(32);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let (x, y) = (load(x), load(y));
        let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(y, x));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
    }
    let lanes: [i32; 8] = bytemuck::cast(acc);
    lanes.iter().sum::<i32>() + dot_portable(ca.remainder(), cb.remainder())
}

/// 1 / ‖codes‖, or 0 for a zero vector (whose cosine with anything is taken as 0).
fn inv_norm(codes: &[i8]) -> f32 {
    let n2: i64 = codes.iter().map(|&x| x as i64 * x as i64).sum();
    if n2 > 0 {
        1.0 / (n2 as f32).sqrt()
    } else {
        0.0
    }
}

/// Asks the CPU to start loading the cache line at `p` (a hint: never faults, whatever
/// `p` is).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 reads nothing architecturally and cannot fault, on any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The slots a search has seen, by generation stamp: clearing is one increment.
struct Visited {
    marks: Vec<u16>,
    epoch: u16,
}

impl Visited {
    fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.fill(0);
            self.epoch = 1;
        }
    }

    /// Marks `slot`; whether it was marked already.
    #[inline(always)]
    fn test_and_set(&mut self, slot: usize) -> bool {
        let m = &mut self.marks[slot];
        let seen = *m == self.epoch;
        *m = self.epoch;
        seen
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = const {
        RefCell::new(Visited { marks: Vec::new(), epoch: 0 })
    };
}

/// A read-only copy of an i8 HNSW graph, laid out for search.
pub(crate) struct FrozenGraph {
    dim: usize,
    /// Lines per row of codes.
    row_lines: usize,
    codes: Vec<Line>,
    /// 1 / ‖code‖ per slot (0 for a zero code, whose cosine is taken as 0).
    inv_norm: Vec<f32>,
    /// Expert id per slot; `u64::MAX` marks a slot usearch freed (still linked, so still
    /// walked through, never returned).
    keys: Vec<u64>,
    /// Level-0 link capacity; `links0` holds `1 + base` u32 per slot: count, then slots.
    base: usize,
    links0: Vec<u32>,
    /// Links above level 0, for the few nodes that have them: `upper[&slot][l - 1]`.
    upper: HashMap<u32, Vec<Vec<u32>>>,
    entry: u32,
    max_level: usize,
    dot: Dot,
}

/// Builds a [`FrozenGraph`] from [`walk_file`]'s visits.
struct Builder {
    dim: usize,
    graph: Option<FrozenGraph>,
}

impl FileVisitor for Builder {
    fn graph(&mut self, h: GraphHead<'_>) {
        let mut g = FrozenGraph::zeroed(self.dim, h.size, h.base, h.entry, h.max_level);
        let row_lines = g.row_lines;
        for (slot, v) in h.vectors.chunks_exact(h.vector_bytes.max(1)).enumerate() {
            let row = &mut g.codes[slot * row_lines..(slot + 1) * row_lines];
            let dst: &mut [i8] = bytemuck::cast_slice_mut(row);
            // -128 never comes out of `quantize_i8`; clamping it keeps every code in
            // the range the fast dot product is exact for, whatever the bytes say.
            for (d, &b) in dst.iter_mut().zip(v) {
                *d = (b as i8).max(-127);
            }
            g.inv_norm[slot] = inv_norm(dst);
        }
        self.graph = Some(g);
    }

    fn links(&mut self, slot: usize, key: u64, level: usize, at: usize, links: &[u8]) {
        let Some(g) = self.graph.as_mut() else {
            return;
        };
        let slots = links
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if at == 0 {
            g.keys[slot] = key;
            let row = &mut g.links0[slot * (1 + g.base)..(slot + 1) * (1 + g.base)];
            row[0] = (links.len() / 4) as u32;
            for (d, s) in row[1..].iter_mut().zip(slots) {
                *d = s;
            }
        } else {
            let levels = g
                .upper
                .entry(slot as u32)
                .or_insert_with(|| vec![Vec::new(); level]);
            if let Some(l) = levels.get_mut(at - 1) {
                *l = slots.collect();
            }
        }
    }
}

impl FrozenGraph {
    /// The graph in `bytes`, usearch's serialisation of an i8 cosine index of `dim`-wide
    /// keys, checked as a saved file is (a structural error is the reason, as a string).
    pub(crate) fn from_saved(
        bytes: &[u8],
        dim: usize,
        params: &super::IndexParams,
    ) -> std::result::Result<Self, String> {
        let mut b = Builder { dim, graph: None };
        walk_file(bytes, dim, params, &mut b)?;
        // An empty graph has no shape to visit.
        Ok(b.graph
            .unwrap_or_else(|| FrozenGraph::zeroed(dim, 0, 0, 0, 0)))
    }

    /// A graph of `size` slots with zero codes, no links and every slot free, for the
    /// file's visits to fill in.
    fn zeroed(dim: usize, size: usize, base: usize, entry: usize, max_level: usize) -> Self {
        let row_lines = dim.div_ceil(64).max(1);
        FrozenGraph {
            dim,
            row_lines,
            codes: vec![Line([0; 64]); size * row_lines],
            inv_norm: vec![0.0; size],
            keys: vec![u64::MAX; size],
            base,
            links0: vec![0; size * (1 + base)],
            upper: HashMap::new(),
            entry: entry as u32,
            max_level,
            dot: Dot::detect(),
        }
    }

    /// Heap bytes held.
    pub(crate) fn memory_bytes(&self) -> usize {
        let upper: usize = self
            .upper
            .values()
            .map(|v| v.iter().map(|l| 24 + l.len() * 4).sum::<usize>() + 32)
            .sum();
        self.codes.len() * 64
            + self.inv_norm.len() * 4
            + self.keys.len() * 8
            + self.links0.len() * 4
            + upper
    }

    fn slots(&self) -> usize {
        self.keys.len()
    }

    #[inline(always)]
    fn code(&self, slot: usize) -> &[i8] {
        let row = &self.codes[slot * self.row_lines..(slot + 1) * self.row_lines];
        &bytemuck::cast_slice::<Line, i8>(row)[..self.dim]
    }

    #[inline(always)]
    fn prefetch_code(&self, slot: usize) {
        let row = &self.codes[slot * self.row_lines..(slot + 1) * self.row_lines];
        for line in row {
            prefetch(line);
        }
    }

    #[inline(always)]
    fn links_at0(&self, slot: usize) -> &[u32] {
        let row = &self.links0[slot * (1 + self.base)..(slot + 1) * (1 + self.base)];
        &row[1..1 + (row[0] as usize).min(self.base)]
    }

    /// Cosine-ordered score of `slot` for a query with codes `q` (the query's own norm
    /// is left out: it orders nothing).
    #[inline(always)]
    fn score(&self, q: &[i8], slot: usize) -> f32 {
        self.dot.dot(q, self.code(slot)) as f32 * self.inv_norm[slot]
    }

    /// The `k` slots' keys nearest `q` (i8 codes of the query, `dim` long) by cosine,
    /// best first, searching level 0 with a beam of `max(ef, k)`. Scores are the codes'
    /// cosine, as usearch returns them.
    pub(crate) fn search(&self, q: &[i8], k: usize, ef: usize) -> Vec<Hit> {
        let n = self.slots();
        if n == 0 || k == 0 || q.len() != self.dim {
            return Vec::new();
        }
        let q_inv = inv_norm(q);
        // A huge `k` (from a hostile engine.json) must not size the heaps: no more than
        // the graph holds can be returned.
        let k = k.min(n);
        let ef = ef.max(k);
        let mut cur = self.entry as usize;
        let mut cur_s = self.score(q, cur);
        for level in (1..=self.max_level).rev() {
            loop {
                let mut moved = false;
                let links = self
                    .upper
                    .get(&(cur as u32))
                    .and_then(|v| v.get(level - 1))
                    .map_or(&[][..], |l| &l[..]);
                for &nb in links {
                    let s = self.score(q, nb as usize);
                    if s > cur_s {
                        (cur, cur_s) = (nb as usize, s);
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        let found = VISITED.with(|v| {
            let mut visited = v.borrow_mut();
            visited.reset(n);
            self.beam(q, cur, cur_s, ef, &mut visited)
        });
        let mut hits: Vec<Hit> = found
            .into_iter()
            .map(|(s, slot)| Hit {
                id: self.keys[slot as usize],
                score: (s.0 * q_inv).clamp(-1.0, 1.0),
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(k);
        hits
    }

    /// Level-0 beam search from `start`: the best `ef` live slots found, unordered.
    fn beam(
        &self,
        q: &[i8],
        start: usize,
        start_s: f32,
        ef: usize,
        visited: &mut Visited,
    ) -> Vec<(Score, u32)> {
        // Candidates to expand, best first; results kept, worst on top.
        let mut next: BinaryHeap<(Score, u32)> = BinaryHeap::with_capacity(ef * 4);
        let mut kept: BinaryHeap<Reverse<(Score, u32)>> = BinaryHeap::with_capacity(ef + 1);
        let mut fresh: Vec<u32> = Vec::with_capacity(self.base);
        visited.test_and_set(start);
        next.push((Score(start_s), start as u32));
        if self.keys[start] != u64::MAX {
            kept.push(Reverse((Score(start_s), start as u32)));
        }
        while let Some((s, c)) = next.pop() {
            if kept.len() >= ef && kept.peek().is_some_and(|w| s < w.0 .0) {
                break;
            }
            if let Some(&(_, after)) = next.peek() {
                prefetch(self.links0[after as usize * (1 + self.base)..].as_ptr());
            }
            fresh.clear();
            for &nb in self.links_at0(c as usize) {
                if !visited.test_and_set(nb as usize) {
                    fresh.push(nb);
                }
            }
            for &nb in fresh.iter().take(PREFETCH_AHEAD) {
                self.prefetch_code(nb as usize);
            }
            for (i, &nb) in fresh.iter().enumerate() {
                if let Some(&ahead) = fresh.get(i + PREFETCH_AHEAD) {
                    self.prefetch_code(ahead as usize);
                }
                let s = Score(self.score(q, nb as usize));
                let full = kept.len() >= ef;
                if full && kept.peek().is_some_and(|w| s <= w.0 .0) {
                    continue;
                }
                next.push((s, nb));
                if self.keys[nb as usize] != u64::MAX {
                    kept.push(Reverse((s, nb)));
                    if kept.len() > ef {
                        kept.pop();
                    }
                }
            }
        }
        kept.into_iter().map(|Reverse(x)| x).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::hnsw::{quantize_i8, HnswIndex};
    use crate::index::{IndexParams, KeyIndex, Quantization};

    fn keys(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut s = seed;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0
        };
        (0..n).map(|_| (0..dim).map(|_| next()).collect()).collect()
    }

    fn cos(a: &[i8], b: &[i8]) -> f32 {
        let d = dot_portable(a, b) as f32;
        let na = dot_portable(a, a) as f32;
        let nb = dot_portable(b, b) as f32;
        d / (na.sqrt() * nb.sqrt())
    }

    #[test]
    fn fast_dot_equals_the_reference() {
        let v = keys(3, 611, 7);
        let (a, b) = (quantize_i8(&v[0]), quantize_i8(&v[1]));
        for len in [0, 1, 15, 16, 31, 32, 33, 64, 576, 611] {
            assert_eq!(
                Dot::detect().dot(&a[..len], &b[..len]),
                dot_portable(&a[..len], &b[..len]),
                "length {len}"
            );
        }
        let extreme = vec![-127i8; 576];
        assert_eq!(Dot::detect().dot(&extreme, &extreme), 127 * 127 * 576);
        let mixed: Vec<i8> = (0..576)
            .map(|i| if i % 3 == 0 { 127 } else { -127 })
            .collect();
        assert_eq!(
            Dot::detect().dot(&mixed, &extreme),
            dot_portable(&mixed, &extreme)
        );
        // Every pair of code values (each value of `a` against all of `b`'s).
        let all: Vec<i8> = (-127i8..=127).collect();
        for x in -127i8..=127 {
            let a = vec![x; all.len()];
            assert_eq!(Dot::detect().dot(&a, &all), dot_portable(&a, &all), "{x}");
        }
    }

    /// The frozen copy finds what an exact scan of the same codes finds, returns the
    /// codes' cosine as its score, and never returns a removed key.
    #[test]
    fn search_matches_an_exact_scan_of_the_codes() {
        let (n, dim) = (3000, 40);
        let params = IndexParams {
            quantization: Quantization::I8,
            ..IndexParams::default()
        };
        let idx = HnswIndex::new(dim, &params).expect("index");
        let ks = keys(n, dim, 11);
        for (i, k) in ks.iter().enumerate() {
            idx.add(i as u64 + 1, k).expect("add");
        }
        idx.remove(5).expect("remove");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g.usearch");
        idx.save(&path).expect("save");
        let bytes = std::fs::read(&path).expect("read");
        let g = FrozenGraph::from_saved(&bytes, dim, &params).expect("frozen");
        let codes: Vec<Vec<i8>> = ks.iter().map(|k| quantize_i8(k)).collect();
        let queries = keys(100, dim, 99);
        let mut found = 0;
        for qv in &queries {
            let q = quantize_i8(qv);
            let hits = g.search(&q, 10, 64);
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| h.id != 5), "a removed key was returned");
            for w in hits.windows(2) {
                assert!(w[0].score >= w[1].score);
            }
            for h in &hits {
                let want = cos(&q, &codes[h.id as usize - 1]);
                assert!((h.score - want).abs() < 1e-5, "{} vs {want}", h.score);
            }
            let mut exact: Vec<(f32, u64)> = codes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 4)
                .map(|(i, c)| (cos(&q, c), i as u64 + 1))
                .collect();
            exact.sort_by(|a, b| b.0.total_cmp(&a.0));
            found += exact[..10]
                .iter()
                .filter(|(_, id)| hits.iter().any(|h| h.id == *id))
                .count();
        }
        let recall = found as f64 / 1000.0;
        assert!(recall >= 0.95, "recall@10 {recall}");
    }

    #[test]
    fn an_empty_graph_finds_nothing() {
        let params = IndexParams {
            quantization: Quantization::I8,
            ..IndexParams::default()
        };
        let idx = HnswIndex::new(8, &params).expect("index");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g.usearch");
        idx.save(&path).expect("save");
        let bytes = std::fs::read(&path).expect("read");
        let g = FrozenGraph::from_saved(&bytes, 8, &params).expect("frozen");
        assert!(g.search(&[1; 8], 5, 16).is_empty());
    }
}
