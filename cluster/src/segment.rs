//! Segment objects: the immutable unit of bulk data in object storage.
//!
//! A segment holds a batch of one shard's experts (ids, keys, fp16 adapters, metadata)
//! and tombstones (ids deleted by this segment from earlier ones). It is written once
//! under a unique name and never modified; a shard's state is its manifest's segments
//! applied in order. Format version 1, integers little-endian:
//!
//! ```text
//! header    "MOMESEGM" | version u32 | kind u8 | 3 zero bytes | shard u32
//!           | n_experts u32 | n_tombstones u32 | config_len u32 | generation u64
//!           | 5 sections × (offset u64, length u64, CRC-32C u32, zero u32)
//!           | config JSON (config_len bytes) | CRC-32C of every header byte before it
//! ids       n_experts × u64, strictly ascending
//! keys      n_experts × key_dim fp16
//! weights   n_experts × (for each adapted layer: A rank×d_model, B d_model×rank) fp16
//! meta      n_experts × (len u32 | JSON {provenance, created_at_ms})
//! tombstones n_tombstones × u64, strictly ascending, disjoint from ids
//! trailer   "MSEGEND\0" | total length u64
//! ```
//!
//! Every byte is covered: the header by its CRC, each section by its own CRC and by
//! offsets that must tile the file exactly, the trailer by its magic and the length it
//! repeats. Sections are fixed-stride (but `meta`) so that one expert's key or weights
//! can be located by arithmetic, which keeps range reads possible later.

use half::f16;
use mome::{AdapterPair, NewExpert, Provenance, StoreConfig};
use serde::{Deserialize, Serialize};

/// File magic.
pub const MAGIC: &[u8; 8] = b"MOMESEGM";
/// Trailer magic.
pub const TRAILER: &[u8; 8] = b"MSEGEND\0";
/// Format version written by this build.
pub const VERSION: u32 = 1;
/// Bytes of the fixed part of the header (before the config JSON).
pub const FIXED_HEADER: usize = 40 + SECTIONS * 24;
/// Largest config JSON accepted.
pub const MAX_CONFIG_LEN: usize = 1 << 20;
/// Largest metadata JSON of one expert accepted.
pub const MAX_META_LEN: usize = 16 << 20;
const SECTIONS: usize = 5;
const TRAILER_LEN: usize = 16;

/// Whether a segment is a base (written by compaction) or a delta (written by a commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SegmentKind {
    /// Result of a compaction: no tombstones, replaces everything before it.
    Base,
    /// One write batch of the shard's owner.
    Delta,
}

impl SegmentKind {
    fn code(self) -> u8 {
        match self {
            SegmentKind::Base => 1,
            SegmentKind::Delta => 2,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(SegmentKind::Base),
            2 => Some(SegmentKind::Delta),
            _ => None,
        }
    }
}

/// What is wrong with a segment's bytes. `offset` is where the problem was found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SegmentError {
    /// The bytes are not a well-formed, intact segment.
    #[error("malformed segment at byte {offset}: {reason}")]
    Malformed {
        /// Byte offset of the problem.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A newer format than this build reads.
    #[error("segment format version {found}; this build reads up to {supported}")]
    UnsupportedVersion {
        /// The file's version.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// The segment's expert shape differs from the cluster's.
    #[error("segment config differs from the cluster's in `{field}`")]
    ConfigMismatch {
        /// The first differing field.
        field: &'static str,
    },
    /// Input to the builder is invalid (dimensions, NaN, duplicate ids).
    #[error("invalid segment input: {reason}")]
    InvalidInput {
        /// What is wrong.
        reason: String,
    },
}

fn malformed(offset: usize, reason: impl Into<String>) -> SegmentError {
    SegmentError::Malformed {
        offset,
        reason: reason.into(),
    }
}

/// One expert as the cluster moves it around: a global id plus what the store keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterExpert {
    /// Cluster-wide id (its shard is `shard_of(id)`).
    pub id: u64,
    /// Key, `key_dim` fp16.
    pub key: Vec<f16>,
    /// One pair per adapted layer.
    pub layers: Vec<AdapterPair>,
    /// Provenance given at insert.
    pub provenance: Provenance,
    /// Milliseconds since the Unix epoch when the insert was accepted by the owner.
    pub created_at_ms: u64,
}

impl ClusterExpert {
    /// The value the embedded store inserts.
    pub fn to_new_expert(&self) -> NewExpert {
        NewExpert {
            key: self.key.clone(),
            layers: self.layers.clone(),
            provenance: self.provenance.clone(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct MetaJson {
    provenance: Provenance,
    created_at_ms: u64,
}

/// Shape of an expert's bytes, derived from a config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Key length.
    pub key_dim: usize,
    /// `rank × d_model`: elements of one A (or B).
    pub mat_len: usize,
    /// Adapted layers.
    pub n_layers: usize,
}

impl Shape {
    /// The shape of a store config's experts.
    pub fn of(config: &StoreConfig) -> Self {
        Shape {
            key_dim: config.key_dim as usize,
            mat_len: config.rank as usize * config.d_model as usize,
            n_layers: config.layers.len(),
        }
    }

    /// Bytes of one key.
    pub fn key_bytes(&self) -> usize {
        self.key_dim * 2
    }

    /// Bytes of one expert's weights (every layer's A and B).
    pub fn weight_bytes(&self) -> usize {
        self.n_layers * 2 * self.mat_len * 2
    }

    /// Checks an expert's dimensions and finiteness.
    pub fn check(&self, e: &ClusterExpert) -> Result<(), SegmentError> {
        let bad = |reason: String| SegmentError::InvalidInput { reason };
        if e.key.len() != self.key_dim {
            return Err(bad(format!(
                "expert {}: key has {} elements, expected {}",
                e.id,
                e.key.len(),
                self.key_dim
            )));
        }
        if e.layers.len() != self.n_layers {
            return Err(bad(format!(
                "expert {}: {} adapted layers, expected {}",
                e.id,
                e.layers.len(),
                self.n_layers
            )));
        }
        for (l, p) in e.layers.iter().enumerate() {
            if p.a.len() != self.mat_len || p.b.len() != self.mat_len {
                return Err(bad(format!(
                    "expert {}: layer {l} A/B have {}/{} elements, expected {}",
                    e.id,
                    p.a.len(),
                    p.b.len(),
                    self.mat_len
                )));
            }
        }
        let finite = e.key.iter().all(|x| x.is_finite())
            && e.layers
                .iter()
                .all(|p| p.a.iter().chain(&p.b).all(|x| x.is_finite()));
        if !finite {
            return Err(bad(format!("expert {}: non-finite value", e.id)));
        }
        Ok(())
    }
}

/// Builds one segment's bytes.
pub struct SegmentBuilder {
    kind: SegmentKind,
    shard: u32,
    generation: u64,
    config: StoreConfig,
    shape: Shape,
    experts: Vec<ClusterExpert>,
    tombstones: Vec<u64>,
}

impl SegmentBuilder {
    /// A builder for a segment of `shard`, written for manifest `generation`.
    pub fn new(kind: SegmentKind, shard: u32, generation: u64, config: &StoreConfig) -> Self {
        SegmentBuilder {
            kind,
            shard,
            generation,
            config: config.clone(),
            shape: Shape::of(config),
            experts: Vec::new(),
            tombstones: Vec::new(),
        }
    }

    /// Adds an expert (checked against the config's shape).
    pub fn push(&mut self, expert: ClusterExpert) -> Result<(), SegmentError> {
        self.shape.check(&expert)?;
        self.experts.push(expert);
        Ok(())
    }

    /// Adds a tombstone for an id of an earlier segment.
    pub fn tombstone(&mut self, id: u64) {
        self.tombstones.push(id);
    }

    /// Experts added so far.
    pub fn len(&self) -> usize {
        self.experts.len()
    }

    /// Whether nothing (no expert, no tombstone) was added.
    pub fn is_empty(&self) -> bool {
        self.experts.is_empty() && self.tombstones.is_empty()
    }

    /// Bytes of the experts added so far (keys and weights), to bound segment sizes.
    pub fn payload_bytes(&self) -> usize {
        self.experts.len() * (8 + self.shape.key_bytes() + self.shape.weight_bytes())
    }

    /// The segment's bytes. Ids are sorted; duplicates, or an id both inserted and
    /// tombstoned, are refused, as are tombstones in a base.
    pub fn finish(mut self) -> Result<Vec<u8>, SegmentError> {
        let bad = |reason: String| SegmentError::InvalidInput { reason };
        self.experts.sort_by_key(|e| e.id);
        self.tombstones.sort_unstable();
        if let Some(w) = self.experts.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(bad(format!("expert id {} appears twice", w[0].id)));
        }
        if let Some(w) = self.tombstones.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(format!("tombstone {} appears twice", w[0])));
        }
        if self.kind == SegmentKind::Base && !self.tombstones.is_empty() {
            return Err(bad("a base segment carries no tombstones".into()));
        }
        if let Some(t) = self
            .tombstones
            .iter()
            .find(|t| self.experts.binary_search_by_key(*t, |e| e.id).is_ok())
        {
            return Err(bad(format!("id {t} is both inserted and tombstoned")));
        }
        let n = self.experts.len();
        let config = serde_json::to_vec(&self.config)
            .map_err(|e| bad(format!("config does not serialise: {e}")))?;
        if config.len() > MAX_CONFIG_LEN {
            return Err(bad("config JSON too long".into()));
        }
        let ids: Vec<u8> = self
            .experts
            .iter()
            .flat_map(|e| e.id.to_le_bytes())
            .collect();
        let mut keys = Vec::with_capacity(n * self.shape.key_bytes());
        let mut weights = Vec::with_capacity(n * self.shape.weight_bytes());
        let mut meta = Vec::new();
        for e in &self.experts {
            put_f16(&mut keys, &e.key);
            for p in &e.layers {
                put_f16(&mut weights, &p.a);
                put_f16(&mut weights, &p.b);
            }
            let j = serde_json::to_vec(&MetaJson {
                provenance: e.provenance.clone(),
                created_at_ms: e.created_at_ms,
            })
            .map_err(|e| bad(format!("metadata does not serialise: {e}")))?;
            if j.len() > MAX_META_LEN {
                return Err(bad(format!("expert {}: metadata JSON too long", e.id)));
            }
            meta.extend_from_slice(&(j.len() as u32).to_le_bytes());
            meta.extend_from_slice(&j);
        }
        let tombs: Vec<u8> = self
            .tombstones
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect();
        let sections = [&ids, &keys, &weights, &meta, &tombs];

        let header_len = FIXED_HEADER + config.len() + 4;
        let total: usize =
            header_len + sections.iter().map(|s| s.len()).sum::<usize>() + TRAILER_LEN;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(self.kind.code());
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.extend_from_slice(&(n as u32).to_le_bytes());
        out.extend_from_slice(&(self.tombstones.len() as u32).to_le_bytes());
        out.extend_from_slice(&(config.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        let mut off = header_len;
        for s in sections {
            out.extend_from_slice(&(off as u64).to_le_bytes());
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(&crc32c::crc32c(s).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            off += s.len();
        }
        out.extend_from_slice(&config);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        for s in sections {
            out.extend_from_slice(s);
        }
        out.extend_from_slice(TRAILER);
        out.extend_from_slice(&(total as u64).to_le_bytes());
        debug_assert_eq!(out.len(), total);
        Ok(out)
    }
}

fn put_f16(out: &mut Vec<u8>, v: &[f16]) {
    for x in v {
        out.extend_from_slice(&x.to_bits().to_le_bytes());
    }
}

fn get_f16(b: &[u8]) -> Vec<f16> {
    b.chunks_exact(2)
        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
        .collect()
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, SegmentError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| malformed(at, "truncated"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, SegmentError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| malformed(at, "truncated"))
}

/// A checked, zero-copy view of a segment's bytes.
#[derive(Debug)]
pub struct SegmentView<'a> {
    bytes: &'a [u8],
    /// Base or delta.
    pub kind: SegmentKind,
    /// Shard the segment belongs to.
    pub shard: u32,
    /// Manifest generation it was written for.
    pub generation: u64,
    /// The expert shape it was written with.
    pub config: StoreConfig,
    shape: Shape,
    n: usize,
    n_tomb: usize,
    sections: [(usize, usize); SECTIONS],
    meta_offsets: Vec<(usize, usize)>,
}

impl<'a> SegmentView<'a> {
    /// Parses and checks every checksum, length and ordering rule. Nothing is
    /// allocated in proportion to a length the bytes claim before it is checked
    /// against the bytes actually present.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, SegmentError> {
        if bytes.len() < FIXED_HEADER + 4 + TRAILER_LEN {
            return Err(malformed(bytes.len(), "shorter than a header and trailer"));
        }
        if &bytes[0..8] != MAGIC {
            return Err(malformed(0, "bad magic"));
        }
        let version = u32_at(bytes, 8)?;
        let config_len = u32_at(bytes, 28)? as usize;
        if config_len > MAX_CONFIG_LEN {
            return Err(malformed(28, "config length out of bounds"));
        }
        let header_len = FIXED_HEADER + config_len + 4;
        if bytes.len() < header_len + TRAILER_LEN {
            return Err(malformed(bytes.len(), "truncated header"));
        }
        let crc = u32_at(bytes, header_len - 4)?;
        if crc32c::crc32c(&bytes[..header_len - 4]) != crc {
            return Err(malformed(header_len - 4, "header checksum mismatch"));
        }
        if version != VERSION {
            return Err(SegmentError::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let kind = SegmentKind::from_code(bytes[12]).ok_or_else(|| malformed(12, "bad kind"))?;
        if bytes[13..16] != [0, 0, 0] {
            return Err(malformed(13, "reserved bytes not zero"));
        }
        let shard = u32_at(bytes, 16)?;
        let n = u32_at(bytes, 20)? as usize;
        let n_tomb = u32_at(bytes, 24)? as usize;
        let generation = u64_at(bytes, 32)?;
        let config: StoreConfig = serde_json::from_slice(&bytes[FIXED_HEADER..header_len - 4])
            .map_err(|e| malformed(FIXED_HEADER, format!("config JSON: {e}")))?;
        config
            .validate()
            .map_err(|e| malformed(FIXED_HEADER, format!("config: {e}")))?;
        let shape = Shape::of(&config);

        // Trailer: magic and the total length.
        let end = bytes.len() - TRAILER_LEN;
        if &bytes[end..end + 8] != TRAILER {
            return Err(malformed(end, "bad trailer magic"));
        }
        if u64_at(bytes, end + 8)? != bytes.len() as u64 {
            return Err(malformed(
                end + 8,
                "length in trailer differs from the object's",
            ));
        }

        // Sections tile [header_len, end) exactly, with the lengths the counts imply.
        let expected = [
            n.checked_mul(8),
            n.checked_mul(shape.key_bytes()),
            n.checked_mul(shape.weight_bytes()),
            None,
            n_tomb.checked_mul(8),
        ];
        let mut sections = [(0usize, 0usize); SECTIONS];
        let mut at = header_len;
        for (i, exp) in expected.iter().enumerate() {
            let base = 40 + i * 24;
            let off = u64_at(bytes, base)?;
            let len = u64_at(bytes, base + 8)?;
            let crc = u32_at(bytes, base + 16)?;
            if off != at as u64 {
                return Err(malformed(
                    base,
                    format!("section {i} does not start where the previous ends"),
                ));
            }
            let len = usize::try_from(len).map_err(|_| malformed(base + 8, "section too long"))?;
            if let Some(e) = exp {
                if *e != len {
                    return Err(malformed(
                        base + 8,
                        format!("section {i} length does not match the counts"),
                    ));
                }
            }
            let stop = at
                .checked_add(len)
                .filter(|s| *s <= end)
                .ok_or_else(|| malformed(base + 8, format!("section {i} runs past the end")))?;
            if crc32c::crc32c(&bytes[at..stop]) != crc {
                return Err(malformed(at, format!("section {i} checksum mismatch")));
            }
            sections[i] = (at, len);
            at = stop;
        }
        if at != end {
            return Err(malformed(
                at,
                "bytes between the last section and the trailer",
            ));
        }

        let ids = &bytes[sections[0].0..sections[0].0 + sections[0].1];
        let tombs = &bytes[sections[4].0..sections[4].0 + sections[4].1];
        let ascending = |b: &[u8]| {
            let v: Vec<u64> = b
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            v.windows(2).all(|w| w[0] < w[1])
        };
        if !ascending(ids) {
            return Err(malformed(sections[0].0, "ids not strictly ascending"));
        }
        if !ascending(tombs) {
            return Err(malformed(
                sections[4].0,
                "tombstones not strictly ascending",
            ));
        }
        if kind == SegmentKind::Base && n_tomb > 0 {
            return Err(malformed(24, "a base segment carries tombstones"));
        }

        // Metadata records: n of them, exactly filling the section.
        let (moff, mlen) = sections[3];
        let mut meta_offsets = Vec::with_capacity(n.min(mlen / 4));
        let mut p = moff;
        for i in 0..n {
            let j = u32_at(bytes, p)? as usize;
            if j > MAX_META_LEN || p + 4 + j > moff + mlen {
                return Err(malformed(
                    p,
                    format!("metadata of expert {i} runs past its section"),
                ));
            }
            meta_offsets.push((p + 4, j));
            p += 4 + j;
        }
        if p != moff + mlen {
            return Err(malformed(p, "metadata section longer than its records"));
        }
        let view = SegmentView {
            bytes,
            kind,
            shard,
            generation,
            config,
            shape,
            n,
            n_tomb,
            sections,
            meta_offsets,
        };
        if let Some(t) = view.tombstones().find(|t| view.position(*t).is_some()) {
            return Err(malformed(
                sections[4].0,
                format!("id {t} both inserted and tombstoned"),
            ));
        }
        // Metadata JSON must parse (checked once here so that reads cannot fail later).
        for i in 0..n {
            view.meta_json(i)?;
        }
        Ok(view)
    }

    /// Number of experts.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the segment holds no expert.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Number of tombstones.
    pub fn tombstone_count(&self) -> usize {
        self.n_tomb
    }

    /// Checks that the segment was written for experts of `config`'s shape.
    pub fn check_config(&self, config: &StoreConfig) -> Result<(), SegmentError> {
        let c = &self.config;
        let field = if c.d_model != config.d_model {
            Some("d_model")
        } else if c.key_dim != config.key_dim {
            Some("key_dim")
        } else if c.rank != config.rank {
            Some("rank")
        } else if c.layers != config.layers {
            Some("layers")
        } else if c.query_layer != config.query_layer {
            Some("query_layer")
        } else if c.backbone_digest != config.backbone_digest {
            Some("backbone_digest")
        } else {
            None
        };
        match field {
            Some(field) => Err(SegmentError::ConfigMismatch { field }),
            None => Ok(()),
        }
    }

    /// Id of the `i`-th expert (ascending order).
    pub fn id(&self, i: usize) -> u64 {
        let at = self.sections[0].0 + i * 8;
        let b = &self.bytes[at..at + 8];
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Every expert id, ascending.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.n).map(|i| self.id(i))
    }

    /// Position of `id` among the experts.
    pub fn position(&self, id: u64) -> Option<usize> {
        let (mut lo, mut hi) = (0usize, self.n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.id(mid).cmp(&id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// Tombstoned ids, ascending.
    pub fn tombstones(&self) -> impl Iterator<Item = u64> + '_ {
        let (off, len) = self.sections[4];
        self.bytes[off..off + len]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
    }

    /// Key of the `i`-th expert.
    pub fn key(&self, i: usize) -> Vec<f16> {
        let kb = self.shape.key_bytes();
        let at = self.sections[1].0 + i * kb;
        get_f16(&self.bytes[at..at + kb])
    }

    fn meta_json(&self, i: usize) -> Result<MetaJson, SegmentError> {
        let (at, len) = self.meta_offsets[i];
        serde_json::from_slice(&self.bytes[at..at + len])
            .map_err(|e| malformed(at, format!("metadata JSON of expert {i}: {e}")))
    }

    /// The `i`-th expert, copied out.
    pub fn expert(&self, i: usize) -> Result<ClusterExpert, SegmentError> {
        let wb = self.shape.weight_bytes();
        let mut at = self.sections[2].0 + i * wb;
        let m = self.shape.mat_len * 2;
        let mut layers = Vec::with_capacity(self.shape.n_layers);
        for _ in 0..self.shape.n_layers {
            let a = get_f16(&self.bytes[at..at + m]);
            let b = get_f16(&self.bytes[at + m..at + 2 * m]);
            layers.push(AdapterPair { a, b });
            at += 2 * m;
        }
        let meta = self.meta_json(i)?;
        Ok(ClusterExpert {
            id: self.id(i),
            key: self.key(i),
            layers,
            provenance: meta.provenance,
            created_at_ms: meta.created_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StoreConfig {
        StoreConfig::new(8, 4, 2, vec![1])
    }

    fn expert(id: u64) -> ClusterExpert {
        let v = |n: usize, s: f32| (0..n).map(|i| f16::from_f32(s + i as f32 / 8.0)).collect();
        ClusterExpert {
            id,
            key: v(4, id as f32),
            layers: vec![AdapterPair {
                a: v(16, 0.5),
                b: v(16, -0.5),
            }],
            provenance: Provenance::fact(format!("p{id}"), "a"),
            created_at_ms: 1000 + id,
        }
    }

    #[test]
    fn round_trip_sorts_ids() {
        let mut b = SegmentBuilder::new(SegmentKind::Delta, 3, 7, &config());
        for id in [9, 2, 5] {
            b.push(expert(id)).unwrap();
        }
        b.tombstone(4);
        b.tombstone(1);
        let bytes = b.finish().unwrap();
        let v = SegmentView::parse(&bytes).unwrap();
        assert_eq!((v.kind, v.shard, v.generation), (SegmentKind::Delta, 3, 7));
        assert_eq!(v.ids().collect::<Vec<_>>(), vec![2, 5, 9]);
        assert_eq!(v.tombstones().collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(v.expert(1).unwrap(), expert(5));
        assert_eq!(v.position(9), Some(2));
        assert_eq!(v.position(3), None);
        v.check_config(&config()).unwrap();
        assert_eq!(
            v.check_config(&StoreConfig::new(8, 4, 3, vec![1])),
            Err(SegmentError::ConfigMismatch { field: "rank" })
        );
    }

    #[test]
    fn refuses_bad_input() {
        let mut b = SegmentBuilder::new(SegmentKind::Delta, 0, 1, &config());
        b.push(expert(1)).unwrap();
        b.push(expert(1)).unwrap();
        assert!(b.finish().is_err());
        let mut b = SegmentBuilder::new(SegmentKind::Delta, 0, 1, &config());
        b.push(expert(1)).unwrap();
        b.tombstone(1);
        assert!(b.finish().is_err());
        let mut b = SegmentBuilder::new(SegmentKind::Base, 0, 1, &config());
        b.tombstone(1);
        assert!(b.finish().is_err());
        let mut e = expert(1);
        e.key.pop();
        assert!(SegmentBuilder::new(SegmentKind::Delta, 0, 1, &config())
            .push(e)
            .is_err());
        let mut e = expert(1);
        e.layers[0].b[3] = f16::NAN;
        assert!(SegmentBuilder::new(SegmentKind::Delta, 0, 1, &config())
            .push(e)
            .is_err());
    }
}
