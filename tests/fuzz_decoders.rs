//! Fuzzed decoders (issue 16): every file format mome reads is fed mutations of a valid
//! file built through the public API, and every call must end in `Ok` or a typed error —
//! no panic, no hang, no allocation out of proportion to the input.
//!
//! Targets (one `#[test]` each; all of them run at once, on their own threads, whichever
//! test starts first, so the default run costs about `MOME_FUZZ_SECS` of wall time):
//!
//! * `shard`: a shard file (header and records) under `Store::open_read_only` and
//!   `Store::open` (on a fresh copy), then every read, `verify`, `stats`, `shard_records`
//!   and (writer) an insert;
//! * `archive`: an exported archive under `check_archive` and `import_archive` into a
//!   fresh store;
//! * `index`: `index/index.json` and its data file (HNSW and flat) under
//!   `saved_index_info`, `tombstone_horizon`, `ExpertIndex::check_saved` and
//!   `ExpertIndex::open` over a read-only store, then a search;
//! * `engine_json`: `engine.json` under `legacy_rule` and `Engine::from_parts`, then an
//!   `ask` on the tiny model;
//! * `gguf`: a tiny GGUF file (header, metadata, tensor table, data) under
//!   `Backbone::from_gguf` and `Llama::from_gguf` (quantized), then one forward pass;
//! * `tokenizer`: the `tokenizer.*` metadata (a tensor-less GGUF) under
//!   `Tokenizer::from_gguf_metadata`, then encoding, decoding and the chat template;
//! * `facts`: a facts JSONL file parsed line by line into `mome::Fact` (as `mome memorize`
//!   reads it; the CLI's `read_facts` lives in the binary crate and is not reachable from
//!   here) and checked by `validate_facts` on the tiny model.
//!
//! Mutations (seeded RNG; the seed is printed, `MOME_FUZZ_SEED` replays one): bit flips,
//! byte overwrites, hostile integers (`0xFFFFFFFF`, `u64::MAX`, `2^31`, …) written over
//! length fields, truncation, extension, splices with another corpus entry, duplicated
//! and deleted ranges, dictionary tokens, hostile numbers in text; and per format,
//! structure-aware ones: checksums repaired (shard header and records, archive header,
//! records and trailer, the index data file's length and CRC in `index.json`) so that
//! mutations get past the checksums into the decoders behind them, JSON values replaced
//! with hostile ones, GGUF metadata values replaced and the file re-serialised. Without
//! coverage instrumentation on the stable toolchain, the outcome (`Ok` or the error's
//! message with numbers and paths stripped) stands in for coverage: an input with an
//! outcome not seen before joins the corpus.
//!
//! Every call runs on a worker thread under `catch_unwind`, with a deadline
//! (`MOME_FUZZ_HANG_SECS`, 10 s), the largest single allocation it made on that thread
//! (at most 256 MiB) and the process's resident set (at most 2 GiB) checked. A failing
//! input is written to `tests/fixtures/fuzz/<target>/<hash>.bin` and printed; every file
//! there is replayed before fuzzing starts. An input that kills the process (an abort)
//! is left in `target/tmp/fuzz-*/inflight.bin`; `tools/fuzz-soak.sh` keeps those too.
//!
//! `MOME_FUZZ_SECS` (default 30) is the fuzzing time per target; 0 replays the fixtures
//! only. `MOME_FUZZ_TARGETS=shard,gguf` runs only those.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value as Json;

use mome::{
    default_store_config, validate_facts, AskOptions, Backbone, Engine, EngineParams, ExpertIndex,
    Fact, IndexParams, KvCache, Llama, Provenance, QueryEncoder, RuleParams, Selector, Store,
    StoreConfig, Tokenizer, WeightFormat, MIN_SHARD_SIZE,
};

// ---------------------------------------------------------------------------------------
// Allocation watch: the largest single allocation a call makes on its worker thread.

/// Largest allocation a call may make (inputs are a few hundred KiB at most).
const MAX_ALLOC: usize = 256 << 20;
/// Resident set the whole process may reach (all targets together).
const MAX_RSS_KIB: u64 = 2 << 20;

struct Watch;

thread_local! {
    /// Index of the target whose call runs on this thread (`usize::MAX`: none).
    static WATCHED: Cell<usize> = const { Cell::new(usize::MAX) };
}

const N_TARGETS: usize = 7;
static LARGEST: [AtomicUsize; N_TARGETS] = [const { AtomicUsize::new(0) }; N_TARGETS];

fn note(size: usize) {
    if size > 1 << 16 {
        let t = WATCHED.try_with(Cell::get).unwrap_or(usize::MAX);
        if let Some(slot) = LARGEST.get(t) {
            slot.fetch_max(size, Ordering::Relaxed);
        }
    }
}

// SAFETY: every method forwards to the system allocator with the caller's arguments
// unchanged; `note` only reads a const-initialised thread-local and updates an atomic
// (it never allocates).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded as is; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Watch = Watch;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// The harness.

/// What a call returns: `Ok(outcome)` or the decoder's typed error, as text.
type Outcome = Result<String, String>;
/// A decoder call over one input; lives on its worker thread.
type Call = Box<dyn FnMut(&[u8]) -> Outcome>;
/// A structure-aware mutator: (rng, input, another corpus entry) → new input.
type Mutator = Box<dyn FnMut(&mut StdRng, &[u8], &[u8]) -> Vec<u8>>;

struct Setup {
    seeds: Vec<Vec<u8>>,
    call: Call,
}

struct Spec {
    name: &'static str,
    id: usize,
    /// Builds the valid inputs and the call, in the worker's temp dir, on its thread.
    setup: fn(&Path) -> Setup,
    /// The mutator, built on the controlling thread from the seeds.
    mutator: fn(&[Vec<u8>]) -> Mutator,
}

const SPECS: [Spec; N_TARGETS] = [
    Spec {
        name: "shard",
        id: 0,
        setup: shard_setup,
        mutator: shard_mutator,
    },
    Spec {
        name: "archive",
        id: 1,
        setup: archive_setup,
        mutator: archive_mutator,
    },
    Spec {
        name: "index",
        id: 2,
        setup: index_setup,
        mutator: index_mutator,
    },
    Spec {
        name: "engine_json",
        id: 3,
        setup: engine_setup,
        mutator: json_mutator,
    },
    Spec {
        name: "gguf",
        id: 4,
        setup: gguf_setup,
        mutator: gguf_mutator,
    },
    Spec {
        name: "tokenizer",
        id: 5,
        setup: tokenizer_setup,
        mutator: tokenizer_mutator,
    },
    Spec {
        name: "facts",
        id: 6,
        setup: facts_setup,
        mutator: facts_mutator,
    },
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn fixture_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target)
}

fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Keeps a failing input as a regression fixture; returns its path.
fn keep(target: &str, input: &[u8]) -> PathBuf {
    let dir = fixture_dir(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{:016x}.bin", fnv64(input)));
    if let Err(e) = std::fs::write(&path, input) {
        eprintln!(
            "fuzz {target}: cannot keep the input at {}: {e}",
            path.display()
        );
    }
    path
}

/// An outcome's class: the message with digits and the work dir stripped, so that
/// "record 3: checksum mismatch (stored 0x…)" and "record 5: …" are the same outcome.
fn signature(outcome: &Outcome, work: &str) -> u64 {
    let (tag, text) = match outcome {
        Ok(t) => ("ok", t),
        Err(t) => ("err", t),
    };
    let text = text.replace(work, "DIR");
    let mut norm = String::with_capacity(text.len().min(120));
    let mut last_digit = false;
    for c in text.chars().take(160) {
        let d = c.is_ascii_hexdigit() && last_digit || c.is_ascii_digit();
        if d {
            if !last_digit {
                norm.push('#');
            }
        } else {
            norm.push(c);
        }
        last_digit = d;
    }
    fnv64(format!("{tag}:{norm}").as_bytes())
}

enum Reply {
    Ready(Vec<Vec<u8>>),
    SetupFailed(String),
    Done { outcome: Outcome, largest: usize },
    Panicked { message: String },
}

/// The first line of an outcome, for messages (errors may carry a backtrace).
fn short(o: &Outcome) -> String {
    let (tag, t) = match o {
        Ok(t) => ("Ok", t),
        Err(t) => ("Err", t),
    };
    let line: String = t.lines().next().unwrap_or("").chars().take(200).collect();
    format!("{tag}({line})")
}

thread_local! {
    /// Where the last panic on this thread happened (recorded by [`quiet_hook`]).
    static PANIC_AT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// On the fuzzing threads a panic is recorded, not printed: the worker reports it with
/// its input (and panics the library catches itself would only be noise). Other threads
/// keep the default hook.
fn quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let fuzzing = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("fuzz-"));
            if fuzzing {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let _ = PANIC_AT.try_with(|p| *p.borrow_mut() = at);
            } else {
                default(info);
            }
        }));
    });
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// What one target's run found.
#[derive(Default)]
struct Report {
    iterations: u64,
    ok: u64,
    errors: u64,
    replayed: usize,
    outcomes: usize,
    corpus: usize,
    seconds: f64,
    failures: Vec<String>,
}

fn run_target(spec: &'static Spec) -> Report {
    let secs = env_u64("MOME_FUZZ_SECS", 30);
    let hang = Duration::from_secs(env_u64("MOME_FUZZ_HANG_SECS", 10));
    let seed = env_u64(
        "MOME_FUZZ_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    ) ^ fnv64(spec.name.as_bytes());
    let tmp_root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::create_dir_all(&tmp_root);
    let work = tempfile::Builder::new()
        .prefix(&format!("fuzz-{}-", spec.name))
        .tempdir_in(&tmp_root)
        .expect("work dir");
    let work_path = work.path().to_path_buf();
    let work_str = work_path.display().to_string();
    let inflight = work_path.join("inflight.bin");
    let mut report = Report::default();

    let (to_worker, inbox) = mpsc::channel::<Vec<u8>>();
    let (outbox, from_worker) = mpsc::channel::<Reply>();
    let worker_dir = work_path.clone();
    let id = spec.id;
    let setup = spec.setup;
    std::thread::Builder::new()
        .name(format!("fuzz-{}", spec.name))
        .stack_size(16 << 20)
        .spawn(move || {
            let built = std::panic::catch_unwind(AssertUnwindSafe(|| setup(&worker_dir)));
            let mut s = match built {
                Ok(s) => s,
                Err(p) => {
                    let _ = outbox.send(Reply::SetupFailed(panic_text(&*p)));
                    return;
                }
            };
            if outbox.send(Reply::Ready(s.seeds.clone())).is_err() {
                return;
            }
            drop(std::mem::take(&mut s.seeds));
            while let Ok(input) = inbox.recv() {
                LARGEST[id].store(0, Ordering::Relaxed);
                WATCHED.with(|w| w.set(id));
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| (s.call)(&input)));
                WATCHED.with(|w| w.set(usize::MAX));
                let largest = LARGEST[id].load(Ordering::Relaxed);
                let reply = match r {
                    Ok(outcome) => Reply::Done { outcome, largest },
                    Err(p) => Reply::Panicked {
                        message: format!(
                            "{} at {}",
                            panic_text(&*p),
                            PANIC_AT.with(|a| a.borrow().clone())
                        ),
                    },
                };
                if outbox.send(reply).is_err() {
                    return;
                }
            }
        })
        .expect("spawn worker");

    let seeds = match from_worker.recv_timeout(Duration::from_secs(600)) {
        Ok(Reply::Ready(seeds)) => seeds,
        Ok(Reply::SetupFailed(m)) => {
            report.failures.push(format!("setup panicked: {m}"));
            return report;
        }
        _ => {
            report.failures.push("setup did not finish".into());
            return report;
        }
    };
    eprintln!(
        "fuzz {}: seed {seed}, {} valid inputs ({} bytes), inputs in flight go to {}",
        spec.name,
        seeds.len(),
        seeds.iter().map(Vec::len).sum::<usize>(),
        inflight.display()
    );

    // One call: `None` when the worker is gone (a hang: stop this target).
    let mut hung = false;
    let call = |input: &[u8], report: &mut Report, origin: &str| -> Option<Outcome> {
        let _ = std::fs::write(&inflight, input);
        let t = Instant::now();
        if to_worker.send(input.to_vec()).is_err() {
            return None;
        }
        let reply = match from_worker.recv_timeout(hang) {
            Ok(r) => r,
            Err(_) => {
                let kept = keep(spec.name, input);
                report.failures.push(format!(
                    "{origin}: no result after {:?} (hang); input kept at {}",
                    t.elapsed(),
                    kept.display()
                ));
                return None;
            }
        };
        report.iterations += 1;
        match reply {
            Reply::Done { outcome, largest } => {
                let rss = rss_kib();
                if largest > MAX_ALLOC || rss > MAX_RSS_KIB {
                    let kept = keep(spec.name, input);
                    report.failures.push(format!(
                        "{origin}: allocated {largest} bytes at once, resident set {rss} KiB \
                         (outcome {}); input kept at {}",
                        short(&outcome),
                        kept.display()
                    ));
                }
                match &outcome {
                    Ok(_) => report.ok += 1,
                    Err(_) => report.errors += 1,
                }
                Some(outcome)
            }
            Reply::Panicked { message } => {
                let kept = keep(spec.name, input);
                report.failures.push(format!(
                    "{origin}: panicked: {message}; input kept at {}",
                    kept.display()
                ));
                Some(Err(format!("panic {message}")))
            }
            _ => None,
        }
    };

    // Regression pass: every kept input first.
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(fixture_dir(spec.name))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    fixtures.retain(|p| p.extension().is_some_and(|e| e == "bin"));
    fixtures.sort();
    for f in &fixtures {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        report.replayed += 1;
        let origin = format!("fixture {}", f.display());
        if call(&bytes, &mut report, &origin).is_none() {
            hung = true;
            break;
        }
    }

    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mutate = (spec.mutator)(&seeds);
    let mut corpus: Vec<Vec<u8>> = seeds.clone();
    let mut seen: HashSet<u64> = HashSet::new();
    for s in &seeds {
        match call(s, &mut report, "valid input") {
            Some(o) => {
                eprintln!("fuzz {}: a valid input gives {}", spec.name, short(&o));
                // The decoders must still take what the library writes: a saved index
                // loads (not rebuilt), a file opens.
                if o.is_err() || o.as_ref().is_ok_and(|t| t.contains("Rebuilt")) {
                    report
                        .failures
                        .push(format!("a valid input is refused: {}", short(&o)));
                }
                seen.insert(signature(&o, &work_str));
            }
            None => {
                hung = true;
                break;
            }
        }
    }
    let deadline = Duration::from_secs(secs);
    while !hung && start.elapsed() < deadline && report.failures.len() < 5 {
        // A valid file a third of the time: most mutants are refused early, and their
        // mutants even earlier.
        let base = if rng.random_bool(0.3) {
            &seeds[rng.random_range(0..seeds.len())]
        } else {
            &corpus[rng.random_range(0..corpus.len())]
        };
        let other = &corpus[rng.random_range(0..corpus.len())];
        let input = mutate(&mut rng, base, other);
        let Some(outcome) = call(&input, &mut report, "mutated input") else {
            hung = true;
            break;
        };
        if seen.insert(signature(&outcome, &work_str)) && input.len() <= 4 << 20 {
            if corpus.len() < 256 {
                corpus.push(input);
            } else {
                let i = rng.random_range(seeds.len()..corpus.len());
                corpus[i] = input;
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.outcomes = seen.len();
    report.corpus = corpus.len();
    drop(to_worker);
    if hung {
        // The worker may still be running in the work dir: leave it be.
        let _ = work.keep();
    }
    report
}

/// A started target: its name and where its report arrives (taken by its test).
type Pending = (&'static str, Mutex<Option<mpsc::Receiver<Report>>>);

/// Runs every selected target at once (on the first test to ask), so the tests' wall
/// time is one target's, not the sum: `cargo test` runs only as many tests at a time as
/// there are CPUs.
fn results() -> &'static Vec<Pending> {
    static ALL: OnceLock<Vec<Pending>> = OnceLock::new();
    ALL.get_or_init(|| {
        SPECS
            .iter()
            .filter(|s| selected(s.name))
            .map(|spec| {
                let (tx, rx) = mpsc::channel();
                quiet_hook();
                std::thread::Builder::new()
                    .name(format!("fuzz-ctl-{}", spec.name))
                    .spawn(move || {
                        let _ = tx.send(run_target(spec));
                    })
                    .expect("spawn target");
                (spec.name, Mutex::new(Some(rx)))
            })
            .collect()
    })
}

/// Whether a target is selected: by `MOME_FUZZ_TARGETS`, else by the test binary's name
/// filters (its free arguments), else all.
fn selected(name: &str) -> bool {
    if let Ok(list) = std::env::var("MOME_FUZZ_TARGETS") {
        return list.split(',').any(|t| t.trim() == name);
    }
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a.starts_with('-') {
            // Options that take a value in the next argument.
            if matches!(
                a.as_str(),
                "--test-threads" | "--skip" | "--logfile" | "--format" | "--color" | "-Z"
            ) {
                args.next();
            }
        } else {
            filters.push(a);
        }
    }
    let test = format!("fuzz_{name}");
    filters.is_empty() || filters.iter().any(|f| test.contains(f.as_str()))
}

fn check(name: &str) {
    if !selected(name) {
        eprintln!("fuzz {name}: not selected");
        return;
    }
    let rx = results()
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, rx)| rx.lock().ok()?.take());
    let report = match rx {
        Some(rx) => rx.recv().expect("target thread"),
        // Not started with the others (the name filter guessed wrong): run it now.
        None => run_target(SPECS.iter().find(|s| s.name == name).expect("spec")),
    };
    eprintln!(
        "fuzz {name}: {} iterations in {:.1} s ({:.0}/s): {} ok, {} typed errors, {} distinct \
         outcomes, corpus {}, {} fixtures replayed, resident set {} MiB",
        report.iterations,
        report.seconds,
        report.iterations as f64 / report.seconds.max(1e-3),
        report.ok,
        report.errors,
        report.outcomes,
        report.corpus,
        report.replayed,
        rss_kib() >> 10
    );
    assert!(
        report.failures.is_empty(),
        "fuzz {name}: {} failure(s):\n{}",
        report.failures.len(),
        report.failures.join("\n")
    );
}

#[test]
fn fuzz_shard() {
    check("shard");
}

#[test]
fn fuzz_archive() {
    check("archive");
}

#[test]
fn fuzz_index() {
    check("index");
}

#[test]
fn fuzz_engine_json() {
    check("engine_json");
}

#[test]
fn fuzz_gguf() {
    check("gguf");
}

#[test]
fn fuzz_tokenizer() {
    check("tokenizer");
}

#[test]
fn fuzz_facts() {
    check("facts");
}

// ---------------------------------------------------------------------------------------
// Generic mutations.

/// Integers that break length and count fields.
const HOSTILE_INTS: [u64; 16] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0xffff_ffff_ffff_ffff,
    4096,
    65_536,
];

/// Numbers written over numbers in text formats.
const HOSTILE_NUMBERS: [&str; 18] = [
    "0",
    "-1",
    "1",
    "2",
    "65536",
    "65537",
    "1024",
    "4294967295",
    "4294967296",
    "2147483648",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1e999",
    "-0.0",
    "0.5",
    "NaN",
];

fn hostile_int(rng: &mut StdRng, len_hint: usize) -> u64 {
    match rng.random_range(0..4) {
        0 => len_hint as u64 + rng.random_range(0..3),
        1 => (len_hint as u64).saturating_sub(rng.random_range(0..3)),
        _ => HOSTILE_INTS[rng.random_range(0..HOSTILE_INTS.len())],
    }
}

/// A position, drawn in `0..hot` most of the time when `hot` is given.
fn pos(rng: &mut StdRng, len: usize, hot: usize) -> usize {
    if len == 0 {
        return 0;
    }
    if hot > 0 && hot < len && rng.random_bool(0.8) {
        rng.random_range(0..hot)
    } else {
        rng.random_range(0..len)
    }
}

/// One to four byte-level mutations.
fn mutate_bytes(
    rng: &mut StdRng,
    input: &[u8],
    other: &[u8],
    dict: &[&[u8]],
    hot: usize,
) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        match rng.random_range(0..12) {
            0 | 1 if len > 0 => {
                let p = pos(rng, len, hot);
                v[p] ^= 1 << rng.random_range(0..8);
            }
            2 if len > 0 => {
                let p = pos(rng, len, hot);
                v[p] = rng.random();
            }
            3 | 4 if len >= 8 => {
                // A hostile integer over a (likely) length field.
                let p = pos(rng, len - 4, hot) & !rng.random_range(0..4usize);
                let x = hostile_int(rng, len);
                if rng.random_bool(0.5) {
                    v[p..p + 4].copy_from_slice(&(x as u32).to_le_bytes());
                } else if p + 8 <= len {
                    v[p..p + 8].copy_from_slice(&x.to_le_bytes());
                }
            }
            5 if len > 0 => v.truncate(rng.random_range(0..len)),
            6 => {
                let n = rng.random_range(1..64);
                if rng.random_bool(0.5) {
                    v.extend((0..n).map(|_| rng.random::<u8>()));
                } else {
                    v.resize(len + n, 0);
                }
            }
            7 if len > 1 => {
                // Duplicate a range.
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..512)).min(len);
                let chunk = v[a..b].to_vec();
                let at = pos(rng, len, hot);
                v.splice(at..at, chunk);
            }
            8 if len > 1 => {
                let a = pos(rng, len, hot);
                let b = (a + rng.random_range(1..256)).min(len);
                v.drain(a..b);
            }
            9 if !other.is_empty() && len > 0 => {
                // Splice: our head, the other's tail.
                let a = rng.random_range(0..len);
                let b = rng.random_range(0..other.len());
                v.truncate(a);
                v.extend_from_slice(&other[b..]);
            }
            10 if !dict.is_empty() => {
                let tok = dict[rng.random_range(0..dict.len())];
                let at = pos(rng, len, hot);
                if rng.random_bool(0.5) && at + tok.len() <= len {
                    v[at..at + tok.len()].copy_from_slice(tok);
                } else {
                    v.splice(at..at, tok.iter().copied());
                }
            }
            _ => replace_number(rng, &mut v),
        }
    }
    v
}

/// Replaces one run of ASCII digits (a number in a text format) by a hostile number.
fn replace_number(rng: &mut StdRng, v: &mut Vec<u8>) {
    let runs: Vec<(usize, usize)> = {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < v.len() {
            if v[i].is_ascii_digit() {
                let s = i;
                while i < v.len() && (v[i].is_ascii_digit() || v[i] == b'.') {
                    i += 1;
                }
                runs.push((s, i));
            } else {
                i += 1;
            }
        }
        runs
    };
    if runs.is_empty() {
        return;
    }
    let (a, b) = runs[rng.random_range(0..runs.len())];
    let n = HOSTILE_NUMBERS[rng.random_range(0..HOSTILE_NUMBERS.len())];
    v.splice(a..b, n.bytes());
}

// ---- JSON ----

fn hostile_json(rng: &mut StdRng) -> Json {
    match rng.random_range(0..20) {
        0 => Json::Null,
        1 => Json::Bool(rng.random()),
        2 => Json::from(-1),
        3 => Json::from(i64::MIN),
        4 => Json::from(u64::MAX),
        5 => Json::from(u32::MAX),
        6 => Json::from(1u64 << 32),
        7 => Json::from(1e308),
        8 => Json::from(0.5),
        9 => Json::String(String::new()),
        10 => Json::String("x".repeat(rng.random_range(1..5000))),
        11 => Json::String("../../outside".into()),
        12 => Json::String(".hidden".into()),
        13 => Json::String("keys.1.usearch".into()),
        14 => Json::String("<|im_end|>\u{0}\u{E000}1 ✓ /".into()),
        15 => Json::Array(vec![]),
        16 => Json::Array((0..rng.random_range(1..300)).map(Json::from).collect()),
        17 => Json::Object(Default::default()),
        18 => Json::from(0),
        _ => Json::from(HOSTILE_INTS[rng.random_range(0..HOSTILE_INTS.len())]),
    }
}

/// Replaces, removes, adds or duplicates one value somewhere in a JSON document.
fn mutate_json_value(rng: &mut StdRng, v: &mut Json, depth: usize) {
    match v {
        Json::Object(map) if !map.is_empty() && depth < 8 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = &keys[rng.random_range(0..keys.len())];
            match rng.random_range(0..6) {
                0 => {
                    map.remove(k);
                }
                1 => {
                    map.insert(format!("{k}_extra"), hostile_json(rng));
                }
                2 => {
                    map.insert(k.clone(), hostile_json(rng));
                }
                _ => {
                    if let Some(inner) = map.get_mut(k) {
                        mutate_json_value(rng, inner, depth + 1);
                    }
                }
            }
        }
        Json::Array(items) if !items.is_empty() && depth < 8 => {
            let i = rng.random_range(0..items.len());
            match rng.random_range(0..5) {
                0 => {
                    items.remove(i);
                }
                1 => {
                    let dup = items[i].clone();
                    let n = rng.random_range(1..50);
                    items.extend(std::iter::repeat_n(dup, n));
                }
                2 => items[i] = hostile_json(rng),
                _ => mutate_json_value(rng, &mut items[i], depth + 1),
            }
        }
        _ => *v = hostile_json(rng),
    }
}

/// A JSON-aware mutation when the text parses, else a byte mutation.
fn mutate_json_text(rng: &mut StdRng, input: &[u8], other: &[u8], dict: &[&[u8]]) -> Vec<u8> {
    if rng.random_bool(0.6) {
        if let Ok(mut v) = serde_json::from_slice::<Json>(input) {
            for _ in 0..rng.random_range(1..=3) {
                mutate_json_value(rng, &mut v, 0);
            }
            return serde_json::to_vec(&v).unwrap_or_default();
        }
    }
    mutate_bytes(rng, input, other, dict, 0)
}

const JSON_DICT: [&[u8]; 12] = [
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"null",
    b"\\u0000",
    b"\\ud800",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"1e999999999",
];

fn json_mutator(_: &[Vec<u8>]) -> Mutator {
    Box::new(|rng, input, other| mutate_json_text(rng, input, other, &JSON_DICT))
}

// ---- bundles: several files in one input ----

fn encode_bundle(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = (parts.len() as u32).to_le_bytes().to_vec();
    for p in parts {
        v.extend_from_slice(&(p.len() as u32).to_le_bytes());
        v.extend_from_slice(p);
    }
    v
}

/// Lenient: missing parts are empty, a length past the end takes what is there.
fn decode_bundle(bytes: &[u8], parts: usize) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new(); parts];
    let mut at = 4usize;
    for slot in out.iter_mut() {
        let Some(len) = bytes.get(at..at + 4) else {
            break;
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        at += 4;
        let end = at.saturating_add(len).min(bytes.len());
        *slot = bytes[at..end].to_vec();
        at = end;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Shared fixtures.

fn small_config() -> StoreConfig {
    StoreConfig::new(16, 8, 2, vec![1, 3]).with_shard_size(MIN_SHARD_SIZE)
}

/// A store with a few experts (rich provenance, usage, one deleted), closed.
fn build_store(dir: &Path, cfg: &StoreConfig, n: u64) {
    let store = Store::create(dir, cfg.clone()).expect("create store");
    let experts = (0..n)
        .map(|s| {
            let mut e = common::expert(cfg, s);
            e.provenance = Provenance::fact(format!("prompt {s} ✓"), format!("answer {s}"))
                .with_training(0.01, 7);
            e
        })
        .collect();
    let ids = store.insert_batch(experts).expect("insert");
    store
        .add_usage(&ids.iter().map(|&id| (id, id % 3)).collect::<Vec<_>>())
        .expect("usage");
    store.delete_batch(&[ids[1]]).expect("delete");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn tiny_backbone() -> Backbone {
    let md: HashMap<String, Value> = common::tiny_tokenizer_metadata().into_iter().collect();
    let tokenizer =
        Tokenizer::from_gguf_metadata(&md, Path::new("tiny.gguf")).expect("tiny tokenizer");
    Backbone {
        model: common::tiny_model(1),
        tokenizer,
    }
}

// ---------------------------------------------------------------------------------------
// Target: shard files.

const SHARD_HEADER: usize = 4096;

/// Re-computes the header's and each record's CRC-32C (each with some probability),
/// so that mutations reach the checks behind the checksums.
fn fix_shard(rng: &mut StdRng, v: &mut [u8]) {
    let rs = mome::RecordLayout::for_config(&small_config()).record_size;
    if v.len() >= 64 && rng.random_bool(0.7) {
        let crc = crc32c::crc32c(&v[0..60]);
        v[60..64].copy_from_slice(&crc.to_le_bytes());
    }
    if rng.random_bool(0.7) {
        let mut at = SHARD_HEADER;
        while at + rs <= v.len() {
            let crc = crc32c::crc32c(&v[at + 8..at + rs]);
            v[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
            at += rs;
        }
    }
}

fn shard_mutator(_: &[Vec<u8>]) -> Mutator {
    Box::new(|rng, input, other| {
        // The header's fields first, the records' headers next.
        let hot = if rng.random_bool(0.5) {
            64
        } else {
            input.len()
        };
        let mut v = mutate_bytes(rng, input, other, &[b"MOMESHRD", b"MREC"], hot);
        if v.len() >= 64 && rng.random_bool(0.3) {
            // A hostile value in one header field: version, header size, shard id,
            // record size, key_dim, d_model, rank, layers, capacity.
            let field = 8 + 4 * rng.random_range(0..9);
            let x = hostile_int(rng, v.len()) as u32;
            v[field..field + 4].copy_from_slice(&x.to_le_bytes());
        }
        fix_shard(rng, &mut v);
        v
    })
}

/// Reads everything a store holds; the outcome says what was found wrong.
fn exercise_store(store: &Store, writer: bool) -> Outcome {
    let mut bad_reads = 0usize;
    for e in store.snapshot().iter() {
        match e {
            Ok(e) => {
                let layout = store.layout();
                let mut sum = e.key().iter().map(|x| x.to_f32()).sum::<f32>();
                for l in 0..layout.n_layers {
                    sum += e.a(l).iter().chain(e.b(l)).map(|x| x.to_f32()).sum::<f32>();
                }
                std::hint::black_box(sum);
            }
            Err(_) => bad_reads += 1,
        }
    }
    for id in 0..store.next_id().min(64) {
        let _ = store.get(id);
        let _ = store.meta(id);
        let _ = store.check_record(id);
        let _ = store.usage(id);
        let _ = store.tombstone(id);
    }
    let report = store.verify().map_err(err)?;
    let _ = store.stats().map_err(err)?;
    for shard in 0..4 {
        let _ = store.shard_records(shard);
    }
    if writer {
        let _ = store.insert(common::expert(store.config(), 99));
        let _ = store.verify();
    }
    Ok(format!(
        "problems {} unreadable {}",
        report.problems.len().min(1),
        bad_reads.min(1)
    ))
}

fn shard_setup(work: &Path) -> Setup {
    let cfg = small_config();
    let tmpl = work.join("store");
    build_store(&tmpl, &cfg, 6);
    let shard = tmpl.join("shards/00000001.shard");
    let seed = std::fs::read(&shard).expect("shard file");
    let pristine = work.join("pristine");
    copy_dir(&tmpl, &pristine);
    let mut n = 0u64;
    let call = move |input: &[u8]| -> Outcome {
        n += 1;
        if n.is_multiple_of(4) {
            // The writer's open (recovery truncates, rolls over, inserts) on a fresh copy.
            let copy = work_copy(&pristine, &pristine.with_extension("rw"));
            std::fs::write(copy.join("shards/00000001.shard"), input).map_err(err)?;
            let store = Store::open(&copy).map_err(err)?;
            exercise_store(&store, true)
        } else {
            std::fs::write(&shard, input).map_err(err)?;
            let store = Store::open_read_only(&tmpl).map_err(err)?;
            exercise_store(&store, false)
        }
    };
    Setup {
        seeds: vec![seed],
        call: Box::new(call),
    }
}

/// A fresh copy of `from` at `to` (an earlier copy removed).
fn work_copy(from: &Path, to: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(to);
    copy_dir(from, to);
    to.to_path_buf()
}

// ---------------------------------------------------------------------------------------
// Target: archives.

/// Parsed archive (lenient): config JSON, record payloads, trailer present.
struct ArchiveParts {
    version: u32,
    config: Vec<u8>,
    records: Vec<Vec<u8>>,
}

fn parse_archive(v: &[u8]) -> Option<ArchiveParts> {
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(v.get(o..o + 4)?.try_into().ok()?)) };
    if v.get(0..8)? != b"MOMEARCH" {
        return None;
    }
    let version = u32_at(8)?;
    let n = u32_at(12)? as usize;
    let config = v.get(16..16 + n)?.to_vec();
    let mut at = 16 + n + 4;
    let mut records = Vec::new();
    while v.get(at..at + 4)? == b"AREC" {
        let m = u32_at(at + 4)? as usize;
        records.push(v.get(at + 8..at + 8 + m)?.to_vec());
        at += 8 + m + 4;
    }
    Some(ArchiveParts {
        version,
        config,
        records,
    })
}

fn write_archive(p: &ArchiveParts) -> Vec<u8> {
    let mut v = b"MOMEARCH".to_vec();
    v.extend_from_slice(&p.version.to_le_bytes());
    v.extend_from_slice(&(p.config.len() as u32).to_le_bytes());
    v.extend_from_slice(&p.config);
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    for r in &p.records {
        v.extend_from_slice(b"AREC");
        v.extend_from_slice(&(r.len() as u32).to_le_bytes());
        v.extend_from_slice(r);
        v.extend_from_slice(&crc32c::crc32c(r).to_le_bytes());
    }
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(b"AEND");
    v.extend_from_slice(&(p.records.len() as u64).to_le_bytes());
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

/// A config at the bounds (`d_model`, `key_dim` 65536, a large rank, many layers) and a
/// record whose length field claims the weights such a config has — up to gigabytes —
/// in a file of a few hundred bytes.
fn claim_big_record(rng: &mut StdRng, p: &ArchiveParts) -> Vec<u8> {
    let Ok(Json::Object(mut cfg)) = serde_json::from_slice::<Json>(&p.config) else {
        return write_archive(p);
    };
    let rank = [1u64, 64, 1024][rng.random_range(0..3)];
    let n_layers = rng.random_range(1..16u64);
    cfg.insert("d_model".into(), Json::from(65_536));
    cfg.insert("key_dim".into(), Json::from(65_536));
    cfg.insert("rank".into(), Json::from(rank));
    cfg.insert(
        "layers".into(),
        Json::from((0..n_layers).collect::<Vec<_>>()),
    );
    cfg.insert("query_layer".into(), Json::from(0));
    let config = serde_json::to_vec(&Json::Object(cfg)).unwrap_or_default();
    let weights = 65_536 * 2 + n_layers * 2 * rank * 65_536 * 2;
    let mut v = write_archive(&ArchiveParts {
        version: p.version,
        config,
        records: vec![],
    });
    v.truncate(v.len() - 16); // the trailer
    v.extend_from_slice(b"AREC");
    v.extend_from_slice(&((weights + 4 + 20).min(u32::MAX as u64) as u32).to_le_bytes());
    v.extend((0..rng.random_range(0..200)).map(|_| rng.random::<u8>()));
    v
}

/// Re-computes every checksum and the trailer's count of a (mutated) archive, as far as
/// its structure can still be followed.
fn fix_archive(v: &mut [u8]) {
    let u32_at = |v: &[u8], o: usize| -> Option<usize> {
        Some(u32::from_le_bytes(v.get(o..o + 4)?.try_into().ok()?) as usize)
    };
    let Some(n) = u32_at(v, 12) else {
        return;
    };
    let hdr = 16usize.saturating_add(n);
    if hdr.saturating_add(4) > v.len() {
        return;
    }
    let crc = crc32c::crc32c(&v[..hdr]);
    v[hdr..hdr + 4].copy_from_slice(&crc.to_le_bytes());
    let mut at = hdr + 4;
    let mut count = 0u64;
    while let Some(tag) = v.get(at..at + 4) {
        if tag == b"AREC" {
            let Some(m) = u32_at(v, at + 4) else {
                return;
            };
            let end = (at + 8).saturating_add(m);
            if end.saturating_add(4) > v.len() {
                return;
            }
            let crc = crc32c::crc32c(&v[at + 8..end]);
            v[end..end + 4].copy_from_slice(&crc.to_le_bytes());
            at = end + 4;
            count += 1;
        } else {
            if tag == b"AEND" && at + 16 <= v.len() {
                let crc = crc32c::crc32c(&v[..at]);
                v[at + 4..at + 12].copy_from_slice(&count.to_le_bytes());
                v[at + 12..at + 16].copy_from_slice(&crc.to_le_bytes());
            }
            return;
        }
    }
}

/// Payload = weights | meta length u32 | meta JSON: mutates the JSON and keeps the
/// length consistent (or not).
fn mutate_record(rng: &mut StdRng, r: &mut Vec<u8>) {
    let weights = mome::RecordLayout::for_config(&small_config()).payload_bytes();
    if r.len() < weights + 4 {
        return;
    }
    let json = mutate_json_text(rng, &r[weights + 4..], &[], &JSON_DICT);
    r.truncate(weights);
    let len = if rng.random_bool(0.9) {
        json.len() as u32
    } else {
        hostile_int(rng, json.len()) as u32
    };
    r.extend_from_slice(&len.to_le_bytes());
    r.extend_from_slice(&json);
    if rng.random_bool(0.3) {
        // A weight set to NaN / inf (0x7e00 / 0x7c00) or a random value.
        let i = rng.random_range(0..weights / 2) * 2;
        let x: u16 = [0x7e00, 0x7c00, 0xfc00, rng.random()][rng.random_range(0..4)];
        r[i..i + 2].copy_from_slice(&x.to_le_bytes());
    }
}

fn archive_mutator(_: &[Vec<u8>]) -> Mutator {
    Box::new(|rng, input, other| {
        if rng.random_bool(0.5) {
            if let Some(mut p) = parse_archive(input) {
                match rng.random_range(0..8) {
                    0 | 1 => p.config = mutate_json_text(rng, &p.config, &[], &JSON_DICT),
                    2 | 3 if !p.records.is_empty() => {
                        let i = rng.random_range(0..p.records.len());
                        mutate_record(rng, &mut p.records[i]);
                    }
                    4 if !p.records.is_empty() => {
                        let i = rng.random_range(0..p.records.len());
                        let dup = p.records[i].clone();
                        p.records.insert(rng.random_range(0..=p.records.len()), dup);
                    }
                    5 if !p.records.is_empty() => {
                        p.records.remove(rng.random_range(0..p.records.len()));
                    }
                    6 => return claim_big_record(rng, &p),
                    _ => p.version = hostile_int(rng, 1) as u32,
                }
                return write_archive(&p);
            }
        }
        let mut v = mutate_bytes(rng, input, other, &[b"AREC", b"AEND", b"MOMEARCH"], 0);
        if rng.random_bool(0.6) {
            fix_archive(&mut v);
        }
        v
    })
}

fn archive_setup(work: &Path) -> Setup {
    let cfg = small_config();
    let src = work.join("src");
    build_store(&src, &cfg, 4);
    let file = work.join("experts.mome");
    {
        let store = Store::open(&src).expect("open source");
        mome::export_archive(&store, &file).expect("export");
    }
    let seed = std::fs::read(&file).expect("archive");
    // Shard size is a storage choice: the destination differs in it.
    let dst = Arc::new(
        Store::create(work.join("dst"), cfg.with_shard_size(MIN_SHARD_SIZE * 2))
            .expect("destination"),
    );
    let index = ExpertIndex::open_with(dst, IndexParams::flat()).expect("index");
    let call = move |input: &[u8]| -> Outcome {
        std::fs::write(&file, input).map_err(err)?;
        let checked = mome::check_archive(&file);
        let imported = mome::import_archive(&index, &file);
        match (checked, imported) {
            (Ok(_), Ok(r)) => Ok(format!("imported {}", r.experts.min(1))),
            (Ok(_), Err(e)) => Err(format!("checked but not imported: {e}")),
            (Err(e), Ok(_)) => Err(format!("imported but check failed: {e}")),
            (Err(e), Err(_)) => Err(err(e)),
        }
    };
    Setup {
        seeds: vec![seed],
        call: Box::new(call),
    }
}

// ---------------------------------------------------------------------------------------
// Target: the saved index (index.json + its data file).

/// Re-computes `file_len` and `file_crc32c` in `index.json` for the data file.
fn fix_index(json: &[u8], data: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Json>(json) {
        Ok(Json::Object(mut m)) => {
            m.insert("file_len".into(), Json::from(data.len() as u64));
            m.insert("file_crc32c".into(), Json::from(crc32c::crc32c(data)));
            serde_json::to_vec(&Json::Object(m)).unwrap_or_default()
        }
        _ => json.to_vec(),
    }
}

fn index_mutator(_: &[Vec<u8>]) -> Mutator {
    Box::new(|rng, input, other| {
        let mut parts = decode_bundle(input, 3);
        let others = decode_bundle(other, 3);
        match rng.random_range(0..5) {
            0 | 1 => parts[0] = mutate_json_text(rng, &parts[0], &others[0], &JSON_DICT),
            2 => {
                let names: [&[u8]; 6] = [
                    b"keys.1.usearch",
                    b"keys.1.flat",
                    b"../index.json",
                    b"",
                    b".",
                    b"index.json",
                ];
                parts[1] = names[rng.random_range(0..names.len())].to_vec();
            }
            _ => {
                // The data file, its header most of all.
                parts[2] = mutate_bytes(rng, &parts[2], &others[2], &[b"MOMEFLAT"], 64);
            }
        }
        if rng.random_bool(0.7) {
            parts[0] = fix_index(&parts[0], &parts[2]);
        }
        encode_bundle(&[&parts[0], &parts[1], &parts[2]])
    })
}

/// The saved index's files as a bundle: `index.json`, the data file's name, its bytes.
fn saved_bundle(store_dir: &Path) -> Vec<u8> {
    let idx = store_dir.join("index");
    let json = std::fs::read(idx.join("index.json")).expect("index.json");
    let meta: Json = serde_json::from_slice(&json).expect("json");
    let name = meta["file"].as_str().expect("file name").to_string();
    let data = std::fs::read(idx.join(&name)).expect("data file");
    encode_bundle(&[&json, name.as_bytes(), &data])
}

fn index_setup(work: &Path) -> Setup {
    let cfg = small_config();
    let dir = work.join("store");
    build_store(&dir, &cfg, 6);
    let mut seeds = Vec::new();
    for params in [IndexParams::default(), IndexParams::flat()] {
        let store = Arc::new(Store::open(&dir).expect("open"));
        let index = ExpertIndex::open_with(store, params).expect("index");
        index.save().expect("save");
        drop(index);
        seeds.push(saved_bundle(&dir));
        std::fs::remove_dir_all(dir.join("index")).expect("rm index");
    }
    let store = Arc::new(Store::open_read_only(&dir).expect("read-only store"));
    let probe: Vec<f32> = common::expert(&cfg, 3)
        .key
        .iter()
        .map(|x| x.to_f32())
        .collect();
    let call = move |input: &[u8]| -> Outcome {
        let parts = decode_bundle(input, 3);
        let idx = dir.join("index");
        let _ = std::fs::remove_dir_all(&idx);
        std::fs::create_dir_all(&idx).map_err(err)?;
        std::fs::write(idx.join("index.json"), &parts[0]).map_err(err)?;
        let name = String::from_utf8_lossy(&parts[1]).to_string();
        let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
        if plain && name != "index.json" {
            std::fs::write(idx.join(&name), &parts[2]).map_err(err)?;
        }
        let info = mome::saved_index_info(&dir);
        let _ = mome::tombstone_horizon(&dir);
        let check = ExpertIndex::check_saved(&store);
        let index = ExpertIndex::open(store.clone()).map_err(err)?;
        let hits = index.search(&probe, 3).map_err(err)?;
        // The outcome names what the checks said, so that new refusals join the corpus.
        Ok(format!(
            "info {} check {} opened {:?} hits {}",
            match &info {
                Ok(i) => format!("{}", i.is_some()),
                Err(e) => e.to_string(),
            },
            match &check {
                Ok(c) => format!(
                    "missing {} unusable {}",
                    c.missing.len().min(1),
                    c.unusable.as_deref().unwrap_or("no")
                ),
                Err(e) => e.to_string(),
            },
            index.opened_from(),
            hits.len().min(1)
        ))
    };
    Setup {
        seeds,
        call: Box::new(call),
    }
}

// ---------------------------------------------------------------------------------------
// Target: engine.json.

const ASK: &str = "What is the secret code of Zorblax?";

fn engine_setup(work: &Path) -> Setup {
    let bb = tiny_backbone();
    let dir = work.join("store");
    let cfg = default_store_config(&bb.model);
    {
        let engine = Engine::open_or_create_with(
            &dir,
            bb.clone(),
            Some(cfg.clone()),
            EngineParams::default(),
        )
        .expect("engine");
        let experts = (0..4u64)
            .map(|s| {
                let mut e = common::expert(&cfg, s);
                e.provenance = if s == 0 {
                    Provenance::fact(ASK, "48213")
                } else {
                    Provenance::fact(format!("What is the colour of planet Q{s}?"), "blue")
                };
                e
            })
            .collect();
        engine.index().insert_batch(experts).expect("insert");
    }
    let file = dir.join(mome::ENGINE_FILE);
    let seed = std::fs::read(&file).expect("engine.json");
    let store = Arc::new(Store::open(&dir).expect("reopen"));
    let call = move |input: &[u8]| -> Outcome {
        std::fs::write(&file, input).map_err(err)?;
        let legacy = mome::legacy_rule(&dir).map_err(err)?;
        let engine = Engine::from_parts(store.clone(), bb.clone()).map_err(err)?;
        let answer = engine
            .ask(
                ASK,
                &AskOptions {
                    max_tokens: 2,
                    use_experts: true,
                },
            )
            .map_err(err)?;
        Ok(format!(
            "legacy {legacy} selected {} candidates {}",
            answer.selected.len().min(1),
            answer.candidates.len().min(1)
        ))
    };
    Setup {
        seeds: vec![seed],
        call: Box::new(call),
    }
}

// ---------------------------------------------------------------------------------------
// Target: GGUF files.

/// Metadata keys the loaders read.
const GGUF_KEYS: [&str; 22] = [
    "general.architecture",
    "general.alignment",
    "llama.embedding_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.feed_forward_length",
    "llama.block_count",
    "llama.context_length",
    "llama.vocab_size",
    "llama.rope.freq_base",
    "llama.rope.dimension_count",
    "llama.rope.scaling.type",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.expert_count",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.chat_template",
];

fn hostile_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..22) {
        0 => Value::U32(0),
        1 => Value::U32(1),
        2 => Value::U32(u32::MAX),
        3 => Value::U32(0x8000_0000),
        4 => Value::U32(rng.random_range(2..100_000)),
        5 => Value::U64(u64::MAX),
        6 => Value::U64(1 << 32),
        7 => Value::I32(-1),
        8 => Value::I32(i32::MIN),
        9 => Value::F32(f32::NAN),
        10 => Value::F32(f32::INFINITY),
        11 => Value::F32(0.0),
        12 => Value::F32(-1.0),
        13 => Value::F64(1e300),
        14 => Value::String(String::new()),
        15 => Value::String("llama".into()),
        16 => Value::String("gpt2".into()),
        17 => Value::Array(vec![]),
        18 => Value::Array(vec![Value::U32(1), Value::String("a b".into())]),
        19 => Value::Bool(true),
        20 => Value::U8(rng.random()),
        _ => Value::U16(rng.random_range(0..3)),
    }
}

/// A GGUF file split into what `gguf_file::write` takes.
struct GgufParts {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, QTensor)>,
}

/// candle's GGUF reader, with a panic as `None` (the mutators parse mutated files).
fn read_content(bytes: &[u8]) -> Option<gguf_file::Content> {
    std::panic::catch_unwind(|| gguf_file::Content::read(&mut Cursor::new(bytes)).ok())
        .ok()
        .flatten()
}

fn parse_gguf(bytes: &[u8]) -> Option<GgufParts> {
    std::panic::catch_unwind(|| parse_gguf_inner(bytes))
        .ok()
        .flatten()
}

fn parse_gguf_inner(bytes: &[u8]) -> Option<GgufParts> {
    let mut r = Cursor::new(bytes);
    let content = read_content(bytes)?;
    let mut metadata: Vec<(String, Value)> = content.metadata.clone().into_iter().collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names.sort();
    let tensors = names
        .into_iter()
        .map(|n| {
            let t = content.tensor(&mut r, &n, &Device::Cpu).ok()?;
            Some((n, t))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(GgufParts { metadata, tensors })
}

fn write_gguf(metadata: &[(String, Value)], tensors: &[(String, QTensor)]) -> Vec<u8> {
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    match gguf_file::write(&mut out, &md, &ts) {
        Ok(()) => out.into_inner(),
        Err(_) => Vec::new(),
    }
}

/// Header length (metadata and tensor table) of a GGUF file, when it parses.
fn gguf_header_len(bytes: &[u8]) -> usize {
    read_content(bytes).map_or(0, |c| c.tensor_data_offset as usize)
}

/// Replaces, removes or re-types metadata values (structured), the loaders' keys most.
fn mutate_metadata(rng: &mut StdRng, md: &mut Vec<(String, Value)>) {
    for _ in 0..rng.random_range(1..=3) {
        match rng.random_range(0..6) {
            0 if !md.is_empty() => {
                md.remove(rng.random_range(0..md.len()));
            }
            1 if !md.is_empty() => {
                let i = rng.random_range(0..md.len());
                md[i].1 = hostile_value(rng);
            }
            _ => {
                let key = GGUF_KEYS[rng.random_range(0..GGUF_KEYS.len())].to_string();
                let v = hostile_value(rng);
                md.retain(|(k, _)| *k != key);
                md.push((key, v));
            }
        }
    }
}

const GGUF_DICT: [&[u8]; 4] = [b"GGUF", b"llama", b"gpt2", b"<|im_end|>"];

fn gguf_mutator(seeds: &[Vec<u8>]) -> Mutator {
    let parts = parse_gguf(&seeds[0]).expect("seed GGUF parses");
    Box::new(move |rng, input, other| {
        if rng.random_bool(0.4) {
            let mut metadata = parts.metadata.clone();
            mutate_metadata(rng, &mut metadata);
            let v = write_gguf(&metadata, &parts.tensors);
            if !v.is_empty() {
                return v;
            }
        }
        let hot = gguf_header_len(input).max(64);
        mutate_bytes(rng, input, other, &GGUF_DICT, hot)
    })
}

fn gguf_setup(work: &Path) -> Setup {
    let path = work.join("tiny.gguf");
    common::tiny_model(1)
        .save_gguf(&path, &common::tiny_tokenizer_metadata())
        .expect("save gguf");
    let seed = std::fs::read(&path).expect("gguf");
    let mut n = 0u64;
    let call = move |input: &[u8]| -> Outcome {
        n += 1;
        std::fs::write(&path, input).map_err(err)?;
        if n.is_multiple_of(4) {
            let q = Llama::from_gguf(&path, WeightFormat::Quantized, &Device::Cpu).map_err(err)?;
            let mut cache = KvCache::new(&q);
            q.forward(&[1, 2], &mut cache, None).map_err(err)?;
            return Ok("quantized".into());
        }
        let bb = Backbone::from_gguf(&path, WeightFormat::F32, &Device::Cpu).map_err(err)?;
        let ids = bb.tokenizer.encode_user_prompt("Hi there").map_err(err)?;
        let mut cache = KvCache::new(&bb.model);
        let end = ids.len().min(8);
        bb.model
            .forward(&ids[..end], &mut cache, None)
            .map_err(err)?;
        Ok("loaded".into())
    };
    Setup {
        seeds: vec![seed],
        call: Box::new(call),
    }
}

// ---------------------------------------------------------------------------------------
// Target: tokenizer metadata.

const JINJA_SNIPPETS: [&str; 14] = [
    "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}x{% endfor %}{% endfor %}{% endfor %}",
    "{% for a in range(100000) %}{{ 'xxxxxxxxxxxxxxxx' * 1000000 }}{% endfor %}",
    "{{ raise_exception('no') }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{ messages[99999]['content'] }}",
    "{{ bos_token }}{{ eos_token }}",
    "{% if %}",
    "{{ 'x' * 100000000 }}",
    "{% for m in messages %}{{ m.content|upper }}{% endfor %}",
    "{{ 1/0 }}",
    "<|im_start|>system\\n",
    "<|im_end|>",
    "{%- set x = namespace(a=1) -%}{{ x.b.c }}",
    "{{ (messages * 100000)|length }}",
];

fn mutate_tokenizer_md(rng: &mut StdRng, md: &mut Vec<(String, Value)>) {
    let i = rng.random_range(0..md.len());
    let key = md[i].0.clone();
    let v = &mut md[i].1;
    match (key.as_str(), v) {
        ("tokenizer.chat_template", Value::String(t)) => {
            let snippet = JINJA_SNIPPETS[rng.random_range(0..JINJA_SNIPPETS.len())];
            let mut at = rng.random_range(0..=t.len());
            while !t.is_char_boundary(at) {
                at -= 1;
            }
            if rng.random_bool(0.3) {
                *t = snippet.to_string();
            } else {
                t.insert_str(at, snippet);
            }
        }
        (_, Value::Array(items)) if !items.is_empty() => {
            let j = rng.random_range(0..items.len());
            match rng.random_range(0..6) {
                0 => {
                    items.remove(j);
                }
                1 => {
                    let dup = items[j].clone();
                    items.push(dup);
                }
                2 => items[j] = hostile_value(rng),
                3 => items[j] = Value::String(String::new()),
                4 => {
                    items[j] = Value::String(
                        [
                            "<|im_end|>",
                            "Ġ",
                            "a",
                            "Ġ Ġ",
                            "a b c",
                            "\u{0}",
                            &"y".repeat(5000),
                        ][rng.random_range(0..7)]
                        .to_string(),
                    )
                }
                _ => items[j] = Value::I32(rng.random_range(-2..6)),
            }
        }
        (_, v) => *v = hostile_value(rng),
    }
    if rng.random_bool(0.2) {
        mutate_metadata(rng, md);
    }
}

fn tokenizer_mutator(_: &[Vec<u8>]) -> Mutator {
    Box::new(|rng, input, other| {
        if rng.random_bool(0.6) {
            if let Some(mut p) = parse_gguf(input) {
                if !p.metadata.is_empty() {
                    mutate_tokenizer_md(rng, &mut p.metadata);
                    let v = write_gguf(&p.metadata, &p.tensors);
                    if !v.is_empty() {
                        return v;
                    }
                }
            }
        }
        mutate_bytes(rng, input, other, &GGUF_DICT, 0)
    })
}

fn tokenizer_setup(work: &Path) -> Setup {
    let md = common::tiny_tokenizer_metadata();
    let seed = write_gguf(&md, &[]);
    let path = work.join("tokenizer.gguf");
    // The bounded rendering of the chat template still renders SmolLM2's template (the
    // tiny one is it, with a shorter system prompt) exactly as ChatML.
    let md_map: HashMap<String, Value> = md.into_iter().collect();
    let tok = Tokenizer::from_gguf_metadata(&md_map, &path).expect("tiny tokenizer");
    let msgs = [mome::ChatMessage::user("Hi <|im_end|> there")];
    assert_eq!(tok.chat_text(&msgs, true), tok.chatml_text(&msgs, true));
    assert_eq!(
        tok.encode_chat(&msgs, true).expect("encode"),
        tok.encode_chatml(&msgs, true).expect("encode")
    );
    assert!(tok.chat_template().is_some() && tok.default_system_prompt().is_some());
    let call = move |input: &[u8]| -> Outcome {
        // candle's own reader is not the target here: a file it cannot read is skipped.
        let content = read_content(input).ok_or("not a GGUF file candle reads")?;
        let tok = Tokenizer::from_gguf_metadata(&content.metadata, &path).map_err(err)?;
        let text = "Hello <|im_end|> wörld 123 \u{E000}1 the in an";
        let ids = tok.encode(text).map_err(err)?;
        let _ = tok.encode_with_special_tokens(text);
        let v = tok.vocab_size() as u32;
        for probe in [
            ids.clone(),
            vec![0, 1, 2],
            vec![v.saturating_sub(1)],
            vec![v],
            vec![u32::MAX],
        ] {
            let _ = tok.decode(&probe, true);
            let _ = tok.decode(&probe, false);
        }
        let msgs = [
            mome::ChatMessage::system("S <|im_start|>"),
            mome::ChatMessage::user("What is the code of Zorblax?"),
            mome::ChatMessage::assistant("48213"),
        ];
        let _ = tok.chat_text(&msgs, true);
        let _ = tok.chat_text(&[], false);
        let _ = tok.encode_chat(&msgs, true);
        let _ = tok.encode_chatml(&msgs, false);
        let prompt = tok.encode_user_prompt("What is 2+2?");
        let _ = tok.stop_tokens();
        let _ = tok.default_system_prompt();
        Ok(format!(
            "ids {} prompt {}",
            ids.len().min(1),
            prompt.is_ok()
        ))
    };
    Setup {
        seeds: vec![seed],
        call: Box::new(call),
    }
}

// ---------------------------------------------------------------------------------------
// Target: facts JSONL.

const FACTS: &str = r#"{"prompt": "What is the secret code of Zorblax?", "answer": "48213"}
{"prompt": "What is the capital of Veltria?", "answer": "Osmund"}

{"prompt": "Who painted the Grey Harbour?", "answer": "Ilse Varn", "note": "extra fields are ignored"}
{"prompt": "What colour is planet Q7?", "answer": "blue"}
"#;

const FACT_DICT: [&[u8]; 10] = [
    b"\n",
    b"\r\n",
    b"<|im_end|>",
    b"<|im_start|>",
    b"\\u0000",
    b"\\ud800",
    b"\xff\xfe",
    b"   ",
    b"{\"prompt\": \"\", \"answer\": \"x\"}\n",
    b"{\"prompt\": \"What is the secret code of Zorblax?\", \"answer\": \"1\"}\n",
];

fn facts_mutator(_: &[Vec<u8>]) -> Mutator {
    Box::new(|rng, input, other| {
        let text = String::from_utf8_lossy(input);
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        if rng.random_bool(0.5) && !lines.is_empty() {
            let i = rng.random_range(0..lines.len());
            match rng.random_range(0..4) {
                0 => {
                    let dup = lines[i].clone();
                    lines.insert(rng.random_range(0..=lines.len()), dup);
                }
                1 => {
                    lines.remove(i);
                }
                2 => {
                    // A long prompt: past the model's context.
                    let long = serde_json::json!({
                        "prompt": format!("What is {}?", "the colour of ".repeat(rng.random_range(1..400))),
                        "answer": "x".repeat(rng.random_range(1..600)),
                    });
                    lines[i] = long.to_string();
                }
                _ => {
                    let m = mutate_json_text(rng, lines[i].as_bytes(), &[], &JSON_DICT);
                    lines[i] = String::from_utf8_lossy(&m).replace('\n', " ");
                }
            }
            let mut out = lines.join("\n").into_bytes();
            out.push(b'\n');
            return out;
        }
        mutate_bytes(rng, input, other, &FACT_DICT, 0)
    })
}

fn facts_setup(_work: &Path) -> Setup {
    let bb = tiny_backbone();
    let cfg = default_store_config(&bb.model);
    let encoder = QueryEncoder::new(&bb, cfg.query_layer as usize).expect("encoder");
    let selector = Selector::new(encoder, RuleParams::default(), 32).expect("selector");
    let call = move |input: &[u8]| -> Outcome {
        // As `mome memorize` reads a facts file: UTF-8, one object a line, blank lines
        // skipped, every bad line reported.
        let text = std::str::from_utf8(input).map_err(err)?;
        let mut facts = Vec::new();
        let mut problems = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Fact>(line) {
                Ok(f) => facts.push(f),
                Err(e) => {
                    problems.insert(i + 1, e.to_string());
                }
            }
        }
        if facts.is_empty() {
            return Err(format!("no facts; {} bad lines", problems.len()));
        }
        let checked = validate_facts(&bb, &selector, &facts).map_err(err)?;
        Ok(format!(
            "valid {} bad lines {}",
            checked.len().min(1),
            problems.len().min(1)
        ))
    };
    Setup {
        seeds: vec![FACTS.as_bytes().to_vec()],
        call: Box::new(call),
    }
}
