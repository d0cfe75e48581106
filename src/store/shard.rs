//! Shard files: header encoding, record encoding and checking, the mapped shard handle.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use half::f16;

use super::error::{StoreError, StoreResult as Result};
use super::layout::{RecordLayout, HEADER_SIZE, RECORD_HEADER_SIZE};
use super::mmap::ShardMap;

/// Magic bytes at the start of every shard file.
pub const SHARD_MAGIC: &[u8; 8] = b"MOMESHRD";
/// Magic bytes at the start of every record.
pub const RECORD_MAGIC: &[u8; 4] = b"MREC";
/// Newest shard format this build writes and reads.
pub const SHARD_FORMAT_VERSION: u32 = 1;

/// File name of shard `id` inside the store's `shards/` directory.
pub fn shard_file_name(id: u32) -> String {
    format!("{id:08}.shard")
}

/// Parses a shard id out of a file name written by [`shard_file_name`].
pub fn parse_shard_file_name(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".shard")?;
    if stem.len() != 8 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// What a shard header records about its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    /// Format version.
    pub version: u32,
    /// Shard id.
    pub shard_id: u32,
    /// Geometry of the records.
    pub layout: RecordLayout,
    /// Number of record slots this shard was created with.
    pub capacity_slots: u32,
}

impl ShardHeader {
    /// Header bytes (a full page, zero padded, checksummed).
    pub fn encode(&self) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_SIZE];
        h[0..8].copy_from_slice(SHARD_MAGIC);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        h[16..20].copy_from_slice(&self.shard_id.to_le_bytes());
        h[20..24].copy_from_slice(&(self.layout.record_size as u32).to_le_bytes());
        h[24..28].copy_from_slice(&(self.layout.key_dim as u32).to_le_bytes());
        h[28..32].copy_from_slice(&(self.layout.d_model as u32).to_le_bytes());
        h[32..36].copy_from_slice(&(self.layout.rank as u32).to_le_bytes());
        h[36..40].copy_from_slice(&(self.layout.n_layers as u32).to_le_bytes());
        h[40..44].copy_from_slice(&self.capacity_slots.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks a header read from `path`.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        let not = |reason: String| StoreError::NotAShard {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.len() < HEADER_SIZE {
            return Err(not(format!(
                "file is {} bytes, shorter than the {HEADER_SIZE}-byte header",
                bytes.len()
            )));
        }
        if &bytes[0..8] != SHARD_MAGIC {
            return Err(not("bad magic".into()));
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let crc = u32_at(60);
        if crc32c::crc32c(&bytes[0..60]) != crc {
            return Err(not("header checksum mismatch".into()));
        }
        let version = u32_at(8);
        if version > SHARD_FORMAT_VERSION || version == 0 {
            return Err(StoreError::UnsupportedVersion {
                what: format!("shard file {}", path.display()),
                found: version,
                supported: SHARD_FORMAT_VERSION,
            });
        }
        if u32_at(12) as usize != HEADER_SIZE {
            return Err(not(format!(
                "header size {} (expected {HEADER_SIZE})",
                u32_at(12)
            )));
        }
        let layout = RecordLayout::new(
            u32_at(24) as usize,
            u32_at(28) as usize,
            u32_at(32) as usize,
            u32_at(36) as usize,
        );
        if layout.record_size != u32_at(20) as usize {
            return Err(not(format!(
                "record size {} does not match its geometry ({})",
                u32_at(20),
                layout.record_size
            )));
        }
        Ok(ShardHeader {
            version,
            shard_id: u32_at(16),
            layout,
            capacity_slots: u32_at(40),
        })
    }
}

/// Reads and decodes the header of the shard file at `path`.
pub fn read_header(path: &Path) -> Result<(File, ShardHeader)> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut buf = vec![0u8; HEADER_SIZE];
    let mut got = 0;
    while got < HEADER_SIZE {
        let n = file
            .read_at(&mut buf[got..], got as u64)
            .map_err(|e| StoreError::io(path, e))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    let header = ShardHeader::decode(&buf, path)?;
    Ok((file, header))
}

/// Creates a new, empty shard file (header only, fsynced) and returns it opened for writing.
pub fn create_shard_file(path: &Path, header: &ShardHeader) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| StoreError::io(path, e))?;
    crate::fs::write_all_at(path, &file, &header.encode(), 0)
        .map_err(|e| StoreError::io(path, e))?;
    crate::fs::sync(path, &file, false).map_err(|e| StoreError::io(path, e))?;
    Ok(file)
}

/// Writes one record (header + key + layers) into `buf`, which must be `record_size` long.
pub fn encode_record(
    layout: &RecordLayout,
    id: u64,
    seq: u64,
    key: &[f16],
    layers: &[(&[f16], &[f16])],
    buf: &mut [u8],
) {
    buf.fill(0);
    buf[0..4].copy_from_slice(RECORD_MAGIC);
    buf[8..16].copy_from_slice(&id.to_le_bytes());
    buf[16..24].copy_from_slice(&seq.to_le_bytes());
    buf[layout.key_range()].copy_from_slice(bytemuck::cast_slice(key));
    for (l, (a, b)) in layers.iter().enumerate() {
        buf[layout.a_range(l)].copy_from_slice(bytemuck::cast_slice(a));
        buf[layout.b_range(l)].copy_from_slice(bytemuck::cast_slice(b));
    }
    let crc = crc32c::crc32c(&buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Identity fields of a record as read back from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Expert id written into the record.
    pub id: u64,
    /// Commit sequence of the batch that wrote it.
    pub seq: u64,
}

/// Checks a record's magic and checksum; returns its header fields.
pub fn check_record(bytes: &[u8]) -> std::result::Result<RecordHeader, String> {
    if bytes.len() < RECORD_HEADER_SIZE {
        return Err(format!("record is {} bytes", bytes.len()));
    }
    if &bytes[0..4] != RECORD_MAGIC {
        return Err("bad record magic".into());
    }
    let stored = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let actual = crc32c::crc32c(&bytes[8..]);
    if stored != actual {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[8..16]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[16..24]);
    Ok(RecordHeader {
        id: u64::from_le_bytes(id),
        seq: u64::from_le_bytes(seq),
    })
}

/// An open, mapped shard shared by every snapshot that references it.
pub struct Shard {
    pub(crate) id: u32,
    pub(crate) path: PathBuf,
    pub(crate) layout: RecordLayout,
    pub(crate) capacity_slots: u32,
    map: ShardMap,
    /// One bit per slot: the record's checksum has been verified through this mapping.
    /// Records are immutable once committed, so a verified record stays verified and a
    /// hot expert costs one checksum per process instead of one per read.
    verified: Box<[AtomicU64]>,
    /// Set when compaction has replaced this shard: the file goes when the last
    /// snapshot holding it drops.
    pub(crate) obsolete: AtomicBool,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Shard {
    pub(crate) fn map(file: &File, path: PathBuf, header: &ShardHeader) -> Result<Self> {
        let capacity = header.layout.shard_len(header.capacity_slots) as usize;
        let map = ShardMap::new(file, &path, capacity)?;
        let words = (header.capacity_slots as usize).div_ceil(64);
        Ok(Shard {
            id: header.shard_id,
            path,
            layout: header.layout,
            capacity_slots: header.capacity_slots,
            map,
            verified: (0..words).map(|_| AtomicU64::new(0)).collect(),
            obsolete: AtomicBool::new(false),
        })
    }

    /// The raw bytes of slot `slot` (unchecked).
    pub(crate) fn record_bytes(&self, slot: u32) -> Option<&[u8]> {
        if slot >= self.capacity_slots {
            return None;
        }
        self.map.bytes(
            self.layout.slot_offset(slot) as usize,
            self.layout.record_size,
        )
    }

    /// Verifies slot `slot` holds expert `id` with a good checksum, once per mapping.
    pub(crate) fn verify_slot(&self, slot: u32, id: u64) -> Result<()> {
        if self.is_verified(slot) {
            return Ok(());
        }
        let (word, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
        self.check_slot(slot, id)?;
        if let Some(w) = self.verified.get(word) {
            w.fetch_or(bit, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Whether slot `slot`'s checksum has been verified through this mapping.
    pub(crate) fn is_verified(&self, slot: u32) -> bool {
        let (word, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
        self.verified
            .get(word)
            .is_some_and(|w| w.load(Ordering::Acquire) & bit != 0)
    }

    /// Checks slot `slot` against expert `id` now, bypassing the verified cache.
    pub(crate) fn check_slot(&self, slot: u32, id: u64) -> Result<RecordHeader> {
        let offset = self.layout.slot_offset(slot);
        let corrupt = |reason: String| StoreError::CorruptRecord {
            id,
            shard: self.id,
            offset,
            reason,
        };
        let bytes = self
            .record_bytes(slot)
            .ok_or_else(|| corrupt(format!("slot {slot} outside the shard's capacity")))?;
        let header = check_record(bytes).map_err(corrupt)?;
        if header.id != id {
            return Err(corrupt(format!("record holds expert {}", header.id)));
        }
        Ok(header)
    }

    pub(crate) fn advise_sequential(&self) {
        self.map.advise_sequential();
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(shard = self.id, path = %self.path.display(), error = %e, "could not remove obsolete shard file");
            }
        }
    }
}

/// Casts a byte slice taken from a record section to fp16. Sections start on 64-byte
/// boundaries of a page-aligned mapping and have even length, so this cannot fail for
/// ranges produced by [`RecordLayout`]; an empty slice is returned rather than panicking.
pub(crate) fn as_f16(bytes: &[u8]) -> &[f16] {
    bytemuck::try_cast_slice(bytes).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checks() {
        let h = ShardHeader {
            version: 1,
            shard_id: 7,
            layout: RecordLayout::new(16, 32, 4, 2),
            capacity_slots: 100,
        };
        let bytes = h.encode();
        let p = Path::new("x.shard");
        assert_eq!(ShardHeader::decode(&bytes, p).unwrap(), h);
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(matches!(
            ShardHeader::decode(&bad, p),
            Err(StoreError::NotAShard { .. })
        ));
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        assert!(matches!(
            ShardHeader::decode(&bad, p),
            Err(StoreError::NotAShard { .. })
        ));
        assert!(matches!(
            ShardHeader::decode(&bytes[..100], p),
            Err(StoreError::NotAShard { .. })
        ));
        let mut newer = h;
        newer.version = 9;
        assert!(matches!(
            ShardHeader::decode(&newer.encode(), p),
            Err(StoreError::UnsupportedVersion { found: 9, .. })
        ));
    }

    #[test]
    fn record_round_trip_and_every_byte_is_covered() {
        let layout = RecordLayout::new(3, 5, 2, 1);
        let key: Vec<f16> = (0..3).map(|i| f16::from_f32(i as f32)).collect();
        let a: Vec<f16> = (0..10).map(|i| f16::from_f32(i as f32 * 0.5)).collect();
        let b: Vec<f16> = (0..10).map(|i| f16::from_f32(-(i as f32))).collect();
        let mut buf = vec![0u8; layout.record_size];
        encode_record(&layout, 42, 9, &key, &[(&a, &b)], &mut buf);
        assert_eq!(check_record(&buf).unwrap(), RecordHeader { id: 42, seq: 9 });
        assert_eq!(as_f16(&buf[layout.a_range(0)]), &a[..]);
        for i in 0..buf.len() {
            let mut c = buf.clone();
            c[i] ^= 0x10;
            assert!(check_record(&c).is_err(), "flip at byte {i} not detected");
        }
    }

    #[test]
    fn shard_names() {
        assert_eq!(shard_file_name(12), "00000012.shard");
        assert_eq!(parse_shard_file_name("00000012.shard"), Some(12));
        assert_eq!(parse_shard_file_name("12.shard"), None);
        assert_eq!(parse_shard_file_name("0000001x.shard"), None);
    }
}
