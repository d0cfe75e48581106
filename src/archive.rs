//! Portable, checksummed archives of experts: export from one store, import into another.
//!
//! Format version 1 (all integers little-endian; ARCHITECTURE.md §Archive):
//!
//! ```text
//! header   "MOMEARCH" | version u32 | config length u32 | config JSON | CRC-32C of the preceding header bytes (u32)
//! record   "AREC" | payload length u32 | payload | CRC-32C of the payload (u32)
//!          payload: key (key_dim fp16) | for each adapted layer: A (rank × d_model fp16), B (d_model × rank fp16)
//!                   | meta length u32 | meta JSON {provenance, created_at_ms, usage, source_id}
//! trailer  "AEND" | record count u64 | CRC-32C of every byte before the trailer (u32)
//! ```
//!
//! Records carry no store-specific location or id (the source id is informational);
//! import assigns new ids. An archive ends with its trailer and nothing after it, so a
//! truncated file is always detected, and the whole-file checksum catches records that
//! were dropped, duplicated or reordered.
//!
//! Import is resumable and idempotent by archive id (the first 16 bytes of the SHA-256
//! of the whole file): each batch commits with a marker saying how many records of that
//! archive the store holds, so a crashed import continues where it stopped and importing
//! an archive again inserts nothing.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use half::f16;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fs::{atomic_write, FsError, IoFile};
use crate::index::{ExpertIndex, IndexError};
use crate::progress::Task;
use crate::store::{
    hex, AdapterPair, ImportBatch, NewExpert, Provenance, RecordLayout, Store, StoreConfig,
    StoreError,
};

/// Everything that can go wrong exporting, checking or importing an archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// An I/O operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An expert archive that is truncated, malformed or fails a checksum. Nothing was
    /// written to the store.
    #[error("archive {path} is malformed at byte {offset}: {reason}")]
    Corrupt {
        /// The archive file.
        path: PathBuf,
        /// Byte offset where reading failed.
        offset: u64,
        /// What is wrong (record number, expected versus found).
        reason: String,
    },
    /// An archive whose experts do not fit the store (another shape or backbone).
    #[error(
        "archive {path} does not fit this store: `{field}` is {archive} in the archive but {store} in the store"
    )]
    Incompatible {
        /// The archive file.
        path: PathBuf,
        /// The differing config field.
        field: &'static str,
        /// Its value in the archive.
        archive: String,
        /// Its value in the store.
        store: String,
    },
    /// An archive written by a newer (or unknown) format version.
    #[error("{what} has format version {found}; this build supports up to {supported}")]
    UnsupportedVersion {
        /// The archive.
        what: String,
        /// The version found.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// A value could not be encoded (nothing was left at the archive's path).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The encoder's message.
        reason: String,
    },
    /// Reading the exporting store failed (e.g. a corrupt record, named with its id,
    /// shard and offset).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Inserting into the importing store and its index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl ArchiveError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ArchiveError::Io {
            path: path.into(),
            source,
        }
    }

    fn encode(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        ArchiveError::Encode {
            what: what.into(),
            reason: e.to_string(),
        }
    }
}

impl From<FsError> for ArchiveError {
    fn from(e: FsError) -> Self {
        ArchiveError::io(e.path, e.source)
    }
}

type Result<T> = std::result::Result<T, ArchiveError>;

/// Magic bytes opening an archive.
pub const ARCHIVE_MAGIC: &[u8; 8] = b"MOMEARCH";
/// Newest archive format this build writes and reads.
pub const ARCHIVE_FORMAT_VERSION: u32 = 1;
const RECORD_TAG: &[u8; 4] = b"AREC";
const TRAILER_TAG: &[u8; 4] = b"AEND";
/// Bound on the config JSON and on a record's metadata JSON, so that a corrupt length
/// field cannot make the reader allocate without limit.
const MAX_JSON: u32 = 16 << 20;
/// Experts inserted per commit on import.
const IMPORT_BATCH: usize = 256;

/// Per-record metadata as stored in an archive.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ArchivedMeta {
    provenance: Provenance,
    created_at_ms: u64,
    #[serde(default)]
    usage: u64,
    /// Id in the exporting store; informational only.
    #[serde(default)]
    source_id: u64,
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ExportReport {
    /// Experts written.
    pub experts: u64,
    /// Archive size in bytes.
    pub bytes: u64,
    /// Store commit sequence the archive reflects.
    pub seq: u64,
}

/// What an import did.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ImportReport {
    /// Experts inserted by this call.
    pub experts: u64,
    /// Their new ids, in archive order.
    pub ids: Vec<u64>,
    /// Records an earlier import of the same archive had already committed (skipped,
    /// not inserted again): all of them when the archive was imported before.
    pub skipped: u64,
    /// The archive's id (hex of the first 16 bytes of its SHA-256).
    pub archive_id: String,
}

/// Header and size of a checked archive.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ArchiveSummary {
    /// Config of the exporting store.
    pub config: StoreConfig,
    /// Number of experts.
    pub experts: u64,
    /// The archive's id (hex of the first 16 bytes of its SHA-256), by which an import
    /// resumes and is recognised when repeated.
    pub id: String,
}

/// One record read back: the expert, its creation time and usage count in the
/// exporting store.
struct Archived {
    expert: NewExpert,
    created_at_ms: u64,
    usage: u64,
}

fn encode_payload(
    layout: &RecordLayout,
    key: &[f16],
    layers: &[(&[f16], &[f16])],
    meta_json: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.reserve(layout.payload_bytes() + 4 + meta_json.len());
    out.extend_from_slice(bytemuck::cast_slice(key));
    for (a, b) in layers {
        out.extend_from_slice(bytemuck::cast_slice(a));
        out.extend_from_slice(bytemuck::cast_slice(b));
    }
    out.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
    out.extend_from_slice(meta_json);
}

/// A writer that checksums everything it writes.
struct CrcWriter<W: Write> {
    inner: W,
    crc: u32,
    bytes: u64,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, data: &[u8], path: &Path) -> Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.bytes += data.len() as u64;
        self.inner
            .write_all(data)
            .map_err(|e| ArchiveError::io(path, e))
    }
}

/// Writes every live expert of `store` (one snapshot) to an archive at `out`. The file
/// is written beside `out` (`out.partial`) and renamed into place once complete and
/// fsynced (the crate's one atomic write), so a failed export never leaves a file that
/// looks like an archive. A corrupt record fails the
/// export with its id, shard and offset.
pub fn export(store: &Store, out: &Path) -> Result<ExportReport> {
    let snap = store.snapshot();
    let layout = store.layout();
    let progress = store.progress();
    let mut written = (0u64, 0u64);
    atomic_write(out, |tmp| -> Result<()> {
        let file = IoFile::create(tmp).map_err(|e| ArchiveError::io(tmp, e))?;
        let mut w = CrcWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: 0,
            bytes: 0,
        };
        let config =
            serde_json::to_vec(store.config()).map_err(|e| ArchiveError::encode("config", e))?;
        let mut header = Vec::with_capacity(16 + config.len());
        header.extend_from_slice(ARCHIVE_MAGIC);
        header.extend_from_slice(&ARCHIVE_FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&(config.len() as u32).to_le_bytes());
        header.extend_from_slice(&config);
        w.put(&header, tmp)?;
        w.put(&crc32c::crc32c(&header).to_le_bytes(), tmp)?;

        let task = Task::start(&*progress, "export", snap.len());
        let mut payload = Vec::new();
        let mut count = 0u64;
        for expert in snap.iter() {
            let e = expert?;
            let id = e.id();
            let meta = match store.meta(id) {
                Ok(m) => m,
                // Deleted after the snapshot was taken: its metadata is gone with it.
                Err(StoreError::UnknownExpert { .. }) => continue,
                Err(err) => return Err(err.into()),
            };
            let meta_json = serde_json::to_vec(&ArchivedMeta {
                provenance: meta.provenance,
                created_at_ms: meta.created_at_ms,
                usage: meta.usage,
                source_id: id,
            })
            .map_err(|err| ArchiveError::encode(format!("metadata of expert {id}"), err))?;
            let layers: Vec<(&[f16], &[f16])> =
                (0..layout.n_layers).map(|l| (e.a(l), e.b(l))).collect();
            encode_payload(&layout, e.key(), &layers, &meta_json, &mut payload);
            w.put(RECORD_TAG, tmp)?;
            w.put(&(payload.len() as u32).to_le_bytes(), tmp)?;
            w.put(&payload, tmp)?;
            w.put(&crc32c::crc32c(&payload).to_le_bytes(), tmp)?;
            count += 1;
            task.advance(1);
        }
        drop(task);
        let total_crc = w.crc;
        w.put(TRAILER_TAG, tmp)?;
        w.put(&count.to_le_bytes(), tmp)?;
        w.put(&total_crc.to_le_bytes(), tmp)?;
        w.inner.flush().map_err(|e| ArchiveError::io(tmp, e))?;
        written = (count, w.bytes);
        Ok(())
    })?;
    let (count, bytes) = written;
    Ok(ExportReport {
        experts: count,
        bytes,
        seq: snap.seq(),
    })
}

/// Streaming reader of an archive that checks every checksum and bound as it goes.
struct Reader {
    path: PathBuf,
    inner: BufReader<IoFile>,
    offset: u64,
    crc: u32,
    /// SHA-256 of every byte read: the archive's id once the trailer is read.
    sha: Sha256,
    layout: RecordLayout,
    config: StoreConfig,
    records: u64,
    done: bool,
}

impl Reader {
    fn open(path: &Path) -> Result<Reader> {
        let file = IoFile::open(path).map_err(|e| ArchiveError::io(path, e))?;
        let mut r = Reader {
            path: path.to_path_buf(),
            inner: BufReader::with_capacity(1 << 20, file),
            offset: 0,
            crc: 0,
            sha: Sha256::new(),
            layout: RecordLayout::new(1, 1, 1, 1),
            config: StoreConfig::new(1, 1, 1, vec![0]),
            records: 0,
            done: false,
        };
        let magic: [u8; 8] = r.array("archive magic")?;
        if &magic != ARCHIVE_MAGIC {
            return Err(r.bad(0, "not a mome archive (bad magic)".into()));
        }
        let version = u32::from_le_bytes(r.array("format version")?);
        if version == 0 || version > ARCHIVE_FORMAT_VERSION {
            return Err(ArchiveError::UnsupportedVersion {
                what: format!("archive {}", path.display()),
                found: version,
                supported: ARCHIVE_FORMAT_VERSION,
            });
        }
        let len = u32::from_le_bytes(r.array("config length")?);
        if len > MAX_JSON {
            return Err(r.bad(12, format!("config length {len} exceeds {MAX_JSON}")));
        }
        let json = r.bytes(len as usize, "config")?;
        let header_crc = r.crc;
        let stored = u32::from_le_bytes(r.array("header checksum")?);
        if stored != header_crc {
            return Err(r.bad(
                r.offset - 4,
                format!(
                    "header checksum mismatch (stored {stored:#010x}, computed {header_crc:#010x})"
                ),
            ));
        }
        let config: StoreConfig =
            serde_json::from_slice(&json).map_err(|e| r.bad(16, format!("config JSON: {e}")))?;
        config
            .validate()
            .map_err(|e| r.bad(16, format!("config: {e}")))?;
        r.layout = RecordLayout::for_config(&config);
        r.config = config;
        Ok(r)
    }

    fn bad(&self, offset: u64, reason: String) -> ArchiveError {
        ArchiveError::Corrupt {
            path: self.path.clone(),
            offset,
            reason,
        }
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.crc = crc32c::crc32c_append(self.crc, buf);
                self.sha.update(&*buf);
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(self.bad(
                self.offset,
                format!("truncated: the file ends inside the {what}"),
            )),
            Err(e) => Err(ArchiveError::io(&self.path, e)),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.read_exact(&mut b, what)?;
        Ok(b)
    }

    /// `n` bytes, read a chunk at a time: the buffer grows with the bytes the file
    /// really holds, so a length field claiming gigabytes in a short file cannot
    /// allocate them.
    fn bytes(&mut self, n: usize, what: &str) -> Result<Vec<u8>> {
        const CHUNK: usize = 1 << 20;
        let mut b = Vec::with_capacity(n.min(CHUNK));
        while b.len() < n {
            let start = b.len();
            b.resize(start + (n - start).min(CHUNK), 0);
            self.read_exact(&mut b[start..], what)?;
        }
        Ok(b)
    }

    /// The archive's id: valid once [`Self::next`] returned `None`.
    fn id(&self) -> [u8; 16] {
        let digest = self.sha.clone().finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        id
    }

    /// The next expert, or `None` after a valid trailer.
    fn next(&mut self) -> Result<Option<Archived>> {
        if self.done {
            return Ok(None);
        }
        let n = self.records;
        let start = self.offset;
        let before = self.crc;
        let tag: [u8; 4] = self.array("record tag")?;
        if &tag == TRAILER_TAG {
            let count = u64::from_le_bytes(self.array("trailer")?);
            let stored = u32::from_le_bytes(self.array("trailer")?);
            if count != n {
                return Err(self.bad(
                    start,
                    format!("trailer counts {count} records, the archive holds {n}"),
                ));
            }
            if stored != before {
                return Err(self.bad(
                    start,
                    format!("whole-file checksum mismatch (stored {stored:#010x}, computed {before:#010x})"),
                ));
            }
            let mut extra = [0u8; 1];
            match self.inner.read(&mut extra) {
                Ok(0) => {}
                Ok(_) => {
                    return Err(self.bad(self.offset, "bytes after the trailer".into()));
                }
                Err(e) => return Err(ArchiveError::io(&self.path, e)),
            }
            self.done = true;
            return Ok(None);
        }
        if &tag != RECORD_TAG {
            return Err(self.bad(start, format!("record {n}: bad tag {tag:?}")));
        }
        let len = u32::from_le_bytes(self.array("record length")?) as usize;
        let weights = self.layout.payload_bytes();
        if len < weights + 4 || len > weights + 4 + MAX_JSON as usize {
            return Err(self.bad(
                start,
                format!(
                    "record {n}: payload of {len} bytes, expected {} plus metadata",
                    weights + 4
                ),
            ));
        }
        let payload = self.bytes(len, "record payload")?;
        let stored = u32::from_le_bytes(self.array("record checksum")?);
        let actual = crc32c::crc32c(&payload);
        if stored != actual {
            return Err(self.bad(
                start,
                format!("record {n}: checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"),
            ));
        }
        let l = &self.layout;
        let f16s = |b: &[u8]| -> Vec<f16> {
            b.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        let key_bytes = l.key_dim * 2;
        let mat_bytes = l.mat_len() * 2;
        let key = f16s(&payload[..key_bytes]);
        let layers = (0..l.n_layers)
            .map(|i| {
                let a0 = key_bytes + 2 * i * mat_bytes;
                AdapterPair {
                    a: f16s(&payload[a0..a0 + mat_bytes]),
                    b: f16s(&payload[a0 + mat_bytes..a0 + 2 * mat_bytes]),
                }
            })
            .collect();
        let meta_len = u32::from_le_bytes([
            payload[weights],
            payload[weights + 1],
            payload[weights + 2],
            payload[weights + 3],
        ]) as usize;
        if weights + 4 + meta_len != len {
            return Err(self.bad(
                start,
                format!(
                    "record {n}: metadata length {meta_len} does not fill the {len}-byte payload"
                ),
            ));
        }
        let meta: ArchivedMeta = serde_json::from_slice(&payload[weights + 4..])
            .map_err(|e| self.bad(start, format!("record {n}: metadata JSON: {e}")))?;
        let expert = NewExpert {
            key,
            layers,
            provenance: meta.provenance,
        };
        expert
            .validate(&self.layout, 0)
            .map_err(|e| self.bad(start, format!("record {n}: {e}")))?;
        self.records += 1;
        Ok(Some(Archived {
            expert,
            created_at_ms: meta.created_at_ms,
            usage: meta.usage,
        }))
    }
}

/// Reads and checks a whole archive (every checksum, the trailer, each expert's shape
/// and values) without touching any store.
pub fn check(path: &Path) -> Result<ArchiveSummary> {
    let mut r = Reader::open(path)?;
    while r.next()?.is_some() {}
    Ok(ArchiveSummary {
        id: hex(&r.id()),
        config: r.config,
        experts: r.records,
    })
}

/// Imports an archive into the store behind `index` (the index follows): checks that
/// its config fits the store (every field but `shard_size`) and reads the whole archive
/// first, so that a different-config, malformed or truncated archive is refused before
/// anything is written; then inserts the experts in batches, with new ids, their
/// original creation times and usage counts.
///
/// Resumable and idempotent by archive id: each batch commits together with the count
/// of this archive's records the store now holds. An import that crashed part-way is
/// finished by importing the same file again (the committed prefix is skipped), and an
/// archive imported before inserts nothing ([`ImportReport::skipped`] says so). Two
/// imports of one archive at once cannot both commit a batch: the second gets
/// [`StoreError::ImportConflict`].
pub fn import(index: &ExpertIndex, path: &Path) -> Result<ImportReport> {
    let store = index.store();
    let (total, id) = {
        let mut r = Reader::open(path)?;
        if let Some((field, archive, store_value)) = r.config.expert_difference(store.config()) {
            return Err(ArchiveError::Incompatible {
                path: path.to_path_buf(),
                field,
                archive,
                store: store_value,
            });
        }
        while r.next()?.is_some() {}
        (r.records, r.id())
    };
    let archive_id = hex(&id);
    let done = match store.import_progress(&id)? {
        None => 0,
        Some(p) if p.total == total => p.done,
        Some(p) => {
            return Err(StoreError::CorruptMetadata {
                what: format!(
                    "import marker of archive {archive_id} counts {} records, the archive holds {total}",
                    p.total
                ),
            }
            .into())
        }
    };
    if done > 0 {
        tracing::info!(archive = %archive_id, done, total, "archive imported before; skipping its committed records");
    }
    let mut r = Reader::open(path)?;
    let progress = store.progress();
    let task = Task::start(&*progress, "import", total);
    task.advance(done);
    let mut ids = Vec::with_capacity(total.saturating_sub(done) as usize);
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    let mut created = Vec::with_capacity(IMPORT_BATCH);
    let mut usage = Vec::with_capacity(IMPORT_BATCH);
    let mut start = done;
    loop {
        let next = r.next()?;
        let last = next.is_none();
        if let Some(rec) = next {
            // The committed prefix is read (and checked) again, not inserted.
            if r.records > done {
                batch.push(rec.expert);
                created.push(rec.created_at_ms);
                usage.push(rec.usage);
            }
        }
        if last && r.id() != id {
            // Every record of this pass passed its checks, but the file is not the one
            // the first pass read: it was replaced while importing.
            return Err(ArchiveError::Corrupt {
                path: path.to_path_buf(),
                offset: r.offset,
                reason: format!(
                    "the archive changed while it was imported (id {archive_id}, now {}); \
                     import it again",
                    hex(&r.id())
                ),
            });
        }
        if !batch.is_empty() && (last || batch.len() == IMPORT_BATCH) {
            let n = batch.len() as u64;
            let new = index.import_batch(ImportBatch {
                experts: std::mem::take(&mut batch),
                created_at_ms: std::mem::take(&mut created),
                usage: std::mem::take(&mut usage),
                archive: id,
                start,
                total,
            })?;
            start += n;
            ids.extend(new);
            task.advance(n);
        }
        if last {
            break;
        }
    }
    drop(task);
    Ok(ImportReport {
        experts: ids.len() as u64,
        ids,
        skipped: done,
        archive_id,
    })
}
