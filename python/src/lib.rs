//! The Python package's native core, `mome._native` (PyO3, abi3).
//!
//! It wraps the public API of the `mome` crate and nothing else: the engine
//! ([`engine::PyEngine`]), its result objects ([`types`]) and the mapping of the Rust
//! errors onto the Python hierarchy of `mome._errors` ([`errors`]). The package
//! `python/mome/` re-exports it; see `python/README.md`.

mod engine;
mod errors;
mod stream;
mod types;

use std::path::PathBuf;

use pyo3::prelude::*;

/// Writes the tiny random model of the Rust tests (4 layers, d_model 48, a byte-level
/// tokenizer) as a GGUF file, for tests and examples that need a backbone but not a
/// real one. The same `seed` gives the same file.
#[pyfunction]
#[pyo3(signature = (path, seed=1))]
fn _write_tiny_model(py: Python<'_>, path: PathBuf, seed: u64) -> PyResult<()> {
    py.detach(|| mome::tiny::write_tiny_model(&path, seed))
        .map_err(|e| errors::Fail::from(e).into())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<types::Answer>()?;
    m.add_class::<stream::AskStream>()?;
    m.add_class::<types::FactOutcome>()?;
    m.add_class::<types::MemorizeReport>()?;
    m.add_class::<types::SearchHit>()?;
    m.add_class::<types::Expert>()?;
    m.add_function(wrap_pyfunction!(engine::clear_model_cache, m)?)?;
    m.add_function(wrap_pyfunction!(_write_tiny_model, m)?)?;
    m.add("QUERY_RULE", mome::QUERY_RULE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
