//! The Python package's native core, `mome._native` (PyO3, abi3).
//!
//! It wraps the public API of the `mome` crate and nothing else: the engine
//! ([`engine::PyEngine`]), its result objects ([`types`]) and the mapping of the Rust
//! errors onto the Python hierarchy of `mome._errors` ([`errors`]). The package
//! `python/mome/` re-exports it; see `python/README.md`.

mod engine;
mod errors;
mod types;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<types::Answer>()?;
    m.add_class::<types::FactOutcome>()?;
    m.add_class::<types::MemorizeReport>()?;
    m.add_class::<types::SearchHit>()?;
    m.add_class::<types::Expert>()?;
    m.add_function(wrap_pyfunction!(engine::clear_model_cache, m)?)?;
    m.add("QUERY_RULE", mome::QUERY_RULE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
