//! One writer, many reader processes: while a writer process inserts, deletes, saves
//! its index and compacts, reader processes opened with `Store::open_read_only` follow
//! it. Each reader, again and again: reads the writer's acknowledgement log, refreshes,
//! and checks that every expert acknowledged before the refresh is visible (unless the
//! writer had chosen it for deletion), byte-identical, in the reader's index; that every
//! live expert of the snapshot is whole (checksum, contents equal to its seed); that
//! searches return only live experts; that the sequence never goes back. After the
//! writer exits, a last refresh shows exactly its final state. The test binary re-runs
//! itself for the children (as the crash tests do).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_expert, expert, seed_of, small_config};
use mome::{tombstone_horizon, CompactionPolicy, ExpertIndex, Store, StoreError};
use rand::{Rng, SeedableRng};

const DIR_ENV: &str = "MOME_READERS_DIR";
const ROLE_ENV: &str = "MOME_READERS_ROLE";
/// The writer works this long (each round a batch insert, sometimes a delete, an index
/// save, a compaction), so that the late reader joins while it writes: 3 s, or
/// `MOME_READERS_SECS` for a soak (tools/crash-soak.sh runs 600)...
fn write_for() -> Duration {
    Duration::from_secs(
        std::env::var("MOME_READERS_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
    )
}
/// ...and at most this many rounds per second of it.
const ROUNDS_PER_SEC: u64 = 1000;
/// Nothing here may run longer than this past the writer's time, whatever happens.
fn limit() -> Duration {
    write_for() + Duration::from_secs(120)
}

fn log_path(dir: &Path) -> PathBuf {
    dir.with_extension("acks")
}

fn done_path(dir: &Path) -> PathBuf {
    dir.with_extension("done")
}

/// What the writer has said so far: acknowledged experts (id → seed) and the ids it
/// chose for deletion (said before the delete is submitted). Only whole lines count.
fn read_log(dir: &Path) -> (BTreeMap<u64, u64>, BTreeSet<u64>) {
    let raw = std::fs::read_to_string(log_path(dir)).unwrap_or_default();
    let mut acked = BTreeMap::new();
    let mut doomed = BTreeSet::new();
    let complete = raw.rfind('\n').map_or("", |end| &raw[..end]);
    for line in complete.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("ack"), Some(id), Some(seed)) => {
                acked.insert(id.parse().unwrap(), seed.parse().unwrap());
            }
            (Some("del"), Some(id), None) => {
                doomed.insert(id.parse().unwrap());
            }
            _ => panic!("unreadable log line {line:?}"),
        }
    }
    (acked, doomed)
}

fn spawn(role: &str, dir: &Path, seed: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, dir)
        .env(ROLE_ENV, format!("{role}:{seed}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn wait(mut child: Child, what: &str) -> String {
    let deadline = Instant::now() + limit();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
            assert!(
                status.success(),
                "{what} failed ({status}); it printed:\n{out}"
            );
            return out;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{what} ran past {:?}", limit());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn readers_in_other_processes_follow_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let cfg = small_config();
    drop(Store::create(&dir, cfg.clone()).unwrap());

    let writer = spawn("writer", &dir, 1);
    // Readers join at different moments: at the start, during, and late.
    let mut readers = Vec::new();
    for (i, delay) in [0u64, 300, 900].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(delay));
        readers.push(spawn("reader", &dir, 10 + i as u64));
    }
    let out = wait(writer, "writer");
    assert!(out.contains("writer done"), "{out}");
    let (mut checks, mut during) = (0u64, 0u64);
    for (i, r) in readers.into_iter().enumerate() {
        let out = wait(r, &format!("reader {i}"));
        let summary: Vec<u64> = out
            .lines()
            .find_map(|l| l.split("reader checks ").nth(1))
            .unwrap_or_else(|| panic!("reader {i} printed no summary:\n{out}"))
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        checks += summary[0];
        during += summary[1];
    }
    println!("{checks} reader checks, {during} while the writer wrote");
    assert!(
        during >= 3,
        "only {during} checks overlapped the writer: the test proved little"
    );

    // A writer after the fact sees what the readers saw last.
    let (acked, doomed) = read_log(&dir);
    let store = Store::open(&dir).unwrap();
    for (&id, &seed) in &acked {
        match store.get(id) {
            Ok(e) => assert_expert(&cfg, &e, seed),
            Err(_) => assert!(doomed.contains(&id), "acknowledged expert {id} lost"),
        }
    }
    assert!(store.verify().unwrap().problems.is_empty());
}

/// The writer's and readers' bodies; does nothing when run as part of the suite.
#[test]
fn child() {
    let (Ok(dir), Ok(role)) = (std::env::var(DIR_ENV), std::env::var(ROLE_ENV)) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let (role, seed) = role.split_once(':').unwrap();
    let seed: u64 = seed.parse().unwrap();
    match role {
        "writer" => writer(&dir, seed),
        "reader" => reader(&dir, seed),
        other => panic!("unknown role {other}"),
    }
}

fn writer(dir: &Path, seed: u64) {
    let cfg = small_config();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let store = std::sync::Arc::new(Store::open(dir).unwrap());
    let index = ExpertIndex::open(store.clone()).unwrap();
    let mut log = std::fs::File::create(log_path(dir)).unwrap();
    let mut live: Vec<u64> = Vec::new();
    let mut next_seed = 1_000u64;
    let start = Instant::now();
    let write_for = write_for();
    for round in 0..ROUNDS_PER_SEC * write_for.as_secs().max(1) {
        if start.elapsed() > write_for {
            break;
        }
        let n = rng.random_range(1..=6);
        let seeds: Vec<u64> = (0..n).map(|i| next_seed + i).collect();
        next_seed += n;
        let ids = index
            .insert_batch(seeds.iter().map(|&s| expert(&cfg, s)).collect())
            .unwrap();
        let mut lines = String::new();
        for (&id, &s) in ids.iter().zip(&seeds) {
            lines.push_str(&format!("ack {id} {s}\n"));
            live.push(id);
        }
        log.write_all(lines.as_bytes()).unwrap();
        if rng.random_bool(0.35) && live.len() > 4 {
            let victim = live.swap_remove(rng.random_range(0..live.len()));
            log.write_all(format!("del {victim}\n").as_bytes()).unwrap();
            index.delete(victim).unwrap();
        }
        if round % 25 == 24 {
            index.save().unwrap();
        }
        if round % 60 == 59 {
            // Rewrite shards with any deletion: many compactions while readers follow.
            let mut policy = CompactionPolicy::default();
            policy.min_live_fraction = 0.95;
            store.compact(&policy, tombstone_horizon(dir)).unwrap();
        }
    }
    index.save().unwrap();
    std::fs::write(done_path(dir), b"done").unwrap();
    println!("writer done: {} live", live.len());
}

fn reader(dir: &Path, seed: u64) {
    let cfg = small_config();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let store = std::sync::Arc::new(Store::open_read_only(dir).unwrap());
    // A reader writes nothing: not the writer's files, not the usage counters.
    assert!(matches!(
        store.insert(expert(&cfg, 1)),
        Err(StoreError::ReadOnly { .. })
    ));
    let index = ExpertIndex::open(store.clone()).unwrap();
    let start = Instant::now();
    let mut last_seq = store.seq();
    let (mut checks, mut during) = (0u64, 0u64);
    loop {
        let finished = done_path(dir).exists();
        let (acked, _) = read_log(dir);
        store.refresh().unwrap();
        index.catch_up().unwrap();
        // Read after the refresh: the writer names a victim before deleting it, so every
        // delete the view can contain is named here.
        let (_, doomed) = read_log(dir);
        let snap = store.snapshot();
        assert!(snap.seq() >= last_seq, "sequence went back");
        last_seq = snap.seq();
        for (&id, &s) in &acked {
            if doomed.contains(&id) {
                continue;
            }
            let e = snap.get(id).unwrap_or_else(|e| {
                let fresh =
                    Store::open_read_only(dir).map(|s| (s.seq(), s.snapshot().contains(id)));
                panic!(
                    "acknowledged expert {id} not visible after refresh: {e} (view seq {}, \
                     hint {:?}, a fresh reader: {fresh:?})",
                    snap.seq(),
                    std::fs::read(dir.join("commit.hint")).ok()
                )
            });
            assert_expert(&cfg, &e, s);
            assert!(
                index.contains(id),
                "acknowledged expert {id} not in the reader's index"
            );
        }
        // No torn state: every live expert of the view is whole and what was written.
        let mut live = 0u64;
        for e in snap.iter() {
            let e = e.unwrap();
            let meta = store.meta(e.id()).unwrap();
            assert_expert(&cfg, &e, seed_of(&meta.provenance.text).unwrap());
            live += 1;
        }
        assert_eq!(live, snap.len());
        let q: Vec<f32> = common::values(rng.random(), 8)
            .iter()
            .map(|x| x.to_f32())
            .collect();
        // The store's view does not move between refreshes: searches see `snap`.
        for h in index.search(&q, 10).unwrap() {
            assert!(
                snap.contains(h.id),
                "search returned expert {} not live",
                h.id
            );
        }
        checks += 1;
        if !finished {
            during += 1;
        }
        if finished {
            // The writer is gone: this view is its final state, exactly.
            let want: BTreeSet<u64> = acked
                .keys()
                .copied()
                .filter(|id| !doomed.contains(id))
                .collect();
            let got: BTreeSet<u64> = snap.ids().collect();
            assert_eq!(
                got, want,
                "final view differs from the writer's final state"
            );
            break;
        }
        assert!(start.elapsed() < limit(), "writer never finished");
        std::thread::sleep(Duration::from_millis(rng.random_range(0..30)));
    }
    println!("reader checks {checks} {during}");
}
