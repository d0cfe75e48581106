//! The adapter hook that puts a request's selection into the backbone's forward pass:
//! at every adapted layer it runs the fused selection + apply operator over the
//! request's candidates, reading their weights straight from the store's mappings.

use std::collections::HashMap;

use candle_core::Tensor;
use parking_lot::Mutex;

use super::{Candidates, SelectionParams, TokenAssignments};
use crate::kernels::{fused_apply_with, FusedOptions};
use crate::model::AdapterHook;

/// [`AdapterHook`] over one request's candidates.
pub struct ExpertHook {
    candidates: Candidates,
    params: SelectionParams,
    /// Backbone layer index → position in the store config's `layers`.
    layer_pos: HashMap<usize, usize>,
    options: FusedOptions,
    /// Assignments per backbone layer of the last call, when recording.
    recorded: Mutex<Vec<(usize, TokenAssignments)>>,
}

impl std::fmt::Debug for ExpertHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertHook")
            .field("candidates", &self.candidates.len())
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl ExpertHook {
    /// A hook for `candidates` on the adapted backbone layers `layers` (in the order of
    /// the store config, which is the order of each expert's layer weights).
    pub fn new(candidates: Candidates, params: SelectionParams, layers: &[u32]) -> Self {
        ExpertHook {
            candidates,
            params,
            layer_pos: layers
                .iter()
                .enumerate()
                .map(|(i, &l)| (l as usize, i))
                .collect(),
            options: FusedOptions::default(),
            recorded: Mutex::new(Vec::new()),
        }
    }

    /// Keeps each call's per-token assignments (for `--explain`).
    pub fn recording(mut self) -> Self {
        self.options.record = true;
        self
    }

    /// The candidates.
    pub fn candidates(&self) -> &Candidates {
        &self.candidates
    }

    /// Takes the recorded (backbone layer, assignments) of the calls so far.
    pub fn take_recorded(&self) -> Vec<(usize, TokenAssignments)> {
        std::mem::take(&mut *self.recorded.lock())
    }

    fn apply_2d(
        &self,
        pos: usize,
        h: &Tensor,
        hn: &Tensor,
        q: &Tensor,
    ) -> candle_core::Result<(Tensor, Option<TokenAssignments>)> {
        let weights = self
            .candidates
            .layer_weights(pos)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        fused_apply_with(
            h,
            hn,
            q,
            self.candidates.keys(),
            weights,
            &self.params,
            &self.options,
        )
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

impl AdapterHook for ExpertHook {
    fn apply(
        &self,
        layer: usize,
        h: &Tensor,
        h_norm: &Tensor,
        queries: &Tensor,
    ) -> candle_core::Result<Tensor> {
        // No candidates (an empty store) or a layer without adapters: nothing to add,
        // and the residual stream stays bit-identical.
        let Some(&pos) = self.layer_pos.get(&layer) else {
            return Ok(h.clone());
        };
        if self.candidates.is_empty() {
            return Ok(h.clone());
        }
        let (b, _, _) = h.dims3()?;
        let mut rows = Vec::with_capacity(b);
        for i in 0..b {
            let (out, rec) = self.apply_2d(
                pos,
                &h.get(i)?.contiguous()?,
                &h_norm.get(i)?.contiguous()?,
                &queries.get(i)?.contiguous()?,
            )?;
            if let Some(rec) = rec {
                self.recorded.lock().push((layer, rec));
            }
            rows.push(out);
        }
        Tensor::stack(&rows, 0)
    }
}
