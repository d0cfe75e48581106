//! A corrupt record is never served by the re-ranking search (issue 17): the re-rank
//! reads each candidate's fp16 key from its shard through the store's read path, so a
//! flipped byte in a candidate's record — in its key or in its weights, in the final
//! top-k or only among the wider candidates — fails the search with the store's
//! `CorruptRecord` naming that expert, and is never scored or returned.

use std::sync::Arc;

use half::f16;
use mome::{AdapterPair, NewExpert, Provenance, RecordLayout, Store, StoreConfig, StoreError};
use mome::{ExpertIndex, IndexError, IndexParams, Quantization};

const DIM: usize = 64;

fn config() -> StoreConfig {
    StoreConfig::new(16, DIM as u32, 2, vec![0])
}

fn experts(keys: &[f32]) -> Vec<NewExpert> {
    keys.chunks_exact(DIM)
        .enumerate()
        .map(|(i, k)| NewExpert {
            key: k.iter().map(|&x| f16::from_f32(x)).collect(),
            layers: vec![AdapterPair {
                a: mome::synth::seeded_values(i as u64, 32),
                b: mome::synth::seeded_values(!(i as u64), 32),
            }],
            provenance: Provenance::text("corrupt"),
        })
        .collect()
}

fn params() -> IndexParams {
    let mut p = IndexParams::default();
    p.quantization = Quantization::I8;
    p.rerank = 48;
    p
}

/// Where each byte to flip lies: `(what, byte offset inside the record)`.
fn targets(layout: &RecordLayout) -> [(&'static str, usize); 2] {
    [
        ("key", layout.key_range().start + 3),
        ("weights", layout.a_range(0).start + 5),
    ]
}

#[test]
fn corrupt_candidate_fails_the_reranked_search_and_is_never_served() {
    let n = 2000;
    let keys = mome::synth::clustered_keys(n, DIM, 20, 5);
    let layout = RecordLayout::for_config(&config());
    for (what, byte) in targets(&layout) {
        // Rank 1: the expert's own key (the top hit); rank 30: outside the top 10 but
        // inside the 48 candidates the re-rank reads.
        for rank in [0usize, 29] {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::create(dir.path(), config()).unwrap());
            let ids = store.insert_batch(experts(&keys)).unwrap();
            let index = ExpertIndex::open_with(store.clone(), params()).unwrap();
            let query: Vec<f32> = keys[..DIM].to_vec();
            let before = index.search(&query, 10).unwrap();
            // The candidate at `rank` by the exact order of the whole candidate list.
            let wide = index.search(&query, 48).unwrap();
            assert_eq!(wide.len(), 48);
            let victim = wide[rank].id;
            assert_eq!(before[0].id, ids[0], "the query is expert {}'s key", ids[0]);
            assert_eq!(before.iter().any(|h| h.id == victim), rank < 10);
            let e = store.get(victim).unwrap();
            let (shard, offset) = (e.shard_id(), e.offset());
            drop(e);
            drop(index);
            drop(store);

            let path = dir.path().join(format!("shards/{shard:08}.shard"));
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[offset as usize + byte] ^= 0x10;
            std::fs::write(&path, bytes).unwrap();

            let store = Arc::new(Store::open(dir.path()).unwrap());
            let index = ExpertIndex::open_with(store.clone(), params()).unwrap();
            for attempt in 0..2 {
                // Twice: a failed check must not be remembered as verified.
                match index.search(&query, 10) {
                    Err(IndexError::Store(StoreError::CorruptRecord {
                        id,
                        shard: s,
                        offset: o,
                        ..
                    })) => assert_eq!(
                        (id, s, o),
                        (victim, shard, offset),
                        "{what}, rank {rank}, attempt {attempt}"
                    ),
                    Ok(hits) => panic!(
                        "{what} flipped in expert {victim} (candidate {rank}), attempt \
                         {attempt}: the search was served {:?}",
                        hits.iter().map(|h| h.id).collect::<Vec<_>>()
                    ),
                    Err(other) => panic!("{what}, rank {rank}: unexpected error {other}"),
                }
            }
            // A query whose candidates exclude the victim is still served: the opposite
            // of expert 1's key, whose neighbours (the victim among them) rank last.
            let far: Vec<f32> = query.iter().map(|x| -x).collect();
            index.set_search(params().expansion_search, 0).unwrap();
            let wide_far = index.search(&far, 48).unwrap();
            index.set_search(params().expansion_search, 48).unwrap();
            assert!(wide_far.iter().all(|h| h.id != victim));
            let hits = index.search(&far, 10).unwrap();
            assert_eq!(hits.len(), 10);
        }
    }
}
