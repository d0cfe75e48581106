//! The result objects handed to Python: plain, immutable values (`frozen` classes
//! whose attributes are copies), so holding one never keeps the store or a lock busy.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyList, PyString};

/// A JSON value as the Python object `json.loads` would make.
pub fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value as V;
    Ok(match v {
        V::Null => py.None().into_bound(py),
        V::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        V::Number(n) => {
            if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else {
                PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any()
            }
        }
        V::String(s) => PyString::new(py, s).into_any(),
        V::Array(a) => {
            let items = a
                .iter()
                .map(|x| json_to_py(py, x))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        V::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, json_to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(n).collect();
        format!("{head:?}…")
    }
}

/// An answer and how it was made.
#[pyclass(module = "mome", frozen, get_all)]
pub struct Answer {
    /// The reply text; the answers of a two-fact question, one per line.
    pub text: String,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Experts applied: `(id, forward score of the rule)`, in the order they answer.
    pub selected: Vec<(u64, f32)>,
    /// Stage-1 candidates: `(id, cosine of the pooled keys)`, best first.
    pub candidates: Vec<(u64, f32)>,
    /// With `explain=True`: the rule's thresholds and the facts behind the candidates
    /// and the selected experts; otherwise `None`.
    pub explanation: Option<Py<PyAny>>,
}

impl Answer {
    /// The Python answer of a Rust one; `why` is the `explain=True` explanation.
    pub fn from_rust(
        py: Python<'_>,
        a: mome::Answer,
        why: Option<&serde_json::Value>,
    ) -> PyResult<Self> {
        Ok(Self {
            text: a.text,
            tokens: a.tokens,
            selected: a.selected,
            candidates: a.candidates.iter().map(|h| (h.id, h.score)).collect(),
            explanation: why
                .map(|w| json_to_py(py, w))
                .transpose()?
                .map(Bound::unbind),
        })
    }
}

#[pymethods]
impl Answer {
    fn __repr__(&self) -> String {
        format!(
            "Answer(text={}, tokens={}, selected={:?}, candidates={})",
            short(&self.text, 60),
            self.tokens.len(),
            self.selected.iter().map(|s| s.0).collect::<Vec<_>>(),
            self.candidates.len()
        )
    }

    fn __str__(&self) -> String {
        self.text.clone()
    }

    /// Whether any stored expert was applied (`False`: the bare model's output).
    #[getter]
    fn used_experts(&self) -> bool {
        !self.selected.is_empty()
    }
}

/// What became of one fact of a `memorize` call.
#[pyclass(module = "mome", frozen, get_all)]
pub struct FactOutcome {
    /// The fact's prompt.
    pub prompt: String,
    /// The fact's answer.
    pub answer: String,
    /// `"memorized"`, `"already_stored"`, `"not_converged"`, `"verify_failed"`,
    /// `"shadowed"` or `"not_run"` (the call stopped before its batch).
    pub status: &'static str,
    /// The expert that answers it now (memorized or already stored), else `None`.
    pub expert_id: Option<u64>,
    /// Experts of the same prompt with another answer, deleted in the same commit.
    pub replaced: Vec<u64>,
    /// With `"verify_failed"`: what inference answered instead.
    pub got: Option<String>,
    /// Final mean answer loss (nats/token); NaN when not trained.
    pub loss: f32,
    /// Optimizer steps taken.
    pub steps: u32,
}

impl FactOutcome {
    pub fn from_rust(o: &mome::FactOutcome) -> Self {
        use mome::FactStatus as S;
        let (status, expert_id, replaced, got) = match &o.status {
            S::Memorized { id, replaced } => ("memorized", Some(*id), replaced.clone(), None),
            S::AlreadyStored { id } => ("already_stored", Some(*id), vec![], None),
            S::NotConverged => ("not_converged", None, vec![], None),
            S::VerifyFailed { got } => ("verify_failed", None, vec![], Some(got.clone())),
            S::Shadowed => ("shadowed", None, vec![], None),
        };
        Self {
            prompt: o.fact.prompt.clone(),
            answer: o.fact.answer.clone(),
            status,
            expert_id,
            replaced,
            got,
            loss: o.loss,
            steps: o.steps,
        }
    }

    pub fn not_run(f: &mome::Fact) -> Self {
        Self {
            prompt: f.prompt.clone(),
            answer: f.answer.clone(),
            status: "not_run",
            expert_id: None,
            replaced: vec![],
            got: None,
            loss: f32::NAN,
            steps: 0,
        }
    }
}

#[pymethods]
impl FactOutcome {
    /// Whether the store now answers this fact (memorized or already stored).
    #[getter]
    fn stored(&self) -> bool {
        self.expert_id.is_some()
    }

    fn __repr__(&self) -> String {
        format!(
            "FactOutcome(prompt={}, answer={}, status={:?}, expert_id={}, loss={:.4}, steps={})",
            short(&self.prompt, 40),
            short(&self.answer, 20),
            self.status,
            self.expert_id
                .map_or_else(|| "None".to_string(), |i| i.to_string()),
            self.loss,
            self.steps
        )
    }
}

/// The report of a `memorize` call: one outcome per fact, in input order.
#[pyclass(module = "mome", frozen, get_all)]
pub struct MemorizeReport {
    /// One `FactOutcome` per fact, in input order.
    pub outcomes: Py<PyList>,
    /// Facts committed as new experts.
    pub memorized: usize,
    /// Facts already stored with the same answer.
    pub unchanged: usize,
    /// Facts not committed (including those not run after an interrupt).
    pub failed: usize,
    /// Previously stored experts whose fact no longer answers exactly, each id once.
    pub broken: Vec<u64>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Whether the call stopped early (KeyboardInterrupt or an exception of the
    /// progress callback) after a whole batch.
    pub interrupted: bool,
}

#[pymethods]
impl MemorizeReport {
    /// Memorized facts per minute of wall time.
    #[getter]
    fn facts_per_minute(&self) -> f64 {
        self.memorized as f64 * 60.0 / self.seconds.max(1e-9)
    }

    /// Whether every fact is now answered by the store.
    #[getter]
    fn ok(&self) -> bool {
        self.failed == 0
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.outcomes.bind(py).len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.outcomes.bind(py).try_iter()?.into_any())
    }

    fn __getitem__<'py>(&self, py: Python<'py>, i: isize) -> PyResult<Bound<'py, PyAny>> {
        let list = self.outcomes.bind(py);
        let n = list.len() as isize;
        let j = if i < 0 { i + n } else { i };
        if j < 0 || j >= n {
            return Err(pyo3::exceptions::PyIndexError::new_err(
                "MemorizeReport index out of range",
            ));
        }
        list.get_item(j as usize)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "MemorizeReport(facts={}, memorized={}, unchanged={}, failed={}, broken={:?}, seconds={:.1}{})",
            self.outcomes.bind(py).len(),
            self.memorized,
            self.unchanged,
            self.failed,
            self.broken,
            self.seconds,
            if self.interrupted { ", interrupted=True" } else { "" }
        )
    }
}

/// One stage-1 hit of `search`, with the rule's view of it.
#[pyclass(module = "mome", frozen, get_all)]
pub struct SearchHit {
    /// Expert id.
    pub id: u64,
    /// Cosine of the pooled keys.
    pub score: f32,
    /// The stored fact's prompt (`None` for an expert without one).
    pub prompt: Option<String>,
    /// The stored fact's answer.
    pub answer: Option<String>,
    /// For a text query: whether the stored prompt's names occur in the query.
    pub names: Option<bool>,
    /// For a text query: the rule's forward score (smallest content-word similarity).
    pub forward: Option<f32>,
    /// For a text query: whether the rule chooses it, as `ask` would.
    pub chosen: bool,
}

#[pymethods]
impl SearchHit {
    fn __repr__(&self) -> String {
        format!(
            "SearchHit(id={}, score={:.4}, prompt={}, answer={}, chosen={})",
            self.id,
            self.score,
            self.prompt
                .as_deref()
                .map_or_else(|| "None".into(), |p| short(p, 40)),
            self.answer
                .as_deref()
                .map_or_else(|| "None".into(), |a| short(a, 20)),
            if self.chosen { "True" } else { "False" }
        )
    }
}

/// One expert's key and adapter weights, as read-only NumPy fp16 arrays (copies of
/// the checksum-verified record), and its provenance.
#[pyclass(module = "mome", frozen, get_all)]
pub struct Expert {
    /// Expert id.
    pub id: u64,
    /// The key, shape `(key_dim,)`, float16.
    pub key: Py<PyAny>,
    /// The backbone layers adapted, in store order.
    pub layers: Vec<u32>,
    /// Per adapted layer: `A`, shape `(rank, d_model)`, float16.
    pub a: Vec<Py<PyAny>>,
    /// Per adapted layer: `B`, shape `(d_model, rank)`, float16.
    pub b: Vec<Py<PyAny>>,
    /// Shard holding the record.
    pub shard: u32,
    /// Byte offset of the record in the shard file.
    pub offset: u64,
    /// Provenance: prompt, answer, text, final_loss, steps, backbone_digest, replaces.
    pub provenance: Py<PyAny>,
    /// Times selection applied it (flushed counts).
    pub usage: u64,
    /// Creation time, milliseconds since the epoch.
    pub created_at_ms: u64,
}

#[pymethods]
impl Expert {
    /// The stored fact's prompt, or `None`.
    #[getter]
    fn prompt<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.provenance.bind(py).get_item("prompt")
    }

    /// The stored fact's answer, or `None`.
    #[getter]
    fn answer<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.provenance.bind(py).get_item("answer")
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let field = |k: &str| {
            self.provenance
                .bind(py)
                .get_item(k)
                .and_then(|v| v.repr())
                .map_or_else(|_| "None".to_string(), |r| r.to_string())
        };
        format!(
            "Expert(id={}, layers={:?}, shard={}, offset={}, prompt={}, answer={})",
            self.id,
            self.layers,
            self.shard,
            self.offset,
            field("prompt"),
            field("answer")
        )
    }
}
