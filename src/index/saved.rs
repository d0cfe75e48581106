//! The saved index's files under `DIR/index/`: `index.json` (parameters, the store
//! sequence covered, the data file's name, length and CRC-32C) and the generation-named
//! data file it points at. What a saved index records can be read without loading it
//! ([`saved_index_info`]), and so can the tombstone horizon compaction needs
//! ([`tombstone_horizon`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{IndexError, IndexResult as Result};
use super::{IndexKind, IndexParams};
use crate::store::StoreDir;

pub(crate) const META_FILE: &str = "index.json";
pub(crate) const INDEX_FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
pub(crate) struct IndexMeta {
    pub(crate) version: u32,
    pub(crate) params: IndexParams,
    pub(crate) dim: usize,
    /// Store commit sequence the saved index reflects.
    pub(crate) seq: u64,
    pub(crate) count: usize,
    /// Name of the data file inside the index directory. Each save writes a new file and
    /// only then switches `index.json` to it (one atomic rename), so a crash mid-save
    /// leaves the previous pair intact. Absent in indexes saved before generations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) file: Option<String>,
    /// Save counter that names the data file.
    #[serde(default)]
    pub(crate) generation: u64,
    pub(crate) file_len: u64,
    pub(crate) file_crc32c: u32,
}

impl IndexMeta {
    /// The data file this metadata describes (a plain name inside the index directory).
    pub(crate) fn data_path(&self, dir: &Path) -> Result<PathBuf> {
        let name = self
            .file
            .as_deref()
            .unwrap_or_else(|| legacy_data_file(self.params.kind));
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(IndexError::corrupt(format!(
                "index metadata names the data file {name:?}"
            )));
        }
        Ok(dir.join(name))
    }
}

/// Data file name of indexes saved before generation-named files.
fn legacy_data_file(kind: IndexKind) -> &'static str {
    match kind {
        IndexKind::Hnsw => "keys.usearch",
        IndexKind::Flat => "keys.flat",
    }
}

/// Data file name of save number `generation`.
pub(crate) fn data_file(kind: IndexKind, generation: u64) -> String {
    let ext = match kind {
        IndexKind::Hnsw => "usearch",
        IndexKind::Flat => "flat",
    };
    format!("keys.{generation}.{ext}")
}

pub(crate) fn read_meta(dir: &Path) -> Option<IndexMeta> {
    let raw = std::fs::read(dir.join(META_FILE)).ok()?;
    serde_json::from_slice(&raw).ok()
}

/// What a saved index records about itself (`DIR/index/index.json`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SavedIndexInfo {
    /// Parameters it was built with.
    pub params: IndexParams,
    /// Key dimension.
    pub dim: usize,
    /// Store commit sequence the saved index covers: changes after it are replayed on open.
    pub seq: u64,
    /// Keys in the saved file.
    pub count: usize,
    /// Size of the index data file.
    pub file_bytes: u64,
}

/// The saved index of the store in `store_dir`, without loading it: `Ok(None)` when
/// there is no `index/index.json`.
pub fn saved_index_info(store_dir: &Path) -> Result<Option<SavedIndexInfo>> {
    let path = StoreDir::new(store_dir).index().join(META_FILE);
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IndexError::io(&path, e)),
    };
    let meta: IndexMeta = serde_json::from_slice(&raw)
        .map_err(|e| IndexError::corrupt(format!("{}: {e}", path.display())))?;
    Ok(Some(SavedIndexInfo {
        params: meta.params,
        dim: meta.dim,
        seq: meta.seq,
        count: meta.count,
        file_bytes: meta.file_len,
    }))
}

/// The newest delete sequence a saved index of the store in `store_dir` may still need
/// to learn from a tombstone: tombstones deleted at or before the returned sequence are
/// already reflected in the saved index (or no saved index exists that could need them)
/// and may be purged by compaction. This is the horizon to hand to `Store::compact`:
/// the store does not read the index's files itself.
///
/// * a readable `index.json`: its sequence;
/// * no `index/` directory at all: `u64::MAX` (the next open rebuilds from the keys);
/// * an `index/` directory whose metadata is missing or unreadable: 0 — a save may have
///   been interrupted, so nothing is purged.
pub fn tombstone_horizon(store_dir: &Path) -> u64 {
    match saved_index_info(store_dir) {
        Ok(Some(info)) => info.seq,
        Ok(None) if !StoreDir::new(store_dir).index().exists() => u64::MAX,
        _ => 0,
    }
}

pub(crate) fn file_crc(path: &Path) -> Result<(u64, u32)> {
    let bytes = std::fs::read(path).map_err(|e| IndexError::io(path, e))?;
    Ok((bytes.len() as u64, crc32c::crc32c(&bytes)))
}
