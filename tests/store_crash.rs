//! Crash test: a child process inserts and deletes in a loop, reporting every
//! acknowledged operation; the parent SIGKILLs it at a random moment, reopens the store
//! and checks that every acknowledged expert is present and byte-identical, that
//! acknowledged deletes stayed deleted, and that nothing torn is visible.
//!
//! Cycles: 50 by default, `MOME_CRASH_CYCLES=N` for soak runs.

mod common;
#[path = "common/crash.rs"]
mod crash;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use common::{expert, small_config};
use mome::Store;
use rand::{Rng, SeedableRng};

/// The writer process. A no-op unless started by `crash_recovery_under_sigkill`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(crash::CHILD_ENV) else {
        return;
    };
    let cycle: u64 = std::env::var(crash::CYCLE_ENV).unwrap().parse().unwrap();
    let cfg = small_config();
    let store = Store::open(&dir).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(cycle);
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nready").unwrap();
    out.flush().unwrap();
    let mut mine: Vec<u64> = Vec::new();
    for n in 0u64.. {
        if !mine.is_empty() && rng.random_bool(0.2) {
            let id = mine.swap_remove(rng.random_range(0..mine.len()));
            writeln!(out, "deleting {id}").unwrap();
            out.flush().unwrap();
            store.delete(id).unwrap();
            writeln!(out, "deleted {id}").unwrap();
        } else {
            let k = rng.random_range(1..=12u64);
            let seeds: Vec<u64> = (0..k).map(|i| (cycle << 32) | (n << 8) | i).collect();
            let ids = store
                .insert_batch(seeds.iter().map(|&s| expert(&cfg, s)).collect())
                .unwrap();
            for (id, s) in ids.iter().zip(&seeds) {
                writeln!(out, "ack {id} {s}").unwrap();
            }
            mine.extend(ids);
        }
        out.flush().unwrap();
    }
}

#[test]
fn crash_recovery_under_sigkill() {
    let cycles = crash::cycles(50);
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    drop(Store::create(dir.path(), cfg.clone()).unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC0FFEE);
    // id → seed of every acknowledged, not acknowledged-deleted expert.
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut deleted: BTreeSet<u64> = BTreeSet::new();
    let mut total_acks = 0usize;

    for cycle in 0..cycles {
        let lines = crash::run_and_kill(
            "crash_child",
            dir.path(),
            cycle + 1,
            Duration::from_secs(20),
            Duration::from_millis(rng.random_range(1..60)),
        );

        let mut in_flight_delete = None;
        for line in &lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[..] {
                ["ack", id, seed] => {
                    acked.insert(id.parse().unwrap(), seed.parse().unwrap());
                    total_acks += 1;
                }
                ["deleting", id] => in_flight_delete = Some(id.parse::<u64>().unwrap()),
                ["deleted", id] => {
                    let id: u64 = id.parse().unwrap();
                    acked.remove(&id);
                    deleted.insert(id);
                    in_flight_delete = None;
                }
                _ => {}
            }
        }

        let store = Store::open(dir.path()).unwrap();
        if let Some(id) = in_flight_delete {
            // Not acknowledged: either outcome is fine, but it must be whole.
            if store.get(id).is_err() {
                acked.remove(&id);
                deleted.insert(id);
            }
        }
        crash::check_recovered(&store, &cfg, &mut acked, &deleted, cycle);
    }
    assert!(
        total_acks > cycles as usize,
        "children acknowledged too little work to mean anything"
    );
    eprintln!(
        "{cycles} SIGKILL cycles, {total_acks} acknowledged inserts, {} live, {} deleted",
        acked.len(),
        deleted.len()
    );
}
