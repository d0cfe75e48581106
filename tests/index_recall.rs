//! Recall of the HNSW index against the flat oracle on 100k clustered keys (dim 576),
//! with the default parameters. This checks the wiring (metric, storage, search
//! parameters), not speed.

mod common;

use std::collections::HashSet;

use mome::{FlatIndex, HnswIndex, IndexParams, KeyIndex};
use rayon::prelude::*;

#[test]
fn hnsw_recall_at_10_is_at_least_095() {
    let (n, dim, queries) = (100_000usize, 576usize, 300usize);
    let keys = common::clustered_keys(n, dim, 1000, 1);
    let params = IndexParams::default();
    let hnsw = HnswIndex::new(dim, &params).unwrap();
    let flat = FlatIndex::new(dim);
    hnsw.reserve(n).unwrap();
    let t = std::time::Instant::now();
    keys.par_chunks_exact(dim)
        .enumerate()
        .for_each(|(i, k)| hnsw.add(i as u64 + 1, k).unwrap());
    let build = t.elapsed();
    for (i, k) in keys.chunks_exact(dim).enumerate() {
        flat.add(i as u64 + 1, k).unwrap();
    }
    // Queries: fresh points from the same clusters (not stored keys).
    let qs = common::clustered_keys(queries, dim, 1000, 2);
    let truth: Vec<HashSet<u64>> = qs
        .chunks_exact(dim)
        .map(|q| flat.search(q, 10).unwrap().iter().map(|h| h.id).collect())
        .collect();
    let recall_at = |ef: usize| {
        hnsw.set_expansion_search(ef);
        let mut hit = 0usize;
        for (q, t) in qs.chunks_exact(dim).zip(&truth) {
            let got = hnsw.search(q, 10).unwrap();
            assert_eq!(got.len(), 10);
            hit += got.iter().filter(|h| t.contains(&h.id)).count();
        }
        hit as f64 / (queries * 10) as f64
    };
    for ef in [16, 32, 128] {
        eprintln!("ef_search {ef}: recall@10 = {:.4}", recall_at(ef));
    }
    let recall = recall_at(params.expansion_search);
    eprintln!("HNSW {params:?}: built {n} in {build:?}, recall@10 = {recall:.4}");
    assert!(recall >= 0.95, "recall@10 {recall} < 0.95");
}
