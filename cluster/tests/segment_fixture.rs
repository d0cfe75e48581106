//! Segment format version 1 against a committed fixture: the builder writes exactly the
//! fixture's bytes, the reader reads back what went in, and the header fields sit where
//! the format documentation says (so the fixture is not only checked against itself).
//! Regenerate after a deliberate format change with `MOME_WRITE_FIXTURE=1`.

mod common;

use common::*;
use mome_cluster::segment::{SegmentKind, SegmentView, FIXED_HEADER, MAGIC, TRAILER, VERSION};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/segment-v1.bin");

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[test]
fn builder_writes_the_fixture_and_reader_reads_it() {
    let bytes = fixture();
    if std::env::var_os("MOME_WRITE_FIXTURE").is_some() {
        std::fs::write(PATH, &bytes).expect("write fixture");
    }
    let golden = std::fs::read(PATH).expect("fixture file");
    assert_eq!(
        bytes, golden,
        "segment bytes differ from the v1 fixture: a format change needs a new version"
    );

    // Header layout, by hand.
    assert_eq!(&golden[0..8], MAGIC);
    assert_eq!(u32_at(&golden, 8), VERSION);
    assert_eq!(golden[12], 2, "kind delta");
    assert_eq!(&golden[13..16], &[0, 0, 0]);
    assert_eq!(u32_at(&golden, 16), 3, "shard");
    assert_eq!(u32_at(&golden, 20), 2, "experts");
    assert_eq!(u32_at(&golden, 24), 2, "tombstones");
    let config_len = u32_at(&golden, 28) as usize;
    assert_eq!(u64_at(&golden, 32), 9, "generation");
    let header = FIXED_HEADER + config_len + 4;
    assert_eq!(
        u32_at(&golden, header - 4),
        crc32c::crc32c(&golden[..header - 4]),
        "header CRC"
    );
    // Sections: ids (2 × 8), keys (2 × 4 fp16), weights (2 × 2 layers × (A + B) × 4 fp16),
    // meta, tombstones (2 × 8), contiguous from the end of the header.
    let lens = [16u64, 16, 64];
    let mut at = header as u64;
    for (i, want) in lens.iter().enumerate() {
        assert_eq!(u64_at(&golden, 40 + i * 24), at, "section {i} offset");
        assert_eq!(u64_at(&golden, 48 + i * 24), *want, "section {i} length");
        at += want;
    }
    let ids = header;
    assert_eq!(u64_at(&golden, ids), 5);
    assert_eq!(u64_at(&golden, ids + 8), 11);
    let end = golden.len() - 16;
    assert_eq!(&golden[end..end + 8], TRAILER);
    assert_eq!(u64_at(&golden, end + 8), golden.len() as u64);
    assert_eq!(u64_at(&golden, end - 16), 2, "first tombstone");
    assert_eq!(u64_at(&golden, end - 8), 4, "second tombstone");

    let v = SegmentView::parse(&golden).expect("parse");
    assert_eq!(
        (v.kind, v.shard, v.generation, v.len()),
        (SegmentKind::Delta, 3, 9, 2)
    );
    assert_eq!(v.config, config());
    assert_eq!(v.expert(0).expect("expert"), expert(5));
    assert_eq!(v.expert(1).expect("expert"), expert(11));
    assert_eq!(v.tombstones().collect::<Vec<_>>(), vec![2, 4]);
}
