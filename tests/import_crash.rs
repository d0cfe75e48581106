//! Crash test of `import`: a child process imports an archive into a store; the parent
//! SIGKILLs it at a random moment, reopens the store and checks that what is there is a
//! whole prefix of the archive — as many experts as the import marker says, each one
//! byte-identical to its record, with the record's creation time and usage, none twice —
//! and that the index follows. The next cycle runs the same import again, which must
//! finish the rest without duplicates; once an import completes, importing again inserts
//! nothing, and a fresh store starts the next round.
//!
//! Cycles: 50 by default, `MOME_CRASH_CYCLES=N` for soak runs.

mod common;
#[path = "common/crash.rs"]
mod crash;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_expert, expert, seed_of, small_config};
use mome::{ExpertIndex, Store};
use rand::{Rng, SeedableRng};

/// Experts in the archive: several import batches (256 each), so kills land between
/// committed batches as well as inside one.
const EXPERTS: u64 = 1200;

/// The importing process. A no-op unless started by `import_survives_sigkill`.
#[test]
fn import_child() {
    let Ok(dir) = std::env::var(crash::CHILD_ENV) else {
        return;
    };
    let archive = Path::new(&dir).join("..").join("source.mome");
    let store = Arc::new(Store::open(&dir).unwrap());
    let index = ExpertIndex::open(store).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nready").unwrap();
    out.flush().unwrap();
    let r = mome::import_archive(&index, &archive).unwrap();
    writeln!(out, "done {} {}", r.experts, r.skipped).unwrap();
    out.flush().unwrap();
    // Wait to be killed: the parent decides when the cycle ends.
    std::thread::sleep(Duration::from_secs(600));
}

/// The source store's experts by seed: (created_at_ms, usage).
fn source(dir: &Path, archive: &Path) -> BTreeMap<u64, (u64, u64)> {
    let cfg = small_config();
    let store = Store::create(dir, cfg.clone()).unwrap();
    let seeds: Vec<u64> = (0..EXPERTS).map(|i| 0x1A00_0000 + i).collect();
    for chunk in seeds.chunks(100) {
        store
            .insert_batch(chunk.iter().map(|&s| expert(&cfg, s)).collect())
            .unwrap();
        // Different creation times per chunk.
        std::thread::sleep(Duration::from_millis(3));
    }
    let counts: Vec<(u64, u64)> = (1..=EXPERTS).map(|id| (id, id % 7)).collect();
    store.add_usage(&counts).unwrap();
    let mut out = BTreeMap::new();
    for id in 1..=EXPERTS {
        let m = store.meta(id).unwrap();
        out.insert(
            seed_of(&m.provenance.text).unwrap(),
            (m.created_at_ms, m.usage),
        );
    }
    mome::export_archive(&store, archive).unwrap();
    out
}

/// Checks a reopened store after a kill; returns the records its import holds.
fn check(dir: &Path, archive_id: &[u8; 16], src: &BTreeMap<u64, (u64, u64)>, cycle: u64) -> u64 {
    let cfg = small_config();
    let store = Arc::new(Store::open(dir).unwrap());
    let done = store
        .import_progress(archive_id)
        .unwrap()
        .map_or(0, |p| p.done);
    assert_eq!(
        store.len(),
        done,
        "cycle {cycle}: the store holds {} experts, its import marker says {done}",
        store.len()
    );
    let mut seen = std::collections::BTreeSet::new();
    for e in store.snapshot().iter() {
        let e = e.unwrap();
        let m = store.meta(e.id()).unwrap();
        let seed = seed_of(&m.provenance.text).unwrap();
        assert!(
            seen.insert(seed),
            "cycle {cycle}: seed {seed} imported twice"
        );
        assert_expert(&cfg, &e, seed);
        let (created, usage) = src[&seed];
        assert_eq!(m.created_at_ms, created, "cycle {cycle}: creation time");
        assert_eq!(m.usage, usage, "cycle {cycle}: usage of seed {seed}");
    }
    // A prefix of the archive (export writes in id order, so seeds in order).
    let expected: std::collections::BTreeSet<u64> =
        src.keys().copied().take(done as usize).collect();
    assert_eq!(seen, expected, "cycle {cycle}: not a prefix of the archive");
    let report = store.verify().unwrap();
    assert!(
        report.problems.is_empty(),
        "cycle {cycle}: {:?}",
        report.problems
    );
    // The index catches up with whatever was committed.
    let index = ExpertIndex::open(store).unwrap();
    assert_eq!(index.len() as u64, done, "cycle {cycle}: index size");
    done
}

#[test]
fn import_survives_sigkill() {
    let cycles = crash::cycles(50);
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("source.mome");
    let src = source(&root.path().join("source"), &archive);
    let summary = mome::check_archive(&archive).unwrap();
    let mut archive_id = [0u8; 16];
    for (i, b) in archive_id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&summary.id[2 * i..2 * i + 2], 16).unwrap();
    }

    // How long one whole import takes here, to spread the kills over it.
    let probe = root.path().join("probe");
    drop(Store::create(&probe, small_config()).unwrap());
    let t = Instant::now();
    {
        let index = ExpertIndex::open(Arc::new(Store::open(&probe).unwrap())).unwrap();
        let r = mome::import_archive(&index, &archive).unwrap();
        assert_eq!((r.experts, r.skipped), (EXPERTS, 0));
        // Importing again inserts nothing.
        let again = mome::import_archive(&index, &archive).unwrap();
        assert_eq!((again.experts, again.skipped), (0, EXPERTS));
        assert_eq!(index.len() as u64, EXPERTS);
    }
    let whole = t.elapsed().as_millis().max(20) as u64;

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x1A1A);
    let (mut round, mut completed, mut partial) = (0u32, 0u32, 0u32);
    let mut dir = root.path().join(format!("dst{round}"));
    drop(Store::create(&dir, small_config()).unwrap());
    for cycle in 0..cycles {
        // Child start-up (store and index open) is before "ready"; kills spread over
        // the import and a little after it.
        let work = Duration::from_millis(rng.random_range(0..whole * 3 / 2 + 5));
        let lines = crash::run_and_kill(
            "import_child",
            &dir,
            cycle + 1,
            Duration::from_secs(30),
            work,
        );
        let finished = lines.iter().any(|l| l.starts_with("done "));
        let done = check(&dir, &archive_id, &src, cycle);
        if finished {
            assert_eq!(done, EXPERTS, "cycle {cycle}: import said done");
        }
        if done == EXPERTS {
            completed += 1;
            // Again: nothing inserted, nothing duplicated.
            let store = Arc::new(Store::open(&dir).unwrap());
            let index = ExpertIndex::open(store).unwrap();
            let again = mome::import_archive(&index, &archive).unwrap();
            assert_eq!(
                (again.experts, again.skipped),
                (0, EXPERTS),
                "cycle {cycle}"
            );
            drop(index);
            round += 1;
            dir = root.path().join(format!("dst{round}"));
            drop(Store::create(&dir, small_config()).unwrap());
        } else if done > 0 {
            partial += 1;
        }
    }
    eprintln!(
        "{cycles} SIGKILL cycles of import ({EXPERTS} experts, one import ≈ {whole} ms): \
         {completed} imports completed, {partial} kills left a partial import that the next run finished"
    );
    assert!(
        partial > 0 && completed > 0,
        "kills never landed inside an import ({partial} partial) or none completed ({completed})"
    );
}
