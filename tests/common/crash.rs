//! The SIGKILL harness of the crash tests (`tests/store_crash.rs`,
//! `tests/compact_crash.rs`): the test binary re-runs itself with one child test
//! selected, reads the lines the child prints, and kills it at a random moment after
//! it said "ready". Included with `#[path]` by those two only.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Environment variable naming the store directory the child works on.
pub const CHILD_ENV: &str = "MOME_CRASH_CHILD_DIR";
/// Environment variable carrying the (1-based) cycle number to the child.
pub const CYCLE_ENV: &str = "MOME_CRASH_CYCLE";

/// Cycles to run: `MOME_CRASH_CYCLES=N` for soak runs, else `default`.
pub fn cycles(default: u64) -> u64 {
    std::env::var("MOME_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the test `child_test` of this binary as a child process on `dir`, waits up to
/// `ready_within` for it to print "ready", lets it work for `work`, SIGKILLs it and
/// returns every line it printed (a line cut by the kill is not returned).
pub fn run_and_kill(
    child_test: &str,
    dir: &Path,
    cycle: u64,
    ready_within: Duration,
    work: Duration,
) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(&exe)
        .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(CYCLE_ENV, cycle.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    let _ = ready_tx.send(());
                }
                lines.lock().unwrap().push(line);
            }
        })
    };
    ready_rx
        .recv_timeout(ready_within)
        .expect("child never opened the store");
    std::thread::sleep(work);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    let lines = std::mem::take(&mut *lines.lock().unwrap());
    lines
}

/// What a reopened store must show after a kill: every acknowledged expert present and
/// byte-identical, every acknowledged delete still deleted, experts committed but never
/// acknowledged (the batch in flight) whole — they are added to `acked` —, the live
/// count equal to `acked`, `verify` clean and no orphan slot. Returns the stats.
pub fn check_recovered(
    store: &mome::Store,
    cfg: &mome::StoreConfig,
    acked: &mut std::collections::BTreeMap<u64, u64>,
    deleted: &std::collections::BTreeSet<u64>,
    cycle: u64,
) -> mome::StoreStats {
    use crate::common::{assert_expert, seed_of};
    for (&id, &seed) in acked.iter() {
        let e = store
            .get(id)
            .unwrap_or_else(|e| panic!("cycle {cycle}: acknowledged expert {id} lost: {e}"));
        assert_expert(cfg, &e, seed);
    }
    for &id in deleted {
        assert!(
            store.get(id).is_err(),
            "cycle {cycle}: deleted expert {id} is back"
        );
    }
    let snap = store.snapshot();
    for e in snap.iter() {
        let e = e.unwrap();
        if let std::collections::btree_map::Entry::Vacant(slot) = acked.entry(e.id()) {
            let seed = seed_of(&store.meta(e.id()).unwrap().provenance.text).unwrap();
            assert_expert(cfg, &e, seed);
            slot.insert(seed);
        }
    }
    assert_eq!(store.len(), acked.len() as u64, "cycle {cycle}");
    let report = store.verify().unwrap();
    assert!(
        report.problems.is_empty(),
        "cycle {cycle}: {:?}",
        report.problems
    );
    let stats = store.stats().unwrap();
    assert_eq!(stats.orphan_slots, 0, "cycle {cycle}");
    stats
}
