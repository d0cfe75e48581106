//! Quantized traversal with exact re-ranking (issue 17): an `ExpertIndex` over a store of
//! 100k clustered keys (dim 576), built as i8 codes and searched with a re-rank width,
//! reaches recall@10 ≥ 0.95 against the exact top-10 of the stored fp16 keys; its scores
//! are the exact cosines; and its top-10 is the exact cosine order of the graph's own
//! candidates. Wiring, not speed.

use std::collections::HashSet;
use std::sync::Arc;

use half::f16;
use mome::{AdapterPair, NewExpert, Provenance, Store, StoreConfig};
use mome::{ExpertIndex, FlatIndex, IndexParams, KeyIndex, Quantization};

const DIM: usize = 576;

/// Experts with the given keys and the smallest weights a store takes (rank 1,
/// d_model 8, one layer): the test is about keys.
fn experts(keys: &[f32]) -> Vec<NewExpert> {
    keys.chunks_exact(DIM)
        .map(|k| NewExpert {
            key: k.iter().map(|&x| f16::from_f32(x)).collect(),
            layers: vec![AdapterPair {
                a: vec![f16::ONE; 8],
                b: vec![f16::ONE; 8],
            }],
            provenance: Provenance::text("rerank"),
        })
        .collect()
}

#[test]
fn i8_traversal_with_exact_rerank_has_recall_at_10_of_095() {
    let (n, queries, k, rerank) = (100_000usize, 300usize, 10usize, 64usize);
    let keys = mome::synth::clustered_keys(n, DIM, 1000, 1);
    let dir = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let store =
        Arc::new(Store::create(dir.path(), StoreConfig::new(8, DIM as u32, 1, vec![0])).unwrap());
    for chunk in keys.chunks(DIM * 10_000) {
        store.insert_batch(experts(chunk)).unwrap();
    }
    let ingest = t.elapsed();

    // The oracle indexes exactly what the store holds: the keys rounded to fp16.
    let flat = FlatIndex::new(DIM);
    for (i, k) in keys.chunks_exact(DIM).enumerate() {
        let k16: Vec<f32> = k.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        flat.add(i as u64 + 1, &k16).unwrap();
    }
    drop(keys);

    let mut params = IndexParams::default();
    params.quantization = Quantization::I8;
    params.rerank = rerank;
    let t = std::time::Instant::now();
    let index = ExpertIndex::open_with(store.clone(), params).unwrap();
    let build = t.elapsed();
    assert_eq!(index.len(), n);
    assert_eq!(index.params().rerank, rerank);
    // An i8 graph searches through the crate's own traversal by default; usearch's own
    // search first, for the comparison below.
    assert!(index.params().own_search);
    assert!(!index.set_own_traversal(false).unwrap());

    // Queries: fresh points from the same clusters (not stored keys).
    let qs = mome::synth::clustered_keys(queries, DIM, 1000, 2);
    let truth: Vec<Vec<mome::Hit>> = qs
        .chunks_exact(DIM)
        .map(|q| flat.search(q, k).unwrap())
        .collect();
    let recall = |index: &ExpertIndex| {
        let mut hit = 0usize;
        for (q, t) in qs.chunks_exact(DIM).zip(&truth) {
            let want: HashSet<u64> = t.iter().map(|h| h.id).collect();
            let got = index.search(q, k).unwrap();
            assert_eq!(got.len(), k);
            hit += got.iter().filter(|h| want.contains(&h.id)).count();
        }
        hit as f64 / (queries * k) as f64
    };

    let ef = params.expansion_search;
    index.set_search(ef, 0).unwrap();
    let plain = recall(&index);
    index.set_search(ef, rerank).unwrap();
    let reranked = recall(&index);
    eprintln!(
        "{n} keys: ingest {ingest:?}, i8 build {build:?}; recall@10 at ef {ef}: \
         i8 alone {plain:.4}, i8 + exact re-rank of {rerank} {reranked:.4}"
    );
    assert!(reranked >= 0.95, "recall@10 {reranked} < 0.95");

    for (qi, q) in qs.chunks_exact(DIM).enumerate().take(50) {
        // Re-ranked scores are exact cosines of the stored keys (the flat oracle's
        // scores), best first; the graph's own i8 scores are not.
        let got = index.search(q, k).unwrap();
        let exact: Vec<mome::Hit> = flat.search(q, n).unwrap();
        let exact_of = |id: u64| exact.iter().find(|h| h.id == id).unwrap().score;
        for h in &got {
            assert!(
                (h.score - exact_of(h.id)).abs() < 1e-5,
                "query {qi}: expert {} scored {}, exact {}",
                h.id,
                h.score,
                exact_of(h.id)
            );
        }
        assert!(got.windows(2).all(|w| w[0].score >= w[1].score));

        // The graph's candidates for this query: the same search (same ef, same width)
        // without the re-rank step. The re-ranked top-k is their exact cosine top-k.
        index.set_search(ef, 0).unwrap();
        let candidates = index.search(q, rerank).unwrap();
        index.set_search(ef, rerank).unwrap();
        let mut by_exact: Vec<(u64, f32)> =
            candidates.iter().map(|h| (h.id, exact_of(h.id))).collect();
        by_exact.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for (g, w) in got.iter().zip(&by_exact) {
            assert!(
                g.id == w.0 || (g.score - w.1).abs() < 1e-6,
                "query {qi}: re-ranked {:?}, exact order of the candidates {:?}",
                got.iter().map(|h| h.id).collect::<Vec<_>>(),
                by_exact.iter().take(k).map(|h| h.0).collect::<Vec<_>>()
            );
        }
    }

    // The crate's own search over a copy of the same i8 graph (issue 17 item 3): the
    // same recall as usearch's search at the same ef, alone and re-ranked, and the
    // copy never answers for a graph that changed after it was made.
    index.set_search(ef, 0).unwrap();
    assert!(index.set_own_traversal(true).unwrap());
    let own_plain = recall(&index);
    index.set_search(ef, rerank).unwrap();
    let own_reranked = recall(&index);
    eprintln!(
        "own traversal at ef {ef}: i8 alone {own_plain:.4} (usearch's {plain:.4}), \
         re-ranked {own_reranked:.4} (usearch's {reranked:.4})"
    );
    assert!(
        own_plain >= plain - 0.01,
        "own traversal recall@10 {own_plain}, usearch's {plain}"
    );
    assert!(own_reranked >= 0.95, "recall@10 {own_reranked} < 0.95");
    let q0 = &qs[..DIM];
    let added = index.insert_batch(experts(q0)).unwrap()[0];
    assert!(
        !index.own_search_active(),
        "the insert left the old copy serving"
    );
    let top = index.search(q0, k).unwrap();
    assert_eq!(
        top[0].id, added,
        "a search after an insert missed the new key"
    );
    // The next save makes the copy again, with the new key in it.
    index.save().unwrap();
    assert!(index.own_search_active());
    assert_eq!(index.search(q0, k).unwrap()[0].id, added);
    assert!(!index.set_own_traversal(false).unwrap());
}
