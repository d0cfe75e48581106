//! Frozen linear layers: dense (f32) or quantized, with an input-only backward.

use candle_core::quantized::QMatMul;
use candle_core::{CpuStorage, CustomOp1, Layout, Module, Shape, Storage, Tensor};

/// A frozen `y = x Wᵀ` layer (`W`: `[out, in]`).
#[derive(Debug, Clone)]
pub(crate) enum Linear {
    /// Dense weights; differentiable with respect to the input.
    Dense(Tensor),
    /// Quantized weights (GGUF); inference only, candle's quantized matmul has no backward.
    Quantized(QMatMul),
}

impl Linear {
    /// Inference forward: no autograd bookkeeping.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Dense(w) => matmul_t(x, w),
            Linear::Quantized(q) => q.forward(x),
        }
    }

    /// Differentiable forward. When `x` carries a graph, the weight gradient —
    /// which candle's matmul backward would always compute, and which for the
    /// tied LM head is a 49152 × 576 product per step — is skipped: only `dL/dx`
    /// flows back. Callers guarantee the weights are dense (checked at the
    /// model's boundary).
    pub(crate) fn forward_grad(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Dense(w) if x.track_op() => {
                let y = matmul_t(&x.detach(), w)?;
                x.apply_op1(FrozenLinearOp { w: w.clone(), y })
            }
            Linear::Dense(w) => matmul_t(x, w),
            Linear::Quantized(_) => candle_core::bail!(
                "quantized weights have no backward; load the model dequantized to train through it"
            ),
        }
    }

    /// The dense weight, if the layer is dense.
    pub(crate) fn dense(&self) -> Option<&Tensor> {
        match self {
            Linear::Dense(w) => Some(w),
            Linear::Quantized(_) => None,
        }
    }
}

/// Records `y = x Wᵀ` (computed outside the graph) as a function of `x` whose
/// backward is `dL/dx = dL/dy · W`, and nothing for the frozen `W`.
struct FrozenLinearOp {
    w: Tensor,
    y: Tensor,
}

impl CustomOp1 for FrozenLinearOp {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.y.contiguous()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cpu(cpu) => {
                let start = layout.start_offset();
                let n = layout.shape().elem_count();
                let out = match cpu {
                    CpuStorage::F32(v) => CpuStorage::F32(slice(v, start, n)?),
                    CpuStorage::F64(v) => CpuStorage::F64(slice(v, start, n)?),
                    CpuStorage::F16(v) => CpuStorage::F16(slice(v, start, n)?),
                    CpuStorage::BF16(v) => CpuStorage::BF16(slice(v, start, n)?),
                    _ => candle_core::bail!("frozen-linear: unsupported dtype {:?}", y.dtype()),
                };
                Ok((out, layout.shape().clone()))
            }
            _ => candle_core::bail!("frozen-linear: output is not on the CPU"),
        }
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // dL/dx = dL/dy · W, with the leading dimensions folded into rows.
        let dims = grad_y.dims();
        let out = self.w.dim(0)?;
        let rows = grad_y.elem_count() / out.max(1);
        let g = grad_y.reshape((rows, out))?.matmul(&self.w)?;
        let mut x_dims = dims.to_vec();
        if let Some(last) = x_dims.last_mut() {
            *last = self.w.dim(1)?;
        }
        Ok(Some(g.reshape(x_dims)?))
    }
}

/// `x Wᵀ` for `x` of any rank ≥ 1, folding the leading dimensions into rows so
/// that one 2-D GEMM runs (a broadcast batched matmul would not be faster).
pub(crate) fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let (out, inp) = w.dims2()?;
    let Some((&last, lead)) = dims.split_last() else {
        candle_core::bail!("linear: scalar input");
    };
    if last != inp {
        candle_core::bail!("linear: input width {last}, weight expects {inp}");
    }
    let rows: usize = lead.iter().product();
    let y = x.reshape((rows, inp))?.matmul(&w.t()?)?;
    let mut y_dims = lead.to_vec();
    y_dims.push(out);
    y.reshape(y_dims)
}

fn slice<T: Clone>(v: &[T], start: usize, n: usize) -> candle_core::Result<Vec<T>> {
    match v.get(start..start + n) {
        Some(s) => Ok(s.to_vec()),
        None => candle_core::bail!("frozen-linear: storage shorter than its layout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn frozen_linear_gives_the_input_gradient_only() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 12.0, &dev)?
            .reshape((3, 4))?
            .affine(0.1, -0.5)?;
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 8.0, &dev)?
                .reshape((1, 2, 4))?
                .affine(0.3, -1.0)?,
        )?;
        let lin = Linear::Dense(w.clone());
        // A non-linear loss so the gradient depends on y.
        let y_frozen = lin.forward_grad(x.as_tensor())?;
        let y_plain = x.as_tensor().broadcast_matmul(&w.t()?)?;
        assert_eq!(y_frozen.to_vec3::<f32>()?, y_plain.to_vec3::<f32>()?);
        let g_frozen = y_frozen.sqr()?.sum_all()?.backward()?;
        let g_plain = y_plain.sqr()?.sum_all()?.backward()?;
        let a = g_frozen.get(x.as_tensor()).map(|g| g.to_vec3::<f32>());
        let b = g_plain.get(x.as_tensor()).map(|g| g.to_vec3::<f32>());
        match (a, b) {
            (Some(a), Some(b)) => assert_eq!(a?, b?),
            _ => candle_core::bail!("missing input gradient"),
        }
        assert!(g_frozen.get(&w).is_none());
        Ok(())
    }
}
