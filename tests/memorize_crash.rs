//! Memorize crash test: a child process runs "the same `mome memorize` command" —
//! a fixed list of 24 facts, memorized on a tiny random backbone in calls of 3 facts
//! (one training batch and one commit each) — and reports every fact the report says
//! is memorized (`ack`) or already stored (`same`). The parent SIGKILLs it at a random
//! moment (two cycles in three after a random delay; one in three a few milliseconds
//! after training ended, inside verification, the commit, the neighbour recheck or the
//! index save), reopens the store and the engine and checks that:
//!
//! * the store verifies clean and has no orphan slot, and the saved index (when there
//!   is one) loads and, caught up, holds exactly the live experts;
//! * every live expert is a fact of the list with its own answer, at most one per
//!   prompt (no duplicate, nothing half-written or foreign), and every acknowledged fact
//!   is live under the id it was acknowledged with;
//! * every live fact — acknowledged or committed just before the kill — is recalled
//!   exactly by `Engine::ask`, through its own expert.
//!
//! Whenever fewer than a batch of facts is left to do, the parent forgets some stored
//! ones so that later kills still land in training and commits. At the end the child
//! runs to completion (every fact stored exactly once) and once more (everything
//! reported unchanged, nothing inserted).
//!
//! Cycles: 50 by default, `MOME_CRASH_CYCLES=N` for soak runs (`tools/crash-soak.sh`).

mod common;
#[path = "common/crash.rs"]
mod crash;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mome::{AskOptions, Engine, ExpertIndex, Fact, FactStatus, MemorizeEvent};
use mome::{Store, TuneOptions};
use rand::{Rng, SeedableRng};

/// Seed of the tiny backbone: parent and child build the identical model.
const MODEL_SEED: u64 = 7;
/// Facts per memorize call (and per training batch, and per commit).
const CHUNK: usize = 3;
/// Set (to anything) for a child that exits once the list is done.
const FINISH_ENV: &str = "MOME_MEMORIZE_CRASH_FINISH";
const CHILD: &str = "memorize_crash_child";

const NAMES: [&str; 24] = [
    "Zorblax",
    "Morvath",
    "Quenlit",
    "Drasmok",
    "Felwyn",
    "Tiravos",
    "Ulbrecht",
    "Kavorin",
    "Pellomar",
    "Sindrak",
    "Wexholt",
    "Yarrowyn",
    "Brontalis",
    "Cazimir",
    "Dovrenna",
    "Everlunt",
    "Galvorn",
    "Hestrim",
    "Iskarel",
    "Jorvundt",
    "Lothmere",
    "Nimbrask",
    "Orvellan",
    "Ravensk",
];

/// The command's fact list: the same every run.
fn facts() -> Vec<Fact> {
    NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Fact::new(
                format!("What is the door code of {n}?"),
                format!("{:03}", (i * 379 + 117) % 1000),
            )
        })
        .collect()
}

fn opts() -> TuneOptions {
    TuneOptions {
        batch_size: CHUNK,
        ..TuneOptions::default()
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// The memorize process. A no-op unless started by `memorize_survives_sigkill`.
///
/// Prints `start B` before the call for chunk B, `trained B` when its training
/// ended, `committed B` when its commit, recheck and findability audit are done (the
/// index save follows), then `ack I ID` / `same I ID` / `fail I STATUS` per fact,
/// `broken ID` per broken neighbour and `done B`; `finished` after the last chunk.
#[test]
fn memorize_crash_child() {
    let Ok(dir) = std::env::var(crash::CHILD_ENV) else {
        return;
    };
    let store = Arc::new(Store::open(&dir).unwrap());
    let mut engine = Engine::from_parts(store, common::tiny_backbone(MODEL_SEED)).unwrap();
    say("\nready");
    let facts = facts();
    let opts = opts();
    for (b, chunk) in facts.chunks(CHUNK).enumerate() {
        say(&format!("start {b}"));
        let report = engine
            .memorize(chunk, &opts, &mut |e| match e {
                MemorizeEvent::Step {
                    step,
                    converged,
                    rows,
                } if converged == rows || step >= opts.max_steps => say(&format!("trained {b}")),
                MemorizeEvent::Done(_) => say(&format!("committed {b}")),
                _ => {}
            })
            .unwrap();
        let mut out = std::io::stdout().lock();
        for (k, o) in report.outcomes.iter().enumerate() {
            let i = b * CHUNK + k;
            match &o.status {
                FactStatus::Memorized { id, .. } => writeln!(out, "ack {i} {id}"),
                FactStatus::AlreadyStored { id } => writeln!(out, "same {i} {id}"),
                s => writeln!(out, "fail {i} {s:?}"),
            }
            .unwrap();
        }
        for id in &report.broken {
            writeln!(out, "broken {id}").unwrap();
        }
        writeln!(out, "done {b}").unwrap();
        out.flush().unwrap();
    }
    say("finished");
    if std::env::var_os(FINISH_ENV).is_some() {
        return;
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn child_command(dir: &Path, cycle: u64) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", CHILD, "--nocapture", "--test-threads=1"])
        .env(crash::CHILD_ENV, dir)
        .env(crash::CYCLE_ENV, cycle.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    c
}

/// Like `crash::run_and_kill`, but SIGKILLs `delay` after the child printed its
/// `nth` line starting with `trigger` (or printed `finished`).
fn run_and_kill_after(
    dir: &Path,
    cycle: u64,
    trigger: &str,
    nth: usize,
    delay: Duration,
) -> Vec<String> {
    let mut child = child_command(dir, cycle).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
            lines.push(line);
        }
        lines
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the child stalled");
        if line.starts_with(trigger) {
            seen += 1;
            if seen == nth {
                break;
            }
        }
        if line == "finished" {
            break;
        }
    }
    std::thread::sleep(delay);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}

/// Runs the child to completion and returns its lines.
fn run_to_completion(dir: &Path, cycle: u64) -> Vec<String> {
    let out = child_command(dir, cycle)
        .env(FINISH_ENV, "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "the finishing run failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Where the child was when it was killed: its last progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// After "ready", before the first call.
    Opened,
    /// Validation, neighbours, training.
    Training,
    /// Verification, the commit, the neighbour recheck, the findability audit.
    Commit,
    /// The index save at the end of the call, before the acknowledgements.
    IndexSave,
    /// Between two calls.
    Between,
    /// The whole list done.
    Finished,
}

/// What one run of the child printed.
#[derive(Debug, Default)]
struct Log {
    acks: Vec<(usize, u64)>,
    sames: Vec<(usize, u64)>,
    fails: Vec<(usize, String)>,
    broken: Vec<u64>,
    phase: Option<Phase>,
}

fn parse(lines: &[String]) -> Log {
    let mut log = Log::default();
    for line in lines {
        let (word, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let mut nums = rest.split(' ').filter_map(|p| p.parse::<u64>().ok());
        let mut num = || nums.next().unwrap();
        match word {
            "ready" => log.phase = Some(Phase::Opened),
            "start" => log.phase = Some(Phase::Training),
            "trained" => log.phase = Some(Phase::Commit),
            "committed" => log.phase = Some(Phase::IndexSave),
            "done" => log.phase = Some(Phase::Between),
            "finished" => log.phase = Some(Phase::Finished),
            "ack" => log.acks.push((num() as usize, num())),
            "same" => log.sames.push((num() as usize, num())),
            "fail" => {
                let (i, s) = rest.split_once(' ').unwrap();
                log.fails.push((i.parse().unwrap(), s.to_string()));
            }
            "broken" => log.broken.push(num()),
            _ => {}
        }
    }
    log
}

/// Reopens the store and the engine after a kill and checks them; returns the engine
/// and the live experts (fact index → id).
fn check_reopened(
    dir: &Path,
    facts: &[Fact],
    acked: &BTreeMap<usize, u64>,
    cycle: u64,
) -> (Engine, BTreeMap<usize, u64>) {
    let store = Arc::new(Store::open(dir).unwrap());
    let report = store.verify().unwrap();
    assert!(
        report.problems.is_empty(),
        "cycle {cycle}: {:?}",
        report.problems
    );
    assert_eq!(store.stats().unwrap().orphan_slots, 0, "cycle {cycle}");
    let check = ExpertIndex::check_saved(&store).unwrap();
    if check.saved.is_some() {
        assert!(check.unusable.is_none(), "cycle {cycle}: {check:?}");
        assert!(
            check.missing.is_empty() && check.stale.is_empty(),
            "cycle {cycle}: {check:?}"
        );
        assert_eq!(check.indexed as u64, store.len(), "cycle {cycle}");
    }
    let engine = Engine::from_parts(store.clone(), common::tiny_backbone(MODEL_SEED)).unwrap();

    let mut live: BTreeMap<usize, u64> = BTreeMap::new();
    for id in store.snapshot().ids() {
        let p = store.meta(id).unwrap().provenance;
        let prompt = p.prompt.as_deref().unwrap_or_else(|| {
            panic!("cycle {cycle}: expert {id} has no prompt: {p:?}");
        });
        let i = facts
            .iter()
            .position(|f| f.prompt == prompt)
            .unwrap_or_else(|| panic!("cycle {cycle}: expert {id} for a foreign prompt {p:?}"));
        assert_eq!(
            p.answer.as_deref(),
            Some(facts[i].answer.as_str()),
            "cycle {cycle}: expert {id}"
        );
        if let Some(other) = live.insert(i, id) {
            panic!("cycle {cycle}: fact {i} stored twice: experts {other} and {id}");
        }
    }
    assert_eq!(store.len(), live.len() as u64, "cycle {cycle}");
    for (&i, &id) in acked {
        assert_eq!(
            live.get(&i),
            Some(&id),
            "cycle {cycle}: acknowledged fact {i} (expert {id}) is not live"
        );
    }
    for (&i, &id) in &live {
        let a = engine
            .ask(&facts[i].prompt, &AskOptions::default())
            .unwrap();
        assert_eq!(
            a.text, facts[i].answer,
            "cycle {cycle}: fact {i} (expert {id}) not recalled exactly"
        );
        assert!(
            a.selected.iter().any(|&(s, _)| s == id),
            "cycle {cycle}: fact {i} answered without its expert {id}: {:?}",
            a.selected
        );
    }
    (engine, live)
}

#[test]
fn memorize_survives_sigkill() {
    let t0 = Instant::now();
    let cycles = crash::cycles(50);
    let facts = facts();
    let dir = tempfile::tempdir().unwrap();
    drop(common::tiny_engine(dir.path(), MODEL_SEED));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x3E3_0C7A);
    // fact index → expert id of every acknowledged fact not forgotten since.
    let mut acked: BTreeMap<usize, u64> = BTreeMap::new();
    let mut live: BTreeMap<usize, u64> = BTreeMap::new();
    let mut phases: BTreeMap<Phase, usize> = BTreeMap::new();
    let (mut total_acks, mut unacked_commits, mut forgotten, mut fails) = (0, 0, 0, 0);

    for cycle in 1..=cycles {
        let lines = if cycle % 3 == 0 {
            // Aimed at the few milliseconds between the end of training and the
            // acknowledgements.
            let nth = rng.random_range(1..=2);
            let delay = Duration::from_micros(rng.random_range(0..7000));
            run_and_kill_after(dir.path(), cycle, "trained", nth, delay)
        } else {
            crash::run_and_kill(
                CHILD,
                dir.path(),
                cycle,
                Duration::from_secs(30),
                Duration::from_millis(rng.random_range(0..450)),
            )
        };
        let log = parse(&lines);
        let before = live.clone();
        for &(i, id) in &log.sames {
            assert_eq!(
                before.get(&i),
                Some(&id),
                "cycle {cycle}: fact {i} reported unchanged as {id}"
            );
        }
        for &(i, id) in &log.acks {
            assert!(
                !before.contains_key(&i),
                "cycle {cycle}: fact {i} memorized again as {id} although stored"
            );
            acked.insert(i, id);
        }
        assert!(
            log.broken.is_empty(),
            "cycle {cycle}: broken {:?}",
            log.broken
        );
        total_acks += log.acks.len();
        fails += log.fails.len();
        *phases.entry(log.phase.expect("no ready line")).or_default() += 1;

        let (engine, now) = check_reopened(dir.path(), &facts, &acked, cycle);
        // Committed before the kill but never acknowledged: whole (checked above) and
        // acknowledged from now on, as the rerun will report them unchanged.
        for (&i, &id) in &now {
            if let std::collections::btree_map::Entry::Vacant(slot) = acked.entry(i) {
                unacked_commits += 1;
                slot.insert(id);
            }
        }
        live = now;

        // Keep work for the next children: forget some stored facts when little is left.
        if facts.len() - live.len() < 3 * CHUNK {
            let n = rng.random_range(6..=12);
            let stored: Vec<usize> = live.keys().copied().collect();
            for _ in 0..n {
                let i = stored[rng.random_range(0..stored.len())];
                let Some(id) = live.remove(&i) else { continue };
                assert_eq!(engine.forget(&facts[i].prompt).unwrap(), vec![id]);
                acked.remove(&i);
                forgotten += 1;
            }
        }
        drop(engine);
    }

    // The same command, run to completion, does the rest: every fact once.
    let log = parse(&run_to_completion(dir.path(), cycles + 1));
    assert_eq!(log.phase, Some(Phase::Finished));
    for &(i, id) in &log.sames {
        assert_eq!(live.get(&i), Some(&id), "final run: fact {i}");
    }
    for &(i, id) in &log.acks {
        assert!(!live.contains_key(&i), "final run: fact {i} duplicated");
        acked.insert(i, id);
    }
    let (engine, final_live) = check_reopened(dir.path(), &facts, &acked, cycles + 1);
    drop(engine);
    let failed: Vec<usize> = log.fails.iter().map(|(i, _)| *i).collect();
    for i in 0..facts.len() {
        assert!(
            final_live.contains_key(&i) != failed.contains(&i),
            "final run: fact {i} neither stored nor reported failed: {:?}",
            log.fails
        );
    }
    assert!(
        final_live.len() >= facts.len() - 2,
        "the tiny model memorized only {} of {} facts: {:?}",
        final_live.len(),
        facts.len(),
        log.fails
    );

    // And once more: everything unchanged, nothing inserted.
    let log = parse(&run_to_completion(dir.path(), cycles + 2));
    assert!(log.acks.is_empty(), "rerun inserted {:?}", log.acks);
    assert_eq!(log.sames.len(), final_live.len(), "rerun: {log:?}");
    for &(i, id) in &log.sames {
        assert_eq!(final_live.get(&i), Some(&id), "rerun: fact {i}");
    }
    let (_, again) = check_reopened(dir.path(), &facts, &acked, cycles + 2);
    assert_eq!(again, final_live);

    let commit_kills =
        phases.get(&Phase::Commit).unwrap_or(&0) + phases.get(&Phase::IndexSave).unwrap_or(&0);
    assert!(
        total_acks > cycles as usize / 2 && commit_kills > 0,
        "children did too little work to mean anything: {total_acks} acks, {phases:?}"
    );
    eprintln!(
        "memorize_crash: {cycles} SIGKILL cycles in {:.1} s: {total_acks} facts acknowledged, \
         {unacked_commits} committed but unacknowledged (found whole), {fails} failed, \
         {forgotten} forgotten to refill; kills by phase {phases:?} ({commit_kills} between \
         training and acknowledgement); final run stored {}/{} facts once each, rerun unchanged",
        t0.elapsed().as_secs_f64(),
        final_live.len(),
        facts.len()
    );
}
