//! The own search of an i8 index (issue 17 item 3) never answers for a graph that
//! changed: in the writer, an insert drops the copy and the next save remakes it; in a
//! reader over a read-only store, opening makes it from the saved index and each catch-up
//! that applies the writer's changes remakes it. Each time the newest key is found.

mod common;

use std::sync::Arc;

use mome::{ExpertIndex, IndexParams, Quantization, Store, StoreConfig};

fn cfg() -> StoreConfig {
    StoreConfig::new(16, 32, 1, vec![0]).with_shard_size(64 * 1024)
}

fn key_of(seed: u64) -> Vec<f32> {
    common::expert(&cfg(), seed)
        .key
        .iter()
        .map(|x| x.to_f32())
        .collect()
}

#[test]
fn the_copy_follows_the_writer_and_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::create(dir.path(), cfg()).unwrap());
    let mut params = IndexParams::default();
    params.quantization = Quantization::I8;
    params.expansion_search = 256;
    let writer = ExpertIndex::open_with(store.clone(), params).unwrap();
    assert!(writer.params().own_search, "on by default");
    writer
        .insert_batch((0..300).map(|s| common::expert(&cfg(), s)).collect())
        .unwrap();
    assert!(!writer.own_search_active(), "an insert must drop the copy");
    writer.save().unwrap();
    assert!(writer.own_search_active(), "a save must remake it");
    assert_eq!(writer.search(&key_of(7), 5).unwrap()[0].id, 8);

    let ro = Arc::new(Store::open_read_only(dir.path()).unwrap());
    let reader = ExpertIndex::open(ro.clone()).unwrap();
    assert_eq!(reader.params().quantization, Quantization::I8);
    assert!(reader.own_search_active(), "opening must make the copy");
    assert_eq!(reader.search(&key_of(123), 5).unwrap()[0].id, 124);

    // The writer goes on; the reader sees it after a refresh and a catch-up, through a
    // remade copy that holds the new key.
    let new = writer
        .insert_batch(vec![common::expert(&cfg(), 5_000)])
        .unwrap()[0];
    ro.refresh().unwrap();
    assert_eq!(reader.catch_up().unwrap(), 1);
    assert!(
        reader.own_search_active(),
        "a catch-up must remake the copy"
    );
    assert_eq!(reader.search(&key_of(5_000), 5).unwrap()[0].id, new);

    // Turned off, it stays off through saves, and searches give the same answers.
    assert!(!writer.set_own_traversal(false).unwrap());
    writer.save().unwrap();
    assert!(!writer.own_search_active());
    assert_eq!(writer.search(&key_of(5_000), 5).unwrap()[0].id, new);
    assert!(!writer.params().own_search);
}
