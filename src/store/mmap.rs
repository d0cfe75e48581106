//! Read-only memory maps of shard files. The only `unsafe` of the store lives here.
//!
//! A shard is mapped once, at its full capacity, when it is opened or created. The file
//! grows by appends (`pwrite`) after the mapping exists; Linux maps file pages through
//! the page cache, so bytes written with `pwrite` are visible through the mapping. Readers
//! only ever touch records the metadata has committed, which lie inside the file.

// One of the named modules allowed `unsafe` (workspace lints): the one `mmap` call.
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use memmap2::{Mmap, MmapOptions};

use super::error::{StoreError, StoreResult as Result};

/// A read-only mapping of `capacity` bytes of a shard file.
pub(crate) struct ShardMap {
    map: Mmap,
}

impl ShardMap {
    /// Maps `capacity` bytes of `file`, which may be longer than the file is now.
    pub(crate) fn new(file: &File, path: &Path, capacity: usize) -> Result<Self> {
        // SAFETY: memmap2 requires that the mapped file is not modified in ways that
        // change bytes a reader holds a reference to, and that no reference reaches past
        // the end of the file (that would raise SIGBUS). Shard files are append-only:
        // committed records are never rewritten in place (compaction writes new files and
        // deletes old ones only after the last `Arc` to their mapping is gone), recovery
        // truncates only uncommitted bytes and does so before mapping, and every slice
        // handed out by `bytes` lies inside a record the metadata committed after its
        // bytes were written and fsynced — i.e. inside the file. Mapping past the current
        // end of file is permitted by mmap(2); those pages are never read until appended.
        let map = unsafe { MmapOptions::new().len(capacity).map(file) }
            .map_err(|e| StoreError::io(path, e))?;
        Ok(ShardMap { map })
    }

    /// The bytes `offset..offset+len`, or `None` when the range is outside the mapping.
    pub(crate) fn bytes(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        self.map.get(offset..end)
    }

    /// Hints the kernel that a range will be needed soon (used before bulk scans).
    pub(crate) fn advise_sequential(&self) {
        let _ = self.map.advise(memmap2::Advice::Sequential);
    }
}
