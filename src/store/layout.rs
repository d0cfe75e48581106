//! Byte layout of one weight record and of a shard file. Pure arithmetic, no I/O.
//!
//! ```text
//! shard file: [header: HEADER_SIZE bytes][record 0][record 1]...   (records are fixed-size)
//! record:     [record header 64 B][key, padded to 64][layer 0: A pad64, B pad64][layer 1 ...]
//! record header: magic "MREC" | crc32c of bytes 8..record_size | expert id u64 | commit seq u64 | zeros
//! ```
//! Every section starts on a 64-byte boundary so fp16 slices can be handed to SIMD code
//! straight from the mapping, and the header size is one page so records inherit the
//! mapping's alignment.

use super::config::StoreConfig;

/// Alignment of records and of every section inside them.
pub const ALIGN: usize = 64;
/// Size of the shard file header (one page).
pub const HEADER_SIZE: usize = 4096;
/// Size of the per-record header.
pub const RECORD_HEADER_SIZE: usize = 64;

fn pad(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Where each part of a record lives, derived from the store config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLayout {
    /// Elements in a key.
    pub key_dim: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Adapter rank.
    pub rank: usize,
    /// Number of adapted layers.
    pub n_layers: usize,
    key_span: usize,
    mat_span: usize,
    /// Total bytes of one record (a multiple of `ALIGN`, 64).
    pub record_size: usize,
}

impl RecordLayout {
    /// Layout for experts of this config's shape.
    pub fn new(key_dim: usize, d_model: usize, rank: usize, n_layers: usize) -> Self {
        let key_span = pad(key_dim * 2);
        let mat_span = pad(rank * d_model * 2);
        let record_size = RECORD_HEADER_SIZE + key_span + n_layers * 2 * mat_span;
        RecordLayout {
            key_dim,
            d_model,
            rank,
            n_layers,
            key_span,
            mat_span,
            record_size,
        }
    }

    /// Layout for a store config.
    pub fn for_config(cfg: &StoreConfig) -> Self {
        Self::new(
            cfg.key_dim as usize,
            cfg.d_model as usize,
            cfg.rank as usize,
            cfg.n_layers(),
        )
    }

    /// Elements in one `A` (rank × d_model) or `B` (d_model × rank).
    pub fn mat_len(&self) -> usize {
        self.rank * self.d_model
    }

    /// Byte range of the key inside a record.
    pub fn key_range(&self) -> std::ops::Range<usize> {
        RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + self.key_dim * 2
    }

    /// Byte range of layer `l`'s `A` inside a record.
    pub fn a_range(&self, l: usize) -> std::ops::Range<usize> {
        let start = RECORD_HEADER_SIZE + self.key_span + l * 2 * self.mat_span;
        start..start + self.mat_len() * 2
    }

    /// Byte range of layer `l`'s `B` inside a record.
    pub fn b_range(&self, l: usize) -> std::ops::Range<usize> {
        let start = RECORD_HEADER_SIZE + self.key_span + (l * 2 + 1) * self.mat_span;
        start..start + self.mat_len() * 2
    }

    /// Bytes of payload actually holding weights and key (what a reader touches).
    pub fn payload_bytes(&self) -> usize {
        self.key_dim * 2 + self.n_layers * 2 * self.mat_len() * 2
    }

    /// Record slots in a shard whose roll-over size is `shard_size` (at least one, so a
    /// record larger than the shard size still fits in a shard of its own).
    pub fn slots_per_shard(&self, shard_size: u64) -> u32 {
        let room = (shard_size as usize).saturating_sub(HEADER_SIZE);
        let slots = (room / self.record_size).max(1);
        u32::try_from(slots).unwrap_or(u32::MAX)
    }

    /// Byte offset of slot `slot` in a shard file.
    pub fn slot_offset(&self, slot: u32) -> u64 {
        HEADER_SIZE as u64 + slot as u64 * self.record_size as u64
    }

    /// File length of a shard holding `slots` committed records.
    pub fn shard_len(&self, slots: u32) -> u64 {
        self.slot_offset(slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_shape_is_aligned_and_about_74kb() {
        let l = RecordLayout::new(576, 576, 8, 4);
        assert_eq!(l.record_size % ALIGN, 0);
        assert_eq!(l.key_range(), 64..64 + 1152);
        for i in 0..4 {
            assert_eq!(l.a_range(i).start % ALIGN, 0);
            assert_eq!(l.b_range(i).start % ALIGN, 0);
            assert!(l.a_range(i).end <= l.b_range(i).start);
        }
        assert!(l.b_range(3).end <= l.record_size);
        // 1152 key bytes + 4 layers × 2 × 9216 bytes, plus the 64-byte header.
        assert_eq!(l.record_size, 64 + 1152 + 8 * 9216);
        assert_eq!(l.payload_bytes(), 1152 + 8 * 9216);
    }

    #[test]
    fn odd_shapes_pad_every_section() {
        let l = RecordLayout::new(7, 13, 3, 2);
        assert_eq!(l.key_range(), 64..78);
        assert_eq!(l.a_range(0).start, 128);
        assert_eq!(l.b_range(0).start, 128 + 128);
        assert_eq!(l.a_range(1).start, 128 + 256);
        assert_eq!(l.record_size, 128 + 4 * 128);
    }

    #[test]
    fn slots_at_least_one() {
        let l = RecordLayout::new(576, 576, 64, 8);
        assert_eq!(l.slots_per_shard(64 * 1024), 1);
        let small = RecordLayout::new(8, 8, 1, 1);
        assert_eq!(small.record_size, 64 + 64 + 64 * 2);
        assert_eq!(small.slots_per_shard(4096 + 256 * 10), 10);
        assert_eq!(small.shard_len(3), 4096 + 3 * 256);
    }
}
