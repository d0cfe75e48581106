//! The fused gate + adapter apply operator, and its autograd reference.
//!
//! # What it computes
//!
//! At an adapted layer, for every token `t`:
//!
//! ```text
//! h_t ← h_t + Σ_j w_tj · B_j (A_j h̃_t)
//! ```
//!
//! * `h` — the residual stream at the site, `[T × d_model]`, f32 or f16;
//! * `h̃` (`h_norm`) — the layer's normalised input, same shape and dtype, which the
//!   adapter reads (residual norms reach ~25 000, so the adapter never sees raw `h`);
//! * `scores` — `[T × K]` f32, the score of each of the K candidates at each token,
//!   computed by the selection rule ([`crate::select`]); `−inf` means "not a
//!   candidate at this token";
//! * the weights `w_tj` are the gate of [`gate`] (penalty, strict threshold τ, top-k,
//!   softmax with temperature);
//! * `A_j` is `rank × d_model`, `B_j` is `d_model × rank`, both row-major fp16;
//!   `z = A_j h̃_t` and `B_j z` are accumulated in f32 and the sum is added to `h_t`
//!   in f32; the output has `h`'s dtype.
//! * A token with no candidate above τ gets its input row back bit for bit.
//!
//! # Two paths
//!
//! * [`fused_apply`] — inference. A candle [`CustomOp3`](candle_core::CustomOp3)
//!   ([`FusedApplyOp`]) over `(h, h_norm, scores)` that *borrows* the candidates'
//!   weights through [`AdapterWeights`] (mmap views or cache slots; no copy into
//!   tensors). The CPU kernel ([`cpu`]) does the gate and both matmuls in one pass per
//!   token block. No backward.
//! * [`reference_apply`] — the same maths from ordinary candle ops (gather, matmul,
//!   `candle_nn::ops::softmax`), with `A`/`B` as tensors so that gradients reach
//!   them, for one row (`[T, d]`) or a batch of rows (`[B, T, d]`, each with its own
//!   candidates). It is the oracle of the fused paths and what memory tuning trains
//!   through.

// Internals (the CPU kernel, launch plans, the op's plumbing) are private; the CUDA
// launcher is public behind the `cuda` feature (re-exported as `mome::cuda`).
mod cpu;
pub mod cuda;
// The pure launch plan is unit-tested on every build; only the `cuda` launcher uses it.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod cuda_plan;
mod gate;
mod math;
mod op;
mod plan;
mod reference;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use half::f16;

pub use gate::{gate, SelectError, Selected, SelectionParams, TokenAssignments};
pub use op::{FusedApplyOp, FusedOptions};
pub use reference::{reference_apply, reference_mix, reference_select, ReferenceSelection};

/// Errors of the apply operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// Two inputs whose shapes must agree do not.
    #[error("shape mismatch: {left_name} {left:?} vs {right_name} {right:?}")]
    ShapeMismatch {
        /// First input's name.
        left_name: &'static str,
        /// First input's shape.
        left: Vec<usize>,
        /// Second input's name.
        right_name: &'static str,
        /// Second input's shape.
        right: Vec<usize>,
    },
    /// An input has the wrong number of dimensions.
    #[error("{name} must be {expected}, got shape {shape:?}")]
    BadRank {
        /// Input name.
        name: &'static str,
        /// Its shape.
        shape: Vec<usize>,
        /// What it should look like.
        expected: &'static str,
    },
    /// Two inputs whose dtypes must agree do not.
    #[error("dtype mismatch: {left_name} {left:?} {left_shape:?} vs {right_name} {right:?} {right_shape:?}")]
    DtypeMismatch {
        /// First input's name.
        left_name: &'static str,
        /// First input's dtype.
        left: DType,
        /// First input's shape.
        left_shape: Vec<usize>,
        /// Second input's name.
        right_name: &'static str,
        /// Second input's dtype.
        right: DType,
        /// Second input's shape.
        right_shape: Vec<usize>,
    },
    /// An input has a dtype the operator does not handle.
    #[error("{name} has dtype {dtype:?} (shape {shape:?}); expected {expected}")]
    UnsupportedDtype {
        /// Input name.
        name: &'static str,
        /// Its dtype.
        dtype: DType,
        /// Its shape.
        shape: Vec<usize>,
        /// Accepted dtypes.
        expected: &'static str,
    },
    /// Inputs live on different devices.
    #[error("device mismatch: {left_name} on {left} vs {right_name} on {right}")]
    DeviceMismatch {
        /// First input's name.
        left_name: &'static str,
        /// First input's device.
        left: String,
        /// Second input's name.
        right_name: &'static str,
        /// Second input's device.
        right: String,
    },
    /// The operator has no kernel for this device yet.
    #[error("the fused apply operator has no kernel for device {0}")]
    UnsupportedDevice(String),
    /// An [`AdapterWeights`] implementation returned a slice of the wrong length.
    #[error("adapter weights: {which} of candidate {candidate} has {len} values, expected {expected} (rank {rank} × d_model {d_model})")]
    WeightSlice {
        /// "A" or "B".
        which: &'static str,
        /// Candidate index.
        candidate: usize,
        /// Length returned.
        len: usize,
        /// Length required.
        expected: usize,
        /// The provider's rank.
        rank: usize,
        /// The provider's d_model.
        d_model: usize,
    },
    /// An input tensor is not laid out contiguously (only when the op is applied
    /// directly; [`fused_apply`] makes inputs contiguous first).
    #[error("{0} is not contiguous")]
    NotContiguous(&'static str),
    /// Bad gate parameters, or a NaN/+inf score.
    #[error(transparent)]
    Select(#[from] SelectError),
    /// An error from candle itself.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An error of the CUDA path (driver, NVRTC, plan, expert cache).
    #[error(transparent)]
    Cuda(#[from] cuda::CudaError),
}

impl KernelError {
    pub(crate) fn shape(
        left_name: &'static str,
        left: &[usize],
        right_name: &'static str,
        right: &[usize],
    ) -> Self {
        Self::ShapeMismatch {
            left_name,
            left: left.to_vec(),
            right_name,
            right: right.to_vec(),
        }
    }
}

/// Borrowed fp16 adapter weights of the K candidates at one layer.
///
/// Implemented by the store's candidate handles (views into the shard mmap or the
/// expert cache) so that the operator reads weights where they already are.
/// Implementations must return slices of exactly `rank × d_model` elements; the
/// operator checks and reports [`KernelError::WeightSlice`] otherwise.
pub trait AdapterWeights: Send + Sync {
    /// Number of candidates K (must equal the number of keys).
    fn num_candidates(&self) -> usize;
    /// Adapter rank r.
    fn rank(&self) -> usize;
    /// Model width.
    fn d_model(&self) -> usize;
    /// A of candidate `j` for this layer, `rank × d_model`, row-major fp16.
    fn a(&self, j: usize) -> &[f16];
    /// B of candidate `j`, `d_model × rank`, row-major fp16.
    fn b(&self, j: usize) -> &[f16];
}

/// Adapter weights owned in two flat buffers; for tests, benches and small tools.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedAdapters {
    rank: usize,
    d_model: usize,
    candidates: usize,
    a: Vec<f16>,
    b: Vec<f16>,
}

impl OwnedAdapters {
    /// Wraps `a` (`K × rank × d_model`) and `b` (`K × d_model × rank`), row-major.
    pub fn new(
        candidates: usize,
        rank: usize,
        d_model: usize,
        a: Vec<f16>,
        b: Vec<f16>,
    ) -> Result<Self, KernelError> {
        let want = [candidates, rank, d_model];
        let per = rank.saturating_mul(d_model);
        if a.len() != candidates.saturating_mul(per) {
            return Err(KernelError::shape(
                "A buffer",
                &[a.len()],
                "[K, rank, d_model]",
                &want,
            ));
        }
        if b.len() != a.len() {
            return Err(KernelError::shape(
                "B buffer",
                &[b.len()],
                "[K, d_model, rank]",
                &[candidates, d_model, rank],
            ));
        }
        Ok(Self {
            rank,
            d_model,
            candidates,
            a,
            b,
        })
    }

    /// Random weights (uniform in ±`scale`), deterministic in `seed`.
    pub fn random(candidates: usize, rank: usize, d_model: usize, scale: f32, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = candidates * rank * d_model;
        let mut gen = |_| f16::from_f32(rng.random_range(-scale..=scale));
        let a = (0..n).map(&mut gen).collect();
        let b = (0..n).map(&mut gen).collect();
        Self {
            rank,
            d_model,
            candidates,
            a,
            b,
        }
    }

    /// Copies `A` (`[K, rank, d_model]`) and `B` (`[K, d_model, rank]`) tensors of
    /// any float dtype, rounding to fp16.
    pub fn from_tensors(a: &Tensor, b: &Tensor) -> Result<Self, KernelError> {
        let (k, rank, d) = a.dims3().map_err(|_| KernelError::BadRank {
            name: "A",
            shape: a.dims().to_vec(),
            expected: "[K, rank, d_model]",
        })?;
        if b.dims() != [k, d, rank] {
            return Err(KernelError::shape("A", a.dims(), "B", b.dims()));
        }
        let flat = |t: &Tensor| -> Result<Vec<f16>, KernelError> {
            Ok(t.to_dtype(DType::F16)?.flatten_all()?.to_vec1::<f16>()?)
        };
        Self::new(k, rank, d, flat(a)?, flat(b)?)
    }

    /// The weights as tensors `A: [K, rank, d_model]`, `B: [K, d_model, rank]` (fp16),
    /// the layout [`reference_apply`] takes.
    pub fn to_tensors(&self, device: &Device) -> Result<(Tensor, Tensor), KernelError> {
        let a = Tensor::from_slice(&self.a, (self.candidates, self.rank, self.d_model), device)?;
        let b = Tensor::from_slice(&self.b, (self.candidates, self.d_model, self.rank), device)?;
        Ok((a, b))
    }

    /// All weights of all candidates in bytes (A and B).
    pub fn bytes(&self) -> usize {
        (self.a.len() + self.b.len()) * std::mem::size_of::<f16>()
    }
}

impl AdapterWeights for OwnedAdapters {
    fn num_candidates(&self) -> usize {
        self.candidates
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn d_model(&self) -> usize {
        self.d_model
    }
    fn a(&self, j: usize) -> &[f16] {
        let per = self.rank * self.d_model;
        self.a.get(j * per..(j + 1) * per).unwrap_or(&[])
    }
    fn b(&self, j: usize) -> &[f16] {
        let per = self.rank * self.d_model;
        self.b.get(j * per..(j + 1) * per).unwrap_or(&[])
    }
}

/// Sizes shared by both paths once the inputs are validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub tokens: usize,
    pub d_model: usize,
    pub candidates: usize,
}

fn float_dtype(name: &'static str, t: &Tensor) -> Result<(), KernelError> {
    match t.dtype() {
        DType::F32 | DType::F16 => Ok(()),
        dtype => Err(KernelError::UnsupportedDtype {
            name,
            dtype,
            shape: t.dims().to_vec(),
            expected: "f32 or f16",
        }),
    }
}

fn same_dtype(
    ln: &'static str,
    l: &Tensor,
    rn: &'static str,
    r: &Tensor,
) -> Result<(), KernelError> {
    if l.dtype() == r.dtype() {
        return Ok(());
    }
    Err(KernelError::DtypeMismatch {
        left_name: ln,
        left: l.dtype(),
        left_shape: l.dims().to_vec(),
        right_name: rn,
        right: r.dtype(),
        right_shape: r.dims().to_vec(),
    })
}

fn same_device(
    ln: &'static str,
    l: &Tensor,
    rn: &'static str,
    r: &Tensor,
) -> Result<(), KernelError> {
    if l.device().same_device(r.device()) {
        return Ok(());
    }
    Err(KernelError::DeviceMismatch {
        left_name: ln,
        left: format!("{:?}", l.device().location()),
        right_name: rn,
        right: format!("{:?}", r.device().location()),
    })
}

fn matrix(
    name: &'static str,
    t: &Tensor,
    expected: &'static str,
) -> Result<(usize, usize), KernelError> {
    t.dims2().map_err(|_| KernelError::BadRank {
        name,
        shape: t.dims().to_vec(),
        expected,
    })
}

/// Validates the activation-side inputs of one row (`[T, d_model]`, `[T, K]`).
pub(crate) fn check_activations(
    h: &Tensor,
    h_norm: &Tensor,
    scores: &Tensor,
) -> Result<Dims, KernelError> {
    let (tokens, d_model) = matrix("hidden states", h, "[T, d_model]")?;
    if h_norm.dims() != h.dims() {
        return Err(KernelError::shape(
            "hidden states",
            h.dims(),
            "h_norm",
            h_norm.dims(),
        ));
    }
    let (st, candidates) = matrix("scores", scores, "[T, K]")?;
    if st != tokens {
        return Err(KernelError::shape(
            "hidden states",
            h.dims(),
            "scores",
            scores.dims(),
        ));
    }
    float_dtype("hidden states", h)?;
    same_dtype("hidden states", h, "h_norm", h_norm)?;
    if scores.dtype() != DType::F32 {
        return Err(KernelError::UnsupportedDtype {
            name: "scores",
            dtype: scores.dtype(),
            shape: scores.dims().to_vec(),
            expected: "f32",
        });
    }
    same_device("hidden states", h, "h_norm", h_norm)?;
    same_device("hidden states", h, "scores", scores)?;
    Ok(Dims {
        tokens,
        d_model,
        candidates,
    })
}

/// Validates an [`AdapterWeights`] provider against the activation sizes, including
/// every candidate's slice lengths (so the kernel can index without checks failing).
pub(crate) fn check_weights(
    dims: &Dims,
    scores_shape: &[usize],
    h_shape: &[usize],
    w: &dyn AdapterWeights,
) -> Result<(), KernelError> {
    let (k, rank, d) = (w.num_candidates(), w.rank(), w.d_model());
    let wshape = [k, rank, d];
    if k != dims.candidates {
        return Err(KernelError::shape(
            "scores [T, K]",
            scores_shape,
            "adapter weights [K, rank, d_model]",
            &wshape,
        ));
    }
    if d != dims.d_model {
        return Err(KernelError::shape(
            "hidden states",
            h_shape,
            "adapter weights [K, rank, d_model]",
            &wshape,
        ));
    }
    let expected = rank.saturating_mul(d);
    for j in 0..k {
        for (which, len) in [("A", w.a(j).len()), ("B", w.b(j).len())] {
            if len != expected {
                return Err(KernelError::WeightSlice {
                    which,
                    candidate: j,
                    len,
                    expected,
                    rank,
                    d_model: d,
                });
            }
        }
    }
    Ok(())
}

/// Runs the fused operator: gate and adapter apply in one pass, no autograd.
///
/// `h`, `h_norm`: `[T, d_model]` (f32 or f16, same dtype); `scores`: `[T, K]` f32;
/// `weights`: the K candidates' borrowed fp16 adapters. Returns the updated hidden
/// states (`h`'s shape and dtype). Every shape, dtype, device and parameter problem is
/// reported as a typed error before any work is done; a NaN score is reported from
/// the kernel.
pub fn fused_apply(
    h: &Tensor,
    h_norm: &Tensor,
    scores: &Tensor,
    weights: Arc<dyn AdapterWeights>,
    params: &SelectionParams,
) -> Result<Tensor, KernelError> {
    fused_apply_with(h, h_norm, scores, weights, params, &FusedOptions::default()).map(|(t, _)| t)
}

/// [`fused_apply`] that also returns the per-token selection (for `--explain`).
pub fn fused_apply_explain(
    h: &Tensor,
    h_norm: &Tensor,
    scores: &Tensor,
    weights: Arc<dyn AdapterWeights>,
    params: &SelectionParams,
) -> Result<(Tensor, TokenAssignments), KernelError> {
    let opts = FusedOptions {
        record: true,
        ..FusedOptions::default()
    };
    let (t, a) = fused_apply_with(h, h_norm, scores, weights, params, &opts)?;
    Ok((t, a.unwrap_or_default()))
}

/// [`fused_apply`] with explicit options (thread cap, portable kernel, recording).
/// The selection is returned when `options.record` is set.
pub fn fused_apply_with(
    h: &Tensor,
    h_norm: &Tensor,
    scores: &Tensor,
    weights: Arc<dyn AdapterWeights>,
    params: &SelectionParams,
    options: &FusedOptions,
) -> Result<(Tensor, Option<TokenAssignments>), KernelError> {
    let dims = check_activations(h, h_norm, scores)?;
    check_weights(&dims, scores.dims(), h.dims(), weights.as_ref())?;
    params.validate(dims.candidates)?;
    // CUDA path (feature `cuda`): taken when a GPU was found at run time, else the CPU
    // kernel below. `portable` asks for a specific CPU kernel, so it stays on the CPU.
    #[cfg(feature = "cuda")]
    if !options.portable {
        if let Some(r) =
            cuda::runtime::try_apply(h, h_norm, scores, weights.as_ref(), params, options.record)
        {
            return r;
        }
    }
    if !matches!(h.device(), Device::Cpu) {
        // Tensors on a candle GPU device: candle's CUDA backend is not built; the CUDA
        // path above takes CPU tensors. See docs/CUDA.md.
        return Err(KernelError::UnsupportedDevice(format!(
            "{:?}",
            h.device().location()
        )));
    }
    let (h, h_norm, scores) = (h.contiguous()?, h_norm.contiguous()?, scores.contiguous()?);
    let op = FusedApplyOp::new(weights, params.clone()).with_options(*options);
    match h.apply_op3_no_bwd(&h_norm, &scores, &op) {
        Ok(out) => Ok((out, op.take_assignments())),
        // Prefer the typed error the kernel left behind over candle's string.
        Err(e) => Err(op.take_error().unwrap_or(KernelError::Candle(e))),
    }
}
