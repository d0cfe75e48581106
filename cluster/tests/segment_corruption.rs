//! Corruption and fuzzing of the segment reader: every single-byte change of a valid
//! segment, every truncation and every appended byte is detected; arbitrary bytes and
//! randomly mutated segments never panic; random contents round-trip.

mod common;

use common::*;
use half::f16;
use mome::{AdapterPair, Provenance};
use mome_cluster::segment::{ClusterExpert, SegmentBuilder, SegmentKind, SegmentView};
use proptest::prelude::*;

#[test]
fn every_byte_flip_truncation_and_extension_is_detected() {
    let good = fixture();
    SegmentView::parse(&good).expect("valid");
    for pos in 0..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = good.clone();
            b[pos] ^= flip;
            assert!(
                SegmentView::parse(&b).is_err(),
                "flip {flip:#x} at byte {pos} of {} not detected",
                good.len()
            );
        }
    }
    for len in 0..good.len() {
        assert!(
            SegmentView::parse(&good[..len]).is_err(),
            "truncation to {len} bytes not detected"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(
        SegmentView::parse(&longer).is_err(),
        "an appended byte not detected"
    );
}

fn arb_expert(id: u64) -> impl Strategy<Value = ClusterExpert> {
    let f = || {
        prop::collection::vec(-4.0f32..4.0, 4)
            .prop_map(|v| v.into_iter().map(f16::from_f32).collect::<Vec<_>>())
    };
    (f(), f(), f(), f(), f(), ".{0,40}", any::<u64>()).prop_map(
        move |(key, a0, b0, a1, b1, text, t)| ClusterExpert {
            id,
            key,
            layers: vec![AdapterPair { a: a0, b: b0 }, AdapterPair { a: a1, b: b1 }],
            provenance: Provenance::text(text),
            created_at_ms: t,
        },
    )
}

fn arb_segment() -> impl Strategy<Value = (Vec<ClusterExpert>, Vec<u64>, bool)> {
    (
        prop::collection::btree_set(0u64..1000, 0..12),
        prop::collection::btree_set(1000u64..2000, 0..6),
        any::<bool>(),
    )
        .prop_flat_map(|(ids, tombs, base)| {
            let experts: Vec<_> = ids.into_iter().map(arb_expert).collect();
            let tombs: Vec<u64> = if base {
                Vec::new()
            } else {
                tombs.into_iter().collect()
            };
            (experts, Just(tombs), Just(base))
        })
}

fn build(experts: &[ClusterExpert], tombs: &[u64], base: bool) -> Vec<u8> {
    let kind = if base {
        SegmentKind::Base
    } else {
        SegmentKind::Delta
    };
    let mut b = SegmentBuilder::new(kind, 7, 1, &config());
    for e in experts.iter().rev() {
        b.push(e.clone()).expect("push");
    }
    for t in tombs {
        b.tombstone(*t);
    }
    b.finish().expect("finish")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_segments_round_trip((experts, tombs, base) in arb_segment()) {
        let bytes = build(&experts, &tombs, base);
        let v = SegmentView::parse(&bytes).expect("parse");
        prop_assert_eq!(v.len(), experts.len());
        for (i, e) in experts.iter().enumerate() {
            prop_assert_eq!(&v.expert(i).expect("expert"), e);
            prop_assert_eq!(v.position(e.id), Some(i));
        }
        prop_assert_eq!(v.tombstones().collect::<Vec<_>>(), tombs);
    }

    #[test]
    fn mutated_segments_are_refused_never_panic(
        (experts, tombs, base) in arb_segment(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
    ) {
        let good = build(&experts, &tombs, base);
        let mut bad = good.clone();
        for (at, x) in &edits {
            let i = at.index(bad.len());
            bad[i] ^= x;
        }
        if bad != good {
            prop_assert!(SegmentView::parse(&bad).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = SegmentView::parse(&bytes);
    }
}
