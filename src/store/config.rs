//! The store's identity: expert shape, adapted layers, backbone digest.

use serde::{Deserialize, Serialize};

use super::error::{StoreError, StoreResult as Result};

/// Storage type of adapter weights and keys. Only fp16 exists today; the field is
/// persisted so that a later format can add others without guessing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum WeightDtype {
    /// IEEE half precision.
    F16,
}

/// Default shard roll-over size: 1 GiB keeps the number of files and mappings small
/// at tens of millions of experts while compaction still works on bounded units.
pub const DEFAULT_SHARD_SIZE: u64 = 1 << 30;

/// Smallest shard size accepted (tests use tiny shards to exercise roll-over).
pub const MIN_SHARD_SIZE: u64 = 64 * 1024;

/// Shape and identity of every expert in a store. Persisted at creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Hidden size of the backbone (length of `h`).
    pub d_model: u32,
    /// Length of expert keys and queries.
    pub key_dim: u32,
    /// Rank of each low-rank adapter.
    pub rank: u32,
    /// Backbone layers that carry adapters, ascending.
    pub layers: Vec<u32>,
    /// Backbone layer whose normalised input gives the queries (≤ the first adapted layer).
    pub query_layer: u32,
    /// Weight storage type.
    pub dtype: WeightDtype,
    /// Digest of the backbone the experts were trained against ("" when unknown).
    pub backbone_digest: String,
    /// Shard roll-over size in bytes.
    pub shard_size: u64,
}

impl StoreConfig {
    /// A config for experts of the given shape on the given adapted layers. The query
    /// layer defaults to the first adapted layer.
    pub fn new(d_model: u32, key_dim: u32, rank: u32, layers: Vec<u32>) -> Self {
        let query_layer = layers.first().copied().unwrap_or(0);
        StoreConfig {
            d_model,
            key_dim,
            rank,
            layers,
            query_layer,
            dtype: WeightDtype::F16,
            backbone_digest: String::new(),
            shard_size: DEFAULT_SHARD_SIZE,
        }
    }

    /// Sets the query layer.
    pub fn with_query_layer(mut self, layer: u32) -> Self {
        self.query_layer = layer;
        self
    }

    /// Sets the backbone digest.
    pub fn with_backbone_digest(mut self, digest: impl Into<String>) -> Self {
        self.backbone_digest = digest.into();
        self
    }

    /// Sets the shard roll-over size.
    pub fn with_shard_size(mut self, bytes: u64) -> Self {
        self.shard_size = bytes;
        self
    }

    /// Number of adapted layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Checks that the config can describe a store.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, reason: &str| {
            Err(StoreError::InvalidConfig {
                field,
                reason: reason.to_string(),
            })
        };
        // Bounds keep every record offset inside u32 arithmetic and a shard mapping sane.
        if self.d_model == 0 || self.d_model > 65_536 {
            return bad("d_model", "must be in 1..=65536");
        }
        if self.key_dim == 0 || self.key_dim > 65_536 {
            return bad("key_dim", "must be in 1..=65536");
        }
        if self.rank == 0 || self.rank > 1024 {
            return bad("rank", "must be in 1..=1024");
        }
        if self.layers.is_empty() || self.layers.len() > 256 {
            return bad("layers", "must name 1..=256 adapted layers");
        }
        if self.layers.windows(2).any(|w| w[0] >= w[1]) {
            return bad("layers", "must be strictly ascending");
        }
        if self.query_layer > self.layers[0] {
            return bad(
                "query_layer",
                "must not be above the first adapted layer (queries are needed there)",
            );
        }
        if self.shard_size < MIN_SHARD_SIZE || self.shard_size > (1 << 40) {
            return bad("shard_size", "must be between 64 KiB and 1 TiB");
        }
        Ok(())
    }

    /// Compares an explicitly given config with the stored one, naming the first
    /// differing field.
    pub(crate) fn check_matches(&self, given: &StoreConfig) -> Result<()> {
        match self.first_difference(given, true) {
            None => Ok(()),
            Some((field, stored, given)) => Err(StoreError::ConfigMismatch {
                field,
                stored,
                given,
            }),
        }
    }

    /// The first field in which experts of `self` and `other` differ, as
    /// `(field, self's value, other's value)`; `None` when experts of one fit a store of
    /// the other. `shard_size` is a storage choice of each store, not part of an
    /// expert's identity, so it is ignored (archives move experts between stores).
    pub fn expert_difference(&self, other: &StoreConfig) -> Option<(&'static str, String, String)> {
        self.first_difference(other, false)
    }

    fn first_difference(
        &self,
        other: &StoreConfig,
        with_storage: bool,
    ) -> Option<(&'static str, String, String)> {
        fn cmp<T: PartialEq + std::fmt::Debug>(
            field: &'static str,
            a: &T,
            b: &T,
        ) -> Option<(&'static str, String, String)> {
            (a != b).then(|| (field, format!("{a:?}"), format!("{b:?}")))
        }
        cmp("d_model", &self.d_model, &other.d_model)
            .or_else(|| cmp("key_dim", &self.key_dim, &other.key_dim))
            .or_else(|| cmp("rank", &self.rank, &other.rank))
            .or_else(|| cmp("layers", &self.layers, &other.layers))
            .or_else(|| cmp("query_layer", &self.query_layer, &other.query_layer))
            .or_else(|| cmp("dtype", &self.dtype, &other.dtype))
            .or_else(|| {
                cmp(
                    "backbone_digest",
                    &self.backbone_digest,
                    &other.backbone_digest,
                )
            })
            .or_else(|| {
                with_storage
                    .then(|| cmp("shard_size", &self.shard_size, &other.shard_size))
                    .flatten()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let ok = StoreConfig::new(576, 576, 8, vec![10, 20]);
        assert!(ok.validate().is_ok());
        let e = StoreConfig::new(576, 576, 0, vec![1])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("rank"), "{e}");
        let e = StoreConfig::new(576, 576, 8, vec![3, 3])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("layers"), "{e}");
        let e = StoreConfig::new(576, 576, 8, vec![3])
            .with_query_layer(4)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("query_layer"), "{e}");
    }

    #[test]
    fn mismatch_names_the_field() {
        let a = StoreConfig::new(576, 576, 8, vec![10, 20]);
        let b = a.clone().with_backbone_digest("abc");
        let e = a.check_matches(&b).unwrap_err();
        match e {
            StoreError::ConfigMismatch { field, .. } => assert_eq!(field, "backbone_digest"),
            other => panic!("unexpected {other}"),
        }
        assert!(a.check_matches(&a.clone()).is_ok());
        let c = a.clone().with_shard_size(1 << 20);
        assert!(a.check_matches(&c).is_err());
        assert_eq!(a.expert_difference(&c), None);
        assert_eq!(
            a.expert_difference(&b).map(|d| d.0),
            Some("backbone_digest")
        );
    }
}
