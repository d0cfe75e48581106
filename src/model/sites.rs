//! Adapter sites: where memory experts act inside the backbone's forward pass.
//!
//! The backbone does not know how experts are selected or applied; it calls an
//! [`AdapterHook`] at each adapted layer. The fused operator implements the
//! hook; this module must not depend on it.

use candle_core::Tensor;

use super::error::{ModelError, ModelResult};

/// Called by the backbone at each adapted layer.
///
/// Semantics (DESIGN.md §1): at adapted layer ℓ,
/// `h_{ℓ+1} = Block_ℓ(h_ℓ) + Σ_j w_j B_j A_j h̃_ℓ`, where `h̃_ℓ` is the layer's
/// `input_layernorm` output. The hook computes the Σ term and returns `h + Σ`.
/// A hook that selects nothing must return `h` unchanged, which leaves the
/// backbone's output bit-identical to running without a hook.
///
/// All tensors are rank 3, `[batch, positions, d_model]`, on the model's device
/// and in f32; positions are the ones being processed in this call (the whole
/// prompt at prefill, one token per decode step).
pub trait AdapterHook {
    /// Applies the adapters of `layer`.
    ///
    /// * `pos` — absolute position of the first of these positions (every batch row
    ///   starts at the same position).
    /// * `h` — residual stream after the layer's block.
    /// * `h_norm` — the layer's normalised input (`input_layernorm(h_ℓ)`).
    /// * `queries` — per-token queries of the same positions from the query layer.
    ///
    /// Returns the new residual stream, same shape as `h`.
    fn apply(
        &self,
        layer: usize,
        pos: usize,
        h: &Tensor,
        h_norm: &Tensor,
        queries: &Tensor,
    ) -> candle_core::Result<Tensor>;
}

impl<T: AdapterHook + ?Sized> AdapterHook for &T {
    fn apply(
        &self,
        layer: usize,
        pos: usize,
        h: &Tensor,
        h_norm: &Tensor,
        queries: &Tensor,
    ) -> candle_core::Result<Tensor> {
        (**self).apply(layer, pos, h, h_norm, queries)
    }
}

/// Which layers carry adapters and which layer produces the queries.
///
/// This mirrors the store's configuration; [`AdapterSites::check_fits`] says
/// whether a store fits a given model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSites {
    query_layer: usize,
    adapted_layers: Vec<usize>,
}

impl AdapterSites {
    /// Builds the sites. `adapted_layers` is sorted and must be non-empty,
    /// without duplicates, and `query_layer` must not come after the first
    /// adapted layer (the queries are needed when the first adapter runs).
    pub fn new(query_layer: usize, adapted_layers: &[usize]) -> ModelResult<Self> {
        let mut layers = adapted_layers.to_vec();
        layers.sort_unstable();
        let Some(&first) = layers.first() else {
            return Err(ModelError::SitesMismatch("no adapted layers".into()));
        };
        if layers.windows(2).any(|w| w[0] == w[1]) {
            return Err(ModelError::SitesMismatch(format!(
                "adapted layers {adapted_layers:?} contain a duplicate"
            )));
        }
        if query_layer > first {
            return Err(ModelError::SitesMismatch(format!(
                "query layer {query_layer} comes after the first adapted layer {first}"
            )));
        }
        Ok(Self {
            query_layer,
            adapted_layers: layers,
        })
    }

    /// The layer whose normalised input is the per-token query.
    pub fn query_layer(&self) -> usize {
        self.query_layer
    }

    /// The adapted layers, ascending.
    pub fn adapted_layers(&self) -> &[usize] {
        &self.adapted_layers
    }

    /// The first adapted layer: layers below it are untouched by adapters, so
    /// their output can be computed once and cached (memory tuning).
    pub fn first_adapted(&self) -> usize {
        // `new` guarantees at least one adapted layer.
        self.adapted_layers
            .first()
            .copied()
            .unwrap_or(self.query_layer)
    }

    /// Whether `layer` carries adapters.
    pub fn is_adapted(&self, layer: usize) -> bool {
        self.adapted_layers.binary_search(&layer).is_ok()
    }

    /// Checks that a store with these sites and width `d_model` fits a model
    /// of `num_layers` layers and width `model_d_model`.
    pub fn check_fits(
        &self,
        d_model: usize,
        model_d_model: usize,
        num_layers: usize,
    ) -> ModelResult<()> {
        if d_model != model_d_model {
            return Err(ModelError::SitesMismatch(format!(
                "store d_model {d_model} but the model's is {model_d_model}"
            )));
        }
        if let Some(&last) = self.adapted_layers.last() {
            if last >= num_layers {
                return Err(ModelError::SitesMismatch(format!(
                    "adapted layer {last} but the model has layers 0..{num_layers}"
                )));
            }
        }
        if self.query_layer >= num_layers {
            return Err(ModelError::SitesMismatch(format!(
                "query layer {} but the model has layers 0..{num_layers}",
                self.query_layer
            )));
        }
        Ok(())
    }
}

/// Sites plus the hook to call at them, for one forward call.
#[derive(Clone, Copy)]
pub struct Adapters<'a> {
    /// Where the hook is called.
    pub sites: &'a AdapterSites,
    /// What is called.
    pub hook: &'a dyn AdapterHook,
}

impl std::fmt::Debug for Adapters<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapters")
            .field("sites", self.sites)
            .finish_non_exhaustive()
    }
}

/// A hook that changes nothing (the bare backbone, through the adapter path).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopHook;

impl AdapterHook for NoopHook {
    fn apply(
        &self,
        _: usize,
        _: usize,
        h: &Tensor,
        _: &Tensor,
        _: &Tensor,
    ) -> candle_core::Result<Tensor> {
        Ok(h.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_validate() {
        let s = AdapterSites::new(2, &[20, 5, 10]).expect("valid");
        assert_eq!(s.adapted_layers(), &[5, 10, 20]);
        assert_eq!(s.first_adapted(), 5);
        assert!(s.is_adapted(10) && !s.is_adapted(11));
        assert!(AdapterSites::new(6, &[5]).is_err());
        assert!(AdapterSites::new(0, &[]).is_err());
        assert!(AdapterSites::new(0, &[3, 3]).is_err());
        assert!(s.check_fits(576, 576, 30).is_ok());
        assert!(matches!(
            s.check_fits(512, 576, 30),
            Err(ModelError::SitesMismatch(_))
        ));
        assert!(matches!(
            s.check_fits(576, 576, 20),
            Err(ModelError::SitesMismatch(_))
        ));
    }
}
