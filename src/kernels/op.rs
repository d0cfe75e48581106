//! The candle [`CustomOp3`] wrapper of the fused apply operator.
//!
//! The op runs over `(h, h_norm, scores)` and carries the borrowed adapter weights and
//! the gate parameters.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use parking_lot::Mutex;

use super::cpu::{self, CpuArgs, Elem, Isa};
use super::gate::{SelectionParams, TokenAssignments};
use super::{AdapterWeights, KernelError};

/// Knobs of the fused operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FusedOptions {
    /// Most threads the CPU kernel uses (`None`: rayon's pool size).
    pub max_threads: Option<usize>,
    /// Use the portable (baseline ISA) kernel even if AVX2/FMA/F16C is available;
    /// for tests of that path.
    pub portable: bool,
    /// Keep the per-token selection so that [`FusedApplyOp::take_assignments`]
    /// can return it.
    pub record: bool,
}

/// Fused gate + adapter apply as a candle custom op over `(h, h_norm, scores)`.
///
/// Prefer [`super::fused_apply`], which validates everything with typed errors
/// first. Applied directly (`h.apply_op3_no_bwd(&h_norm, &scores, &op)`), problems come
/// back as candle errors carrying the same message, and the typed error can be
/// retrieved with [`FusedApplyOp::take_error`]. Inference only: no backward.
pub struct FusedApplyOp {
    weights: Arc<dyn AdapterWeights>,
    params: SelectionParams,
    options: FusedOptions,
    last_error: Mutex<Option<KernelError>>,
    recorded: Mutex<Option<TokenAssignments>>,
}

impl std::fmt::Debug for FusedApplyOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedApplyOp")
            .field("candidates", &self.weights.num_candidates())
            .field("rank", &self.weights.rank())
            .field("params", &self.params)
            .field("options", &self.options)
            .finish()
    }
}

impl FusedApplyOp {
    /// An op over the K candidates' adapter `weights`.
    pub fn new(weights: Arc<dyn AdapterWeights>, params: SelectionParams) -> Self {
        Self {
            weights,
            params,
            options: FusedOptions::default(),
            last_error: Mutex::new(None),
            recorded: Mutex::new(None),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: FusedOptions) -> Self {
        self.options = options;
        self
    }

    /// The selection of the last forward pass, if `options.record` was set.
    pub fn take_assignments(&self) -> Option<TokenAssignments> {
        self.recorded.lock().take()
    }

    /// The typed error of the last failed forward pass.
    pub fn take_error(&self) -> Option<KernelError> {
        self.last_error.lock().take()
    }

    fn fail(&self, e: KernelError) -> candle_core::Error {
        let msg = e.to_string();
        *self.last_error.lock() = Some(e);
        candle_core::Error::Msg(msg)
    }

    fn cpu_forward(
        &self,
        h: (&CpuStorage, &Layout),
        h_norm: (&CpuStorage, &Layout),
        scores: (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape), KernelError> {
        let (tokens, d_model) = h.1.shape().dims2()?;
        let (s_tokens, candidates) = scores.1.shape().dims2()?;
        let dims = super::Dims {
            tokens,
            d_model,
            candidates,
        };
        if h_norm.1.dims() != h.1.dims() {
            return Err(KernelError::shape(
                "hidden states",
                h.1.dims(),
                "h_norm",
                h_norm.1.dims(),
            ));
        }
        if s_tokens != tokens {
            return Err(KernelError::shape(
                "hidden states",
                h.1.dims(),
                "scores",
                scores.1.dims(),
            ));
        }
        super::check_weights(&dims, scores.1.dims(), h.1.dims(), self.weights.as_ref())?;
        let CpuStorage::F32(s) = scores.0 else {
            return Err(unsupported("scores", scores.0.dtype(), scores.1.dims()));
        };
        let s = contiguous("scores", s, scores.1)?;
        let isa = if self.options.portable {
            Isa::Portable
        } else {
            Isa::detect()
        };
        let threads = self
            .options
            .max_threads
            .unwrap_or_else(rayon::current_num_threads)
            .clamp(1, rayon::current_num_threads().max(1));
        let mut record = self.options.record.then(TokenAssignments::new);
        let ctx = Ctx {
            dims,
            weights: self.weights.as_ref(),
            params: &self.params,
            isa,
            threads,
        };
        let out = match (h.0, h_norm.0) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                CpuStorage::F32(run(&ctx, [(a, h.1), (b, h_norm.1)], s, record.as_mut())?)
            }
            (CpuStorage::F16(a), CpuStorage::F16(b)) => {
                CpuStorage::F16(run(&ctx, [(a, h.1), (b, h_norm.1)], s, record.as_mut())?)
            }
            (a, b) if a.dtype() != b.dtype() => {
                return Err(KernelError::DtypeMismatch {
                    left_name: "hidden states",
                    left: a.dtype(),
                    left_shape: h.1.dims().to_vec(),
                    right_name: "h_norm",
                    right: b.dtype(),
                    right_shape: h_norm.1.dims().to_vec(),
                })
            }
            (a, _) => return Err(unsupported("hidden states", a.dtype(), h.1.dims())),
        };
        *self.recorded.lock() = record;
        Ok((out, h.1.shape().clone()))
    }
}

fn unsupported(name: &'static str, dtype: candle_core::DType, dims: &[usize]) -> KernelError {
    KernelError::UnsupportedDtype {
        name,
        dtype,
        shape: dims.to_vec(),
        expected: "f32 or f16",
    }
}

struct Ctx<'a> {
    dims: super::Dims,
    weights: &'a dyn AdapterWeights,
    params: &'a SelectionParams,
    isa: Isa,
    threads: usize,
}

/// The contiguous element range a layout covers, or an error naming the input.
fn contiguous<'a, T>(
    name: &'static str,
    data: &'a [T],
    layout: &Layout,
) -> Result<&'a [T], KernelError> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or(KernelError::NotContiguous(name))?;
    data.get(start..end).ok_or(KernelError::NotContiguous(name))
}

fn run<H: Elem + Default + Clone>(
    ctx: &Ctx<'_>,
    [(h, hl), (hn, hnl)]: [(&Vec<H>, &Layout); 2],
    scores: &[f32],
    record: Option<&mut TokenAssignments>,
) -> Result<Vec<H>, KernelError> {
    let args = CpuArgs {
        h: contiguous("hidden states", h, hl)?,
        h_norm: contiguous("h_norm", hn, hnl)?,
        scores,
        tokens: ctx.dims.tokens,
        d_model: ctx.dims.d_model,
        candidates: ctx.dims.candidates,
        weights: ctx.weights,
        params: ctx.params,
        isa: ctx.isa,
        threads: ctx.threads,
    };
    // The output is the one allocation per call: candle takes ownership of it.
    let mut out = vec![H::default(); ctx.dims.tokens * ctx.dims.d_model];
    cpu::apply(&args, &mut out, record)?;
    Ok(out)
}

impl CustomOp3 for FusedApplyOp {
    fn name(&self) -> &'static str {
        "mome-fused-apply"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu_forward((s1, l1), (s2, l2), (s3, l3))
            .map_err(|e| self.fail(e))
    }

    // `cuda_fwd` is left to candle's default: candle's CUDA backend is not built (it
    // forces cudarc's dynamic linking and its kernels take 15 min a build here; measured
    // in docs/CUDA.md), so no tensor can reach it. The CUDA path is dispatched in
    // `fused_apply_with` instead (src/kernels/cuda/runtime.rs); docs/CUDA.md says how it
    // would plug in here.
}
