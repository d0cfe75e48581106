//! Expert values going in (`NewExpert`) and coming out (`ExpertRef`, `ExpertMeta`).

use std::sync::Arc;

use half::f16;
use serde::{Deserialize, Serialize};

use super::error::{StoreError, StoreResult as Result};
use super::layout::RecordLayout;
use super::shard::{as_f16, Shard};

/// One adapted layer's low-rank pair, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterPair {
    /// `rank × d_model`, row-major.
    pub a: Vec<f16>,
    /// `d_model × rank`, row-major.
    pub b: Vec<f16>,
}

/// Where an expert came from: the fact it stores and how it was trained.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Provenance {
    /// Prompt of the memorized fact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Answer of the memorized fact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Free text (source, operator note, benchmark tag).
    #[serde(default)]
    pub text: String,
    /// Training loss when the expert was committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_loss: Option<f32>,
    /// Training steps taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// Digest of the backbone it was trained against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone_digest: Option<String>,
    /// Experts this one replaced (the same prompt memorized with another answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<u64>,
}

impl Provenance {
    /// Provenance carrying only a free-text description.
    pub fn text(text: impl Into<String>) -> Self {
        Provenance {
            text: text.into(),
            ..Default::default()
        }
    }

    /// Provenance of a memorized fact.
    pub fn fact(prompt: impl Into<String>, answer: impl Into<String>) -> Self {
        Provenance {
            prompt: Some(prompt.into()),
            answer: Some(answer.into()),
            ..Default::default()
        }
    }

    /// Adds training figures.
    pub fn with_training(mut self, final_loss: f32, steps: u32) -> Self {
        self.final_loss = Some(final_loss);
        self.steps = Some(steps);
        self
    }

    /// Adds the backbone digest.
    pub fn with_backbone_digest(mut self, digest: impl Into<String>) -> Self {
        self.backbone_digest = Some(digest.into());
        self
    }

    /// Records the experts this one replaces.
    pub fn with_replaces(mut self, ids: Vec<u64>) -> Self {
        self.replaces = ids;
        self
    }
}

/// Metadata stored for an expert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExpertMeta {
    /// Expert id.
    pub id: u64,
    /// Provenance given at insert.
    pub provenance: Provenance,
    /// Milliseconds since the Unix epoch when the insert committed.
    pub created_at_ms: u64,
    /// How often selection has picked the expert (flushed counts).
    pub usage: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct StoredMeta {
    pub v: u8,
    pub provenance: Provenance,
    pub created_at_ms: u64,
}

/// An expert to insert. The store assigns its id.
#[derive(Clone, Debug, PartialEq)]
pub struct NewExpert {
    /// Key vector, `key_dim` long.
    pub key: Vec<f16>,
    /// One pair per adapted layer, in the order of the config's `layers`.
    pub layers: Vec<AdapterPair>,
    /// Where it came from.
    pub provenance: Provenance,
}

impl NewExpert {
    /// Checks dimensions and finiteness against a layout; `pos` names the expert in its batch.
    pub(crate) fn validate(&self, layout: &RecordLayout, pos: usize) -> Result<()> {
        let what = |s: String| format!("expert {pos} in batch: {s}");
        check_len(&self.key, layout.key_dim, || what("key".into()))?;
        check_finite(&self.key, || what("key".into()))?;
        if self.layers.len() != layout.n_layers {
            return Err(StoreError::DimMismatch {
                what: what("number of adapted layers".into()),
                expected: layout.n_layers,
                found: self.layers.len(),
            });
        }
        for (l, p) in self.layers.iter().enumerate() {
            check_len(&p.a, layout.mat_len(), || what(format!("layer {l} A")))?;
            check_len(&p.b, layout.mat_len(), || what(format!("layer {l} B")))?;
            check_finite(&p.a, || what(format!("layer {l} A")))?;
            check_finite(&p.b, || what(format!("layer {l} B")))?;
        }
        Ok(())
    }
}

fn check_len(v: &[f16], expected: usize, what: impl Fn() -> String) -> Result<()> {
    if v.len() == expected {
        Ok(())
    } else {
        Err(StoreError::DimMismatch {
            what: what(),
            expected,
            found: v.len(),
        })
    }
}

fn check_finite(v: &[f16], what: impl Fn() -> String) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(index) => Err(StoreError::NonFinite {
            what: what(),
            index,
        }),
    }
}

/// A zero-copy handle to a stored expert's weights. It keeps the shard's mapping alive,
/// so it stays valid after deletes and compaction.
#[derive(Clone)]
pub struct ExpertRef {
    pub(crate) id: u64,
    pub(crate) shard: Arc<Shard>,
    pub(crate) slot: u32,
}

impl std::fmt::Debug for ExpertRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertRef")
            .field("id", &self.id)
            .field("shard", &self.shard.id)
            .field("slot", &self.slot)
            .finish()
    }
}

impl ExpertRef {
    fn section(&self, range: std::ops::Range<usize>) -> &[f16] {
        let bytes = self.shard.record_bytes(self.slot).unwrap_or(&[]);
        as_f16(bytes.get(range).unwrap_or(&[]))
    }

    /// Geometry of the record (key_dim, d_model, rank, layers).
    pub fn layout(&self) -> &RecordLayout {
        &self.shard.layout
    }

    /// Expert id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Shard holding the record.
    pub fn shard_id(&self) -> u32 {
        self.shard.id
    }

    /// Byte offset of the record in its shard file.
    pub fn offset(&self) -> u64 {
        self.layout().slot_offset(self.slot)
    }

    /// Number of adapted layers.
    pub fn n_layers(&self) -> usize {
        self.layout().n_layers
    }

    /// The key (`key_dim` elements).
    pub fn key(&self) -> &[f16] {
        self.section(self.layout().key_range())
    }

    /// `A` of the `l`-th adapted layer (`rank × d_model`); empty if `l` is out of range.
    pub fn a(&self, l: usize) -> &[f16] {
        if l >= self.n_layers() {
            return &[];
        }
        self.section(self.layout().a_range(l))
    }

    /// `B` of the `l`-th adapted layer (`d_model × rank`); empty if `l` is out of range.
    pub fn b(&self, l: usize) -> &[f16] {
        if l >= self.n_layers() {
            return &[];
        }
        self.section(self.layout().b_range(l))
    }

    /// The whole record as stored (header included), e.g. for export.
    pub fn record_bytes(&self) -> &[u8] {
        self.shard.record_bytes(self.slot).unwrap_or(&[])
    }
}
