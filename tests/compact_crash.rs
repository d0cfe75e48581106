//! Compaction crash test: a child process inserts and deletes through an `ExpertIndex`
//! while a second thread compacts in a loop (aggressive policy, tiny shards) and the
//! index is saved now and then; the parent SIGKILLs it at a random moment, reopens, and
//! checks that every acknowledged expert is present and byte-identical, acknowledged
//! deletes stayed deleted, nothing torn is visible, `verify` is clean, and the saved
//! index plus its catch-up equals the live set (compaction kept insertion sequences and
//! purged no tombstone the saved index still needed). At the end one clean compaction
//! reclaims every orphan file.
//!
//! Cycles: 30 by default, `MOME_CRASH_CYCLES=N` for soak runs.

mod common;
#[path = "common/crash.rs"]
mod crash;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{assert_expert, expert, small_config};
use mome::{tombstone_horizon, CompactionPolicy, Store};
use mome::{ExpertIndex, IndexParams};
use rand::{Rng, SeedableRng};

fn policy() -> CompactionPolicy {
    let mut p = CompactionPolicy::default();
    p.min_live_fraction = 0.9;
    p
}

/// The writer process. A no-op unless started by `compaction_survives_sigkill`.
#[test]
fn compact_crash_child() {
    let Ok(dir) = std::env::var(crash::CHILD_ENV) else {
        return;
    };
    let cycle: u64 = std::env::var(crash::CYCLE_ENV).unwrap().parse().unwrap();
    let cfg = small_config();
    let store = Arc::new(Store::open(&dir).unwrap());
    let index = Arc::new(ExpertIndex::open_with(store.clone(), IndexParams::flat()).unwrap());
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = |line: String| {
        let mut o = out.lock().unwrap();
        writeln!(o, "{line}").unwrap();
        o.flush().unwrap();
    };
    say("\nready".into());
    let stop = Arc::new(AtomicBool::new(false));
    let compactor = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                store
                    .compact(&policy(), tombstone_horizon(store.dir()))
                    .unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(cycle);
    for n in 0u64.. {
        if rng.random_bool(0.35) && !store.is_empty() {
            let live: Vec<u64> = store.snapshot().ids().collect();
            let victims: BTreeSet<u64> = (0..rng.random_range(1..6))
                .map(|_| live[rng.random_range(0..live.len())])
                .collect();
            let list = victims.iter().map(u64::to_string).collect::<Vec<_>>();
            say(format!("deleting {}", list.join(" ")));
            index
                .delete_batch(&victims.iter().copied().collect::<Vec<_>>())
                .unwrap();
            say(format!("deleted {}", list.join(" ")));
        } else {
            let k = rng.random_range(1..=12u64);
            let seeds: Vec<u64> = (0..k).map(|i| (cycle << 32) | (n << 8) | i).collect();
            let ids = index
                .insert_batch(seeds.iter().map(|&s| expert(&cfg, s)).collect())
                .unwrap();
            for (id, s) in ids.iter().zip(&seeds) {
                say(format!("ack {id} {s}"));
            }
        }
        if n % 16 == 15 {
            index.save().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    compactor.join().unwrap();
}

#[test]
fn compaction_survives_sigkill() {
    let cycles = crash::cycles(30);
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    {
        // A base of sealed shards for the first children to hollow out.
        let store = Store::create(dir.path(), cfg.clone()).unwrap();
        store
            .insert_batch((0..600).map(|s| expert(&cfg, 1 << 62 | s)).collect())
            .unwrap();
    }
    let mut acked: BTreeMap<u64, u64> = (1..=600).map(|id| (id, 1 << 62 | (id - 1))).collect();
    let mut deleted: BTreeSet<u64> = BTreeSet::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC0_4AC7);
    let (mut total_acks, mut total_deletes, mut max_orphans) = (0usize, 0usize, 0usize);

    for cycle in 0..cycles {
        let lines = crash::run_and_kill(
            "compact_crash_child",
            dir.path(),
            cycle + 1,
            Duration::from_secs(30),
            Duration::from_millis(rng.random_range(5..120)),
        );

        let mut in_flight: Vec<u64> = Vec::new();
        for line in &lines {
            let mut parts = line.split(' ');
            match parts.next() {
                Some("ack") => {
                    let id: u64 = parts.next().unwrap().parse().unwrap();
                    let seed: u64 = parts.next().unwrap().parse().unwrap();
                    acked.insert(id, seed);
                    total_acks += 1;
                }
                Some("deleting") => in_flight = parts.map(|p| p.parse().unwrap()).collect(),
                Some("deleted") => {
                    for id in parts.map(|p| p.parse::<u64>().unwrap()) {
                        acked.remove(&id);
                        deleted.insert(id);
                        total_deletes += 1;
                    }
                    in_flight.clear();
                }
                _ => {}
            }
        }

        let store = Arc::new(Store::open(dir.path()).unwrap());
        if !in_flight.is_empty() {
            // Not acknowledged: all or none of the batch is deleted.
            let gone = in_flight
                .iter()
                .filter(|&&id| store.get(id).is_err())
                .count();
            assert!(
                gone == 0 || gone == in_flight.len(),
                "cycle {cycle}: a delete batch was torn"
            );
            if gone > 0 {
                for id in &in_flight {
                    acked.remove(id);
                    deleted.insert(*id);
                }
            }
        }
        let stats = crash::check_recovered(&store, &cfg, &mut acked, &deleted, cycle);
        max_orphans = max_orphans.max(stats.orphan_files.len());
        // The saved index, caught up from the store, holds exactly the live experts.
        let check = ExpertIndex::check_saved(&store).unwrap();
        assert!(check.unusable.is_none(), "cycle {cycle}: {check:?}");
        assert!(
            check.missing.is_empty() && check.stale.is_empty(),
            "cycle {cycle}: {check:?}"
        );
        assert_eq!(check.indexed as u64, store.len(), "cycle {cycle}");
    }

    // One clean compaction reclaims every orphan file; only metadata shards remain.
    let store = Store::open(dir.path()).unwrap();
    let orphans = store.stats().unwrap().orphan_files.len();
    let r = store
        .compact(&policy(), tombstone_horizon(store.dir()))
        .unwrap();
    assert_eq!(r.orphans_removed as usize, orphans);
    let stats = store.stats().unwrap();
    assert!(stats.orphan_files.is_empty());
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let stats = store.stats().unwrap();
    assert!(stats.orphan_files.is_empty(), "{:?}", stats.orphan_files);
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir.path().join("shards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let in_meta: BTreeSet<String> = stats
        .shards
        .iter()
        .map(|s| format!("{:08}.shard", s.id))
        .collect();
    assert_eq!(on_disk, in_meta);
    for (&id, &seed) in &acked {
        assert_expert(&cfg, &store.get(id).unwrap(), seed);
    }
    assert!(
        total_acks > cycles as usize && total_deletes > cycles as usize,
        "children did too little work to mean anything"
    );
    eprintln!(
        "{cycles} SIGKILL cycles: {total_acks} acknowledged inserts, {total_deletes} acknowledged deletes, \
         {} live at the end, at most {max_orphans} orphan files between cycles, {} reclaimed at the end",
        acked.len(),
        orphans
    );
}
