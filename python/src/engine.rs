//! `mome.Engine`: the Rust [`mome::Engine`] behind a lock, driven from Python.
//!
//! Every method releases the GIL (`Python::detach`) before it takes the engine's lock
//! and does its work, so other Python threads run meanwhile and a thread waiting for
//! the lock never holds the GIL (no lock-order deadlock). `ask`, `search` and the
//! inspection methods share the lock; `memorize` holds it alone (it needs `&mut`).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use candle_core::Device;
use half::f16;
use mome::{
    match_fact, AskOptions, Backbone, CompactionPolicy, Engine as RustEngine, EngineParams,
    ExpertIndex, Fact, MemorizeEvent, Store, StoreDir, TuneOptions, WeightFormat,
};
use parking_lot::{Mutex, RwLock};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use serde_json::{json, Value};

use crate::errors::{invalid, Fail, Res};
use crate::stream::{AskStream, Busy};
use crate::types::{json_to_py, Answer, Expert, FactOutcome, MemorizeReport, SearchHit};

/// Backbones loaded by this process, by canonical model path. Loading dequantizes the
/// GGUF (seconds); engines over several stores, or reopened, share one copy (candle
/// tensors are reference-counted, so a clone shares the weights).
static MODELS: OnceLock<Mutex<Vec<(PathBuf, Backbone)>>> = OnceLock::new();

fn load_backbone(model: Option<&Path>) -> Res<(PathBuf, Backbone)> {
    let path = mome::locate_model(model)?;
    let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    let mut cache = MODELS.get_or_init(Default::default).lock();
    if let Some((_, b)) = cache.iter().find(|(p, _)| *p == key) {
        return Ok((key, b.clone()));
    }
    let b = Backbone::from_gguf(&path, WeightFormat::F32, &Device::Cpu)?;
    cache.push((key.clone(), b.clone()));
    Ok((key, b))
}

/// Forgets the backbones this process loaded (an open engine keeps its own).
#[pyfunction]
pub fn clear_model_cache(py: Python<'_>) {
    py.detach(|| MODELS.get_or_init(Default::default).lock().clear());
}

fn check_device(device: Option<&str>) -> PyResult<()> {
    match device {
        None | Some("cpu") => Ok(()),
        Some(d) => Err(PyValueError::new_err(format!(
            "device: {d:?} is not supported; the engine runs on \"cpu\""
        ))),
    }
}

/// A non-negative int argument (not a bool), naming the argument when it is not one.
fn arg_u64(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    if obj.is_instance_of::<pyo3::types::PyBool>() || !obj.is_instance_of::<pyo3::types::PyInt>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, not {}",
            obj.get_type().name()?
        )));
    }
    let v: i128 = obj.extract()?;
    u64::try_from(v).map_err(|_| PyValueError::new_err(format!("{name} must be >= 0, got {v}")))
}

/// An int argument in `lo..=hi`.
fn arg_range(v: i64, name: &str, lo: i64, hi: i64) -> PyResult<usize> {
    if v < lo || v > hi {
        return Err(PyValueError::new_err(format!(
            "{name} must lie in {lo}..={hi}, got {v}"
        )));
    }
    Ok(v as usize)
}

/// One fact from a `{"prompt", "answer"}` mapping or a `(prompt, answer)` pair.
fn extract_fact(item: &Bound<'_, PyAny>, i: usize) -> PyResult<Fact> {
    let text = |v: Bound<'_, PyAny>, what: &str| -> PyResult<String> {
        if let Ok(s) = v.cast::<PyString>() {
            return Ok(s.to_str()?.to_owned());
        }
        Err(PyTypeError::new_err(format!(
            "facts[{i}]{what} must be a str, not {}",
            v.get_type().name()?
        )))
    };
    if let Ok(d) = item.cast::<PyDict>() {
        let get = |k: &str| -> PyResult<Bound<'_, PyAny>> {
            d.get_item(k)?
                .ok_or_else(|| PyValueError::new_err(format!("facts[{i}] has no {k:?} key")))
        };
        return Ok(Fact::new(
            text(get("prompt")?, "[\"prompt\"]")?,
            text(get("answer")?, "[\"answer\"]")?,
        ));
    }
    if item.is_instance_of::<PyTuple>() || item.is_instance_of::<PyList>() {
        let n = item.len()?;
        if n != 2 {
            return Err(PyValueError::new_err(format!(
                "facts[{i}] must be a (prompt, answer) pair, got {n} items"
            )));
        }
        return Ok(Fact::new(
            text(item.get_item(0)?, "[0]")?,
            text(item.get_item(1)?, "[1]")?,
        ));
    }
    Err(PyTypeError::new_err(format!(
        "facts[{i}] must be a {{\"prompt\", \"answer\"}} dict or a (prompt, answer) tuple, not {}",
        item.get_type().name()?
    )))
}

fn extract_facts(facts: &Bound<'_, PyAny>) -> PyResult<Vec<Fact>> {
    if facts.is_instance_of::<PyString>() || facts.is_instance_of::<PyDict>() {
        return Err(PyTypeError::new_err(
            "facts must be an iterable of {\"prompt\", \"answer\"} dicts or (prompt, answer) tuples",
        ));
    }
    let iter = facts.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "facts must be an iterable of facts, not {}",
            facts
                .get_type()
                .name()
                .map_or_else(|_| "?".to_string(), |n| n.to_string())
        ))
    })?;
    let mut out = Vec::new();
    for (i, item) in iter.enumerate() {
        out.push(extract_fact(&item?, i)?);
    }
    Ok(out)
}

/// How `memorize` reports progress.
enum Progress {
    Silent,
    Bar(indicatif::ProgressBar),
    Call(Py<PyAny>),
}

impl Progress {
    fn from_arg(arg: Option<&Bound<'_, PyAny>>, total: usize) -> PyResult<Self> {
        let Some(arg) = arg else {
            return Ok(Self::Silent);
        };
        if arg.is_none() {
            return Ok(Self::Silent);
        }
        if let Ok(b) = arg.cast::<pyo3::types::PyBool>() {
            if !b.is_true() {
                return Ok(Self::Silent);
            }
            // indicatif draws only when stderr is a terminal.
            let pb = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
            ) {
                pb.set_style(style);
            }
            pb.set_prefix("memorize");
            return Ok(Self::Bar(pb));
        }
        if arg.is_callable() {
            return Ok(Self::Call(arg.clone().unbind()));
        }
        Err(PyTypeError::new_err(format!(
            "progress must be None, a bool or a callable, not {}",
            arg.get_type().name()?
        )))
    }
}

/// The open engine and the facts about it that outlive `close`.
#[pyclass(module = "mome", name = "Engine", frozen)]
pub struct PyEngine {
    /// Shared with the generation threads of `ask_stream`.
    inner: Arc<RwLock<Option<RustEngine>>>,
    /// The thread running `memorize` (its progress callback must not re-enter); shared
    /// with the streams, whose consumer may be that callback.
    busy: Busy,
    path: PathBuf,
    model: PathBuf,
}

impl PyEngine {
    fn new(path: PathBuf, model: PathBuf, engine: RustEngine) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Some(engine))),
            busy: Busy::default(),
            path,
            model,
        }
    }

    fn check_reentry(&self) -> Res<()> {
        if *self.busy.lock() == Some(std::thread::current().id()) {
            return Err(Fail::Busy);
        }
        Ok(())
    }

    /// Runs `f` on the engine without the GIL, under the shared lock.
    fn with<T, F>(&self, py: Python<'_>, f: F) -> PyResult<T>
    where
        T: Send,
        F: FnOnce(&RustEngine) -> Res<T> + Send,
    {
        self.check_reentry()?;
        py.detach(|| {
            let g = self.inner.read();
            let e = g.as_ref().ok_or(Fail::Closed)?;
            f(e)
        })
        .map_err(PyErr::from)
    }

    fn open_with(
        py: Python<'_>,
        path: PathBuf,
        model: Option<PathBuf>,
        mode: OpenMode,
    ) -> PyResult<Self> {
        let (mpath, engine) = py.detach(|| -> Res<_> {
            match mode {
                OpenMode::Existing { read_only } => {
                    // The store first: a locked or missing store fails before the
                    // model load.
                    let store = if read_only {
                        Store::open_read_only(&path)?
                    } else {
                        Store::open(&path)?
                    };
                    let (mp, backbone) = load_backbone(model.as_deref())?;
                    Ok((mp, RustEngine::from_parts(Arc::new(store), backbone)?))
                }
                OpenMode::Create(args, must_be_new) => {
                    if must_be_new && StoreDir::new(&path).holds_store() {
                        return Err(Fail::Mome(
                            mome::StoreError::AlreadyExists { path: path.clone() }.into(),
                        ));
                    }
                    let (mp, backbone) = load_backbone(model.as_deref())?;
                    let mut cfg = mome::default_store_config(&backbone.model);
                    let mut params = EngineParams::default();
                    if let Some(a) = args {
                        if let Some(r) = a.rank {
                            cfg.rank = r;
                        }
                        if let Some(l) = a.layers {
                            if let Some(&first) = l.first() {
                                cfg.query_layer = cfg.query_layer.min(first);
                            }
                            cfg.layers = l;
                        }
                        if let Some(s) = a.shard_size {
                            cfg.shard_size = s;
                        }
                        if let Some(k) = a.k_candidates {
                            params.k_candidates = k;
                        }
                    }
                    let e = RustEngine::open_or_create_with(&path, backbone, Some(cfg), params)?;
                    Ok((mp, e))
                }
            }
        })?;
        Ok(Self::new(path, mpath, engine))
    }
}

/// How `open_with` finds the store.
enum OpenMode {
    /// An existing store, as its writer or as a reader.
    Existing { read_only: bool },
    /// A store created with these options if the directory holds none (`true`: the
    /// directory must hold none).
    Create(Option<CreateArgs>, bool),
}

/// Options of a new store (`Engine.create`).
struct CreateArgs {
    rank: Option<u32>,
    layers: Option<Vec<u32>>,
    shard_size: Option<u64>,
    k_candidates: Option<usize>,
}

fn fact_json(engine: &RustEngine, id: u64, score: f32) -> Value {
    let (prompt, answer) = engine
        .store()
        .meta(id)
        .map(|m| (m.provenance.prompt, m.provenance.answer))
        .unwrap_or_default();
    json!({"id": id, "score": score, "prompt": prompt, "answer": answer})
}

fn f16_bytes(v: &[f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect()
}

/// A read-only NumPy float16 array over a copy of `data`.
fn ndarray<'py>(
    py: Python<'py>,
    np: &Bound<'py, PyModule>,
    data: &[u8],
    shape: &[usize],
) -> PyResult<Py<PyAny>> {
    let bytes = PyBytes::new(py, data);
    let arr = np.getattr("frombuffer")?.call1((bytes, "<f2"))?;
    let shape = PyTuple::new(py, shape)?;
    Ok(arr.call_method1("reshape", (shape,))?.unbind())
}

/// Problems found by `verify`, in the CLI's JSON shape.
fn problem(id: Option<u64>, shard: Option<u32>, offset: Option<u64>, detail: String) -> Value {
    json!({"id": id, "shard": shard, "offset": offset, "detail": detail})
}

#[pymethods]
impl PyEngine {
    /// Opens an existing store with the model (`model`, else `$MOME_MODEL`, else the
    /// data directory). Raises `NotAStoreError` for a directory without a store,
    /// `LockedError` when another process holds it, `ConfigMismatchError` for a store
    /// built for another backbone or selection rule.
    #[staticmethod]
    #[pyo3(signature = (path, model=None, device=None))]
    fn open(
        py: Python<'_>,
        path: PathBuf,
        model: Option<PathBuf>,
        device: Option<&str>,
    ) -> PyResult<Self> {
        check_device(device)?;
        Self::open_with(py, path, model, OpenMode::Existing { read_only: false })
    }

    /// Opens a store for reading while another process (or another engine in this
    /// one) may be writing it: no lock is taken and none of the writer's files is
    /// changed. The engine sees the store as of its last `refresh()`; `memorize`,
    /// `forget`, `delete`, `compact` and `import_` raise `ReadOnlyError`.
    #[staticmethod]
    #[pyo3(signature = (path, model=None, device=None))]
    fn open_read_only(
        py: Python<'_>,
        path: PathBuf,
        model: Option<PathBuf>,
        device: Option<&str>,
    ) -> PyResult<Self> {
        check_device(device)?;
        Self::open_with(py, path, model, OpenMode::Existing { read_only: true })
    }

    /// Catches a read-only engine up with every commit its writer made since it was
    /// opened or last refreshed; returns whether anything changed (always `False` for
    /// the writer's own engine, which is always current). A question asked meanwhile
    /// from another thread sees the store before or after, never a mix.
    fn refresh(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, |e| Ok(e.refresh()?))
    }

    /// Whether the engine was opened with `open_read_only`.
    #[getter]
    fn read_only(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, |e| Ok(e.store().is_read_only()))
    }

    /// Creates a new store for the model and opens it. Defaults are the engine's
    /// (`rank` 8, the last two layers, K 32); `AlreadyExistsError` if `path` holds
    /// a store or other files.
    #[staticmethod]
    #[pyo3(signature = (path, model=None, device=None, *, rank=None, layers=None, shard_size=None, k_candidates=None))]
    #[allow(clippy::too_many_arguments)]
    fn create(
        py: Python<'_>,
        path: PathBuf,
        model: Option<PathBuf>,
        device: Option<&str>,
        rank: Option<u32>,
        layers: Option<Vec<u32>>,
        shard_size: Option<u64>,
        k_candidates: Option<usize>,
    ) -> PyResult<Self> {
        check_device(device)?;
        let args = CreateArgs {
            rank,
            layers,
            shard_size,
            k_candidates,
        };
        Self::open_with(py, path, model, OpenMode::Create(Some(args), true))
    }

    /// Opens the store, or creates it with the engine's defaults if `path` holds none
    /// (what `mome memorize` does).
    #[staticmethod]
    #[pyo3(signature = (path, model=None, device=None))]
    fn open_or_create(
        py: Python<'_>,
        path: PathBuf,
        model: Option<PathBuf>,
        device: Option<&str>,
    ) -> PyResult<Self> {
        check_device(device)?;
        Self::open_with(py, path, model, OpenMode::Create(None, false))
    }

    /// Memorizes facts: each an `{"prompt", "answer"}` dict or a `(prompt, answer)`
    /// tuple. All are checked first (a bad one raises and nothing is stored); then
    /// `batch_size` facts at a time are trained, verified through inference and the
    /// exact ones committed. `progress`: `True` for a terminal bar, or a callable given
    /// one dict per event (`{"event": "step", "step", "converged", "rows"}` or
    /// `{"event": "done", "done", "total"}`).
    ///
    /// A `KeyboardInterrupt` (or an exception of `progress`) stops the call after the
    /// batch in flight is committed: the exception is re-raised with the partial
    /// report as its `report` attribute. Every commit is whole.
    #[pyo3(signature = (facts, *, batch_size=10, max_steps=120, progress=None))]
    fn memorize(
        &self,
        py: Python<'_>,
        facts: &Bound<'_, PyAny>,
        batch_size: i64,
        max_steps: i64,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<MemorizeReport> {
        let facts = extract_facts(facts)?;
        if facts.is_empty() {
            return Err(invalid(py, "facts", "no facts given"));
        }
        let batch_size = arg_range(batch_size, "batch_size", 1, 4096)?;
        let max_steps = arg_range(max_steps, "max_steps", 1, 1_000_000)?;
        let progress = Progress::from_arg(progress, facts.len())?;
        self.check_reentry()?;
        let opts = TuneOptions {
            batch_size,
            max_steps,
            ..TuneOptions::default()
        };
        let start = Instant::now();
        let run = py.detach(|| -> Res<BatchRun> {
            let mut g = self.inner.write();
            let engine = g.as_mut().ok_or(Fail::Closed)?;
            *self.busy.lock() = Some(std::thread::current().id());
            let r = memorize_interruptible(engine, &facts, &opts, &progress);
            *self.busy.lock() = None;
            r
        });
        if let Progress::Bar(pb) = &progress {
            pb.finish_and_clear();
        }
        let (outcomes, broken, stop) = run?;
        let list = PyList::empty(py);
        let (mut memorized, mut unchanged) = (0, 0);
        for (o, f) in outcomes.iter().zip(&facts) {
            let o = match o {
                Some(o) => FactOutcome::from_rust(o),
                None => FactOutcome::not_run(f),
            };
            match o.status {
                "memorized" => memorized += 1,
                "already_stored" => unchanged += 1,
                _ => {}
            }
            list.append(Py::new(py, o)?)?;
        }
        let report = MemorizeReport {
            outcomes: list.unbind(),
            memorized,
            unchanged,
            failed: facts.len() - memorized - unchanged,
            broken,
            seconds: start.elapsed().as_secs_f64(),
            interrupted: stop.is_some(),
        };
        match stop {
            None => Ok(report),
            Some(e) => {
                // The caller still learns what was committed before the stop.
                let _ = e.value(py).setattr("report", Py::new(py, report)?);
                Err(e)
            }
        }
    }

    /// Answers a prompt greedily with the experts the selection rule chooses; with
    /// `use_experts=False`, or when no stored fact answers it, the bare model's output.
    /// `explain=True` fills `Answer.explanation`.
    #[pyo3(signature = (prompt, *, max_tokens=48, use_experts=true, explain=false))]
    fn ask(
        &self,
        py: Python<'_>,
        prompt: String,
        max_tokens: i64,
        use_experts: bool,
        explain: bool,
    ) -> PyResult<Answer> {
        let max_tokens = arg_range(max_tokens, "max_tokens", 1, 1 << 20)?;
        let opts = AskOptions {
            max_tokens,
            use_experts,
        };
        let (a, why) = self.with(py, |e| {
            let a = e.ask(&prompt, &opts)?;
            let why = explain.then(|| {
                let p = e.params();
                json!({
                    "match_threshold": p.rule.match_threshold,
                    "coverage_threshold": p.rule.coverage_threshold,
                    "k_candidates": p.k_candidates,
                    "use_experts": use_experts,
                    "candidates": a.candidates.iter().map(|h| fact_json(e, h.id, h.score)).collect::<Vec<_>>(),
                    "selected": a.selected.iter().map(|&(id, s)| fact_json(e, id, s)).collect::<Vec<_>>(),
                })
            });
            Ok((a, why))
        })?;
        Answer::from_rust(py, a, why.as_ref())
    }

    /// `ask`, streaming: returns an iterator of the reply's text pieces as they are
    /// generated (a piece never splits a character; the answers of several facts are
    /// separated by a `"\n"` piece), joined they are `Answer.text`. Once it is
    /// exhausted, the iterator's `answer` holds the whole `Answer`. Generation runs on
    /// a thread of its own without the GIL and stops early when the iterator is closed
    /// or dropped, or when iterating it is interrupted.
    #[pyo3(signature = (prompt, *, max_tokens=48, use_experts=true))]
    fn ask_stream(
        &self,
        prompt: String,
        max_tokens: i64,
        use_experts: bool,
    ) -> PyResult<AskStream> {
        let opts = AskOptions {
            max_tokens: arg_range(max_tokens, "max_tokens", 1, 1 << 20)?,
            use_experts,
        };
        self.check_reentry()?;
        AskStream::start(self.inner.clone(), self.busy.clone(), prompt, opts)
    }

    /// For the overhead benchmark (`python/examples/bench_ask.py`): times `n` calls
    /// of the Rust `Engine::ask` in one native loop, with no Python between them, and
    /// returns each call's seconds.
    #[pyo3(signature = (prompt, n, *, max_tokens=48, use_experts=true))]
    fn _time_ask_native(
        &self,
        py: Python<'_>,
        prompt: String,
        n: i64,
        max_tokens: i64,
        use_experts: bool,
    ) -> PyResult<Vec<f64>> {
        let n = arg_range(n, "n", 1, 1_000_000)?;
        let opts = AskOptions {
            max_tokens: arg_range(max_tokens, "max_tokens", 1, 1 << 20)?,
            use_experts,
        };
        self.with(py, |e| {
            (0..n)
                .map(|_| {
                    let t = Instant::now();
                    e.ask(&prompt, &opts)?;
                    Ok(t.elapsed().as_secs_f64())
                })
                .collect()
        })
    }

    /// Stage-1 hits for a prompt (`str`: encoded as `ask` encodes it, and each hit
    /// shows the rule's view and whether it is chosen) or for a key vector (a 1-D
    /// sequence of `key_dim` floats), best first.
    #[pyo3(signature = (query, k=10))]
    fn search(&self, py: Python<'_>, query: &Bound<'_, PyAny>, k: i64) -> PyResult<Vec<SearchHit>> {
        let k = arg_range(k, "k", 1, 100_000)?;
        let text = query
            .cast::<PyString>()
            .ok()
            .map(|s| s.to_str().map(str::to_owned))
            .transpose()?;
        let vector = match text {
            Some(_) => None,
            None => {
                let np = py.import("numpy")?;
                let arr = np
                    .getattr("asarray")?
                    .call1((query, "float32"))
                    .map_err(|_| {
                        PyTypeError::new_err(
                            "query must be a str or a 1-D sequence of floats (the key)",
                        )
                    })?;
                let ndim: usize = arr.getattr("ndim")?.extract()?;
                if ndim != 1 {
                    return Err(PyValueError::new_err(format!(
                        "query: a key vector must be 1-D, got {ndim} dimensions"
                    )));
                }
                let raw: Vec<u8> = arr.call_method0("tobytes")?.extract()?;
                Some(
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect::<Vec<f32>>(),
                )
            }
        };
        self.with(py, |e| {
            let store = e.store();
            let mut rows = Vec::new();
            match (&text, &vector) {
                (Some(t), _) => {
                    let enc = e.encode(t)?;
                    let hits = e.index().search(&enc.query.pooled_key(), k)?;
                    let chosen = e.select(&enc)?;
                    let chosen: Vec<u64> =
                        chosen.chosen.iter().filter_map(|(s, _)| s.id()).collect();
                    let rule = *e.selector().rule();
                    for h in hits {
                        // An expert deleted since the search is left out.
                        let Ok(meta) = store.meta(h.id) else { continue };
                        let fact = e.selector().fact_query(e.backbone(), store, h.id)?;
                        let m = fact.as_ref().map(|f| match_fact(&enc.query, f, &rule));
                        rows.push(SearchHit {
                            id: h.id,
                            score: h.score,
                            prompt: meta.provenance.prompt,
                            answer: meta.provenance.answer,
                            names: m.as_ref().map(|m| m.names),
                            forward: m.as_ref().map(|m| m.forward),
                            chosen: chosen.contains(&h.id),
                        });
                    }
                }
                (None, Some(v)) => {
                    for h in e.index().search(v, k)? {
                        let Ok(meta) = store.meta(h.id) else { continue };
                        rows.push(SearchHit {
                            id: h.id,
                            score: h.score,
                            prompt: meta.provenance.prompt,
                            answer: meta.provenance.answer,
                            names: None,
                            forward: None,
                            chosen: false,
                        });
                    }
                }
                (None, None) => {}
            }
            Ok(rows)
        })
    }

    /// Forgets the fact stored for `prompt` (every expert whose stored prompt is this
    /// prompt, in one commit); returns their ids (empty: nothing was stored for it).
    fn forget(&self, py: Python<'_>, prompt: String) -> PyResult<Vec<u64>> {
        self.with(py, |e| Ok(e.forget(&prompt)?))
    }

    /// Deletes experts by id (an int or an iterable of ints), all or none: an unknown
    /// id raises `NotFoundError` and deletes nothing.
    fn delete(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids: Vec<u64> = if ids.is_instance_of::<pyo3::types::PyInt>() {
            vec![arg_u64(ids, "ids")?]
        } else {
            let it = ids
                .try_iter()
                .map_err(|_| PyTypeError::new_err("ids must be an int or an iterable of ints"))?;
            let mut v = Vec::new();
            for (i, x) in it.enumerate() {
                v.push(arg_u64(&x?, &format!("ids[{i}]"))?);
            }
            v
        };
        if ids.is_empty() {
            return Ok(());
        }
        self.with(py, |e| {
            e.index().delete_batch(&ids)?;
            for &id in &ids {
                e.selector().forget(id);
            }
            e.index().save()?;
            Ok(())
        })
    }

    /// One expert: its key and per-layer `A`, `B` as read-only NumPy float16 arrays
    /// (copies of the record, whose checksum is verified first: a corrupt record
    /// raises `CorruptionError` naming expert, shard and offset), and its provenance.
    fn expert(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<Expert> {
        let id = arg_u64(id, "id")?;
        type Raw = (
            Vec<u8>,
            Vec<(Vec<u8>, Vec<u8>)>,
            Vec<u32>,
            u32,
            u64,
            Value,
            u64,
            u64,
            (usize, usize, usize),
        );
        let raw: Raw = self.with(py, |e| {
            let store = e.store();
            let x = store.get(id)?;
            let meta = store.meta(id)?;
            let cfg = store.config();
            let layers: Vec<(Vec<u8>, Vec<u8>)> = (0..cfg.layers.len())
                .map(|l| (f16_bytes(x.a(l)), f16_bytes(x.b(l))))
                .collect();
            let p = &meta.provenance;
            // Every key present (the store's JSON omits empty ones).
            let prov = json!({
                "prompt": p.prompt, "answer": p.answer, "text": p.text,
                "final_loss": p.final_loss,
                "steps": p.steps, "backbone_digest": p.backbone_digest, "replaces": p.replaces,
            });
            Ok((
                f16_bytes(x.key()),
                layers,
                cfg.layers.clone(),
                x.shard_id(),
                x.offset(),
                prov,
                meta.usage,
                meta.created_at_ms,
                (
                    cfg.key_dim as usize,
                    cfg.d_model as usize,
                    cfg.rank as usize,
                ),
            ))
        })?;
        let (key, layers, layer_ids, shard, offset, prov, usage, created_at_ms, (kd, d, r)) = raw;
        let np = py.import("numpy")?;
        let mut a = Vec::with_capacity(layers.len());
        let mut b = Vec::with_capacity(layers.len());
        for (la, lb) in &layers {
            a.push(ndarray(py, &np, la, &[r, d])?);
            b.push(ndarray(py, &np, lb, &[d, r])?);
        }
        Ok(Expert {
            id,
            key: ndarray(py, &np, &key, &[kd])?,
            layers: layer_ids,
            a,
            b,
            shard,
            offset,
            provenance: json_to_py(py, &prov)?.unbind(),
            usage,
            created_at_ms,
        })
    }

    /// Store statistics: experts, shards, orphans, the index, the config (a dict in
    /// the shape of `mome stats --json`, without usage rankings).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = self.with(py, |e| {
            let store = e.store();
            let s = store.stats()?;
            let shards: Vec<Value> = s
                .shards
                .iter()
                .map(|sh| {
                    json!({
                        "id": sh.id, "state": format!("{:?}", sh.state).to_lowercase(),
                        "used_slots": sh.used_slots, "capacity_slots": sh.capacity_slots,
                        "live": sh.live, "dead": sh.dead, "bytes": sh.bytes,
                        "live_fraction": sh.live_fraction(),
                    })
                })
                .collect();
            let mut total_usage = 0u64;
            store.scan_usage(|_, n| total_usage += n)?;
            let p = e.params();
            Ok(json!({
                "live": s.live, "deleted": s.deleted,
                "reclaimed_tombstones": s.reclaimed_tombstones, "seq": s.seq,
                "next_id": store.next_id(), "record_size": s.record_size,
                "shard_count": s.shards.len(),
                "shard_bytes": s.shards.iter().map(|sh| sh.bytes).sum::<u64>(),
                "orphan_slots": s.orphan_slots,
                "orphan_bytes": s.orphan_files.iter().map(|o| o.bytes).sum::<u64>(),
                "config": store.config(), "shards": shards,
                "index": {"keys": e.index().len(), "kind": e.index().params().kind,
                          "memory_bytes": e.index().memory_bytes()},
                "params": {"k_candidates": p.k_candidates,
                           "match_threshold": p.rule.match_threshold,
                           "coverage_threshold": p.rule.coverage_threshold},
                "total_selections": total_usage,
            }))
        })?;
        json_to_py(py, &v)
    }

    /// Checks every record's checksum and metadata ⇄ shards ⇄ index consistency (the
    /// index is saved first); with `recall=True` also replays every stored fact and
    /// reports each one no longer answered exactly. Returns a dict with `ok`,
    /// `records_checked`, `live`, `recall_checked` and `problems` (each with `id`,
    /// `shard`, `offset`, `detail`, as `mome verify --json`). Finding problems is not
    /// an error.
    #[pyo3(signature = (*, recall=false))]
    fn verify<'py>(&self, py: Python<'py>, recall: bool) -> PyResult<Bound<'py, PyAny>> {
        let v = self.with(py, |e| {
            let store = e.store();
            e.flush()?;
            let report = store.verify()?;
            let mut rows: Vec<Value> = report
                .problems
                .iter()
                .map(|p| problem(p.id, p.shard, p.offset, p.detail.clone()))
                .collect();
            let check = ExpertIndex::check_saved(store)?;
            let snap = store.snapshot();
            let layout = store.layout();
            if let Some(reason) = &check.unusable {
                rows.push(problem(None, None, None, format!("saved index unusable (the next open rebuilds it): {reason}")));
            }
            for &id in &check.missing {
                let loc = snap.location(id);
                rows.push(problem(Some(id), loc.map(|l| l.shard), loc.map(|l| layout.slot_offset(l.slot)),
                    "live expert missing from the index (after replaying the store's changes)".into()));
            }
            for &id in &check.stale {
                rows.push(problem(Some(id), None, None,
                    "deleted expert still in the index (after replaying the store's changes)".into()));
            }
            let mut checked = None;
            if recall {
                let mut n = 0usize;
                let opts = AskOptions::default();
                for id in snap.ids() {
                    let p = store.meta(id)?.provenance;
                    let (Some(prompt), Some(answer)) = (p.prompt, p.answer) else { continue };
                    n += 1;
                    let got = e.ask(&prompt, &opts)?;
                    if got.text != answer {
                        let loc = snap.location(id);
                        rows.push(problem(Some(id), loc.map(|l| l.shard), loc.map(|l| layout.slot_offset(l.slot)),
                            format!("fact no longer recalled exactly: {prompt:?} answers {:?}, stored {answer:?}", got.text)));
                    }
                }
                checked = Some(n);
            }
            Ok(json!({
                "ok": rows.is_empty(), "records_checked": report.records_checked,
                "live": snap.len(), "recall_checked": checked, "problems": rows,
            }))
        })?;
        json_to_py(py, &v)
    }

    /// Rewrites sparse sealed shards to reclaim deleted experts' bytes (the policy of
    /// `mome compact`); returns what it did.
    #[pyo3(signature = (*, min_live_fraction=None, merge_below_fraction=None))]
    fn compact<'py>(
        &self,
        py: Python<'py>,
        min_live_fraction: Option<f64>,
        merge_below_fraction: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let v = self.with(py, |e| {
            let mut policy = CompactionPolicy::default();
            if let Some(f) = min_live_fraction {
                policy.min_live_fraction = f;
            }
            if let Some(f) = merge_below_fraction {
                policy.merge_below_fraction = f;
            }
            policy.validate()?;
            // The horizon is the saved index's: save it so tombstones it has seen go.
            e.flush()?;
            let r = e
                .store()
                .compact(&policy, mome::tombstone_horizon(e.store().dir()))?;
            Ok(json!({
                "shards_rewritten": r.plan.shards, "new_shards": r.new_shards,
                "records_copied": r.records_copied,
                "reclaimed_bytes": r.plan.reclaimed_bytes(),
                "deleted_during_copy": r.deleted_during_copy,
                "tombstones_purged": r.tombstones_purged,
                "tombstones_kept": r.tombstones_kept,
                "orphans_removed": r.orphans_removed,
            }))
        })?;
        json_to_py(py, &v)
    }

    /// Writes every live expert to a portable, checksummed archive (`mome export`);
    /// returns `{"experts", "bytes", "seq"}`.
    fn export<'py>(&self, py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyAny>> {
        let v = self.with(py, |e| {
            let r = mome::export_archive(e.store(), &path)?;
            Ok(json!({"experts": r.experts, "bytes": r.bytes, "seq": r.seq}))
        })?;
        json_to_py(py, &v)
    }

    /// Inserts the experts of an archive with new ids (`mome import`); returns them.
    /// The whole archive is checked first: one of another config raises
    /// `ConfigMismatchError`, a damaged one `CorruptionError`, and nothing is written.
    fn import_(&self, py: Python<'_>, path: PathBuf) -> PyResult<Vec<u64>> {
        self.with(py, |e| {
            let r = mome::import_archive(e.index(), &path)?;
            e.index().save()?;
            Ok(r.ids)
        })
    }

    /// Flushes usage counters and saves the index.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |e| Ok(e.flush()?))
    }

    /// Flushes and closes the engine, releasing the store's lock. Idempotent; every
    /// later call but `close` raises `ClosedError`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.check_reentry()?;
        py.detach(|| -> Res<()> {
            let engine = self.inner.write().take();
            match engine {
                Some(e) => {
                    let r = e.flush();
                    drop(e);
                    Ok(r?)
                }
                None => Ok(()),
            }
        })
        .map_err(PyErr::from)
    }

    /// Whether the engine was closed.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| self.inner.read().is_none())
    }

    /// The store directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The model file in use.
    #[getter]
    fn model_path(&self) -> PathBuf {
        self.model.clone()
    }

    /// The store's config (d_model, key_dim, rank, layers, query_layer, ...).
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = self.with(py, |e| {
            Ok(serde_json::to_value(e.store().config()).unwrap_or(Value::Null))
        })?;
        json_to_py(py, &v)
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |e| Ok(e.store().len() as usize))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let live = py.detach(|| {
            self.inner
                .try_read()
                .map(|g| g.as_ref().map(|e| e.store().len()))
        });
        let state = match live {
            Some(Some(n)) => format!("experts={n}"),
            Some(None) => "closed".to_string(),
            None => "busy".to_string(),
        };
        format!(
            "Engine(path={:?}, {state})",
            self.path.display().to_string()
        )
    }
}

type BatchRun = (Vec<Option<mome::FactOutcome>>, Vec<u64>, Option<PyErr>);

/// Memorizes `facts` in one `Engine::memorize_until` call whose stop check, asked
/// after each committed batch, takes the GIL for `PyErr_CheckSignals`: a stop request
/// (KeyboardInterrupt, or an exception of the progress callback) takes effect between
/// batches, so every commit is whole.
fn memorize_interruptible(
    engine: &mut RustEngine,
    facts: &[Fact],
    opts: &TuneOptions,
    progress: &Progress,
) -> Res<BatchRun> {
    let total = facts.len();
    // Set by the progress callback, read by the stop check (never at the same time).
    let stop: RefCell<Option<PyErr>> = RefCell::new(None);
    let mut done = 0usize;
    let mut on_event = |ev: MemorizeEvent| {
        let d = match ev {
            MemorizeEvent::Step {
                step,
                converged,
                rows,
            } => {
                if let Progress::Bar(pb) = progress {
                    pb.set_message(format!("step {step}, {converged}/{rows} converged"));
                }
                json!({"event": "step", "step": step, "converged": converged, "rows": rows})
            }
            MemorizeEvent::Done(n) => {
                done += n;
                if let Progress::Bar(pb) = progress {
                    pb.inc(n as u64);
                }
                json!({"event": "done", "done": done, "total": total})
            }
        };
        Python::attach(|py| {
            let mut stop = stop.borrow_mut();
            if let Progress::Call(cb) = progress {
                let r = json_to_py(py, &d).and_then(|d| cb.call1(py, (d,)));
                if let Err(e) = r {
                    stop.get_or_insert(e);
                }
            }
            if let Err(e) = py.check_signals() {
                stop.get_or_insert(e);
            }
        });
    };
    let mut should_stop = || {
        Python::attach(|py| {
            let mut stop = stop.borrow_mut();
            if stop.is_none() {
                if let Err(e) = py.check_signals() {
                    *stop = Some(e);
                }
            }
            stop.is_some()
        })
    };
    let r = engine.memorize_until(facts, opts, &mut on_event, &mut should_stop)?;
    // The check is asked between batches only: a Ctrl-C during the last batch or the
    // final index save is seen here, with the whole report to attach.
    should_stop();
    let mut outcomes: Vec<Option<mome::FactOutcome>> = r.outcomes.into_iter().map(Some).collect();
    outcomes.resize(total, None);
    Ok((outcomes, r.broken, stop.into_inner()))
}
