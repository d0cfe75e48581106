//! The CUDA launcher: probes the driver, compiles `kernels/fused_apply.cu` with NVRTC
//! (once per dtype variant and process), uploads inputs, launches per
//! [`cuda_plan`](super::super::cuda_plan), downloads.
//!
//! candle's own CUDA backend is not used (docs/CUDA.md, "candle's CUDA backend"), so the
//! inputs arrive as CPU tensors and the launcher moves them: `h` (as f32, the kernel's
//! in/out buffer), `h̃` (in its dtype), the `T × K` f32 scores, and — unless the weights
//! come from the [device expert cache](super::cache) — the K candidates' `A`/`B` of this
//! layer.

// One of the named modules allowed `unsafe` (workspace lints): driver calls, kernel launches.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};
use cudarc::driver::sys::{CUdevice_attribute_enum as Attr, CUfunction_attribute_enum};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DriverError,
    LaunchConfig, PushKernelArg,
};
use half::f16;
use half::slice::HalfFloatSliceExt;
use parking_lot::Mutex;

use super::super::cuda_plan::{
    self, CudaPlan, CudaPlanInput, DeviceLimits, KernelParams, FUSED_APPLY_SRC,
};
use super::super::{check_activations, check_weights, AdapterWeights, KernelError};
use super::super::{SelectError, Selected, SelectionParams, TokenAssignments};
use super::CudaError;

/// NVRTC options of the run-time compile, besides `--gpu-architecture` and the variant
/// defines. `tools/check-kernels.sh` compiles with the same ones (a test checks).
pub const NVRTC_OPTIONS: &[&str] = &["--std=c++17"];

// SAFETY: `KernelParams` is `#[repr(C)]`, made only of 4-byte `i32`/`f32` fields (no
// padding), and mirrors `struct Params` in kernels/fused_apply.cu field for field
// (checked by `cuda_plan::tests::params_match_the_kernel_struct`); it is passed by value.
unsafe impl DeviceRepr for KernelParams {}

fn drv(during: &'static str) -> impl Fn(DriverError) -> CudaError {
    move |e| CudaError::Driver {
        during,
        message: e.to_string(),
    }
}

/// The GPU the launcher runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Name as the driver reports it.
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Limits the plan uses.
    pub limits: DeviceLimits,
    /// Memory clock, kHz (0 if the driver does not say).
    pub memory_clock_khz: u64,
    /// Memory bus width, bits (0 if the driver does not say).
    pub memory_bus_bits: u64,
    /// Device memory, bytes.
    pub total_memory: usize,
}

impl DeviceInfo {
    /// Theoretical peak memory bandwidth, bytes/s: memory clock × bus width × 2 (DDR),
    /// from the device attributes; `None` if they are missing.
    pub fn peak_bandwidth_attr(&self) -> Option<f64> {
        let v = self.memory_clock_khz as f64 * 1e3 * 2.0 * self.memory_bus_bits as f64 / 8.0;
        (v > 0.0).then_some(v)
    }

    /// Datasheet peak bandwidth for known GPUs, bytes/s, with the entry's name.
    pub fn peak_bandwidth_table(&self) -> Option<(&'static str, f64)> {
        let n = self.name.to_ascii_uppercase();
        let table: [(&str, &str, f64); 5] = [
            ("H200", "H200 (4.8 TB/s)", 4.8e12),
            ("H100 PCIE", "H100 PCIe (2.0 TB/s)", 2.0e12),
            ("H100", "H100 SXM (3.35 TB/s)", 3.35e12),
            ("A100-SXM4-80GB", "A100 80GB SXM (2.04 TB/s)", 2.039e12),
            ("A100", "A100 40GB (1.56 TB/s)", 1.555e12),
        ];
        table
            .iter()
            .find(|(key, _, _)| n.contains(key))
            .map(|(_, label, bw)| (*label, *bw))
    }
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (sm_{}{}, {} SMs, {:.1} GiB)",
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.limits.sm_count,
            self.total_memory as f64 / (1u64 << 30) as f64
        )
    }
}

/// A device buffer of f32 or f16 values.
#[derive(Debug)]
pub(crate) enum DevBuf {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
}

impl DevBuf {
    fn letter(&self) -> char {
        match self {
            DevBuf::F32(_) => 'f',
            DevBuf::F16(_) => 'h',
        }
    }

    fn ptr(&self, stream: &CudaStream) -> u64 {
        match self {
            DevBuf::F32(s) => s.device_ptr(stream).0,
            DevBuf::F16(s) => s.device_ptr(stream).0,
        }
    }

    fn upload(stream: &Arc<CudaStream>, t: &Tensor) -> Result<Self, KernelError> {
        let flat = t.flatten_all()?;
        let dev = |e| KernelError::from(drv("upload")(e));
        Ok(match t.dtype() {
            DType::F16 => DevBuf::F16(stream.clone_htod(&flat.to_vec1::<f16>()?).map_err(dev)?),
            _ => DevBuf::F32(
                stream
                    .clone_htod(&flat.to_dtype(DType::F32)?.to_vec1::<f32>()?)
                    .map_err(dev)?,
            ),
        })
    }
}

/// Activations of one call on the device: the f32 in/out rows (`h` on entry, the result
/// after a launch), `h̃`, the `T × K` scores, the optional penalty and the kernel's error
/// word (the row-major index of the first NaN/+inf score, `i32::MAX` if none).
#[derive(Debug)]
pub struct DeviceInputs {
    out: CudaSlice<f32>,
    hn: DevBuf,
    scores: CudaSlice<f32>,
    penalty: Option<CudaSlice<f32>>,
    err: CudaSlice<i32>,
    tokens: usize,
    d_model: usize,
    candidates: usize,
}

impl DeviceInputs {
    /// Uploads CPU tensors (shapes as [`super::super::fused_apply`] takes them; checked).
    pub fn upload(
        rt: &CudaFusedApply,
        h: &Tensor,
        h_norm: &Tensor,
        scores: &Tensor,
        penalty: Option<&[f32]>,
    ) -> Result<Self, KernelError> {
        let dims = check_activations(h, h_norm, scores)?;
        let s = &rt.stream;
        let dev = |during| move |e| KernelError::from(drv(during)(e));
        let h32 = h.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let sc = scores.flatten_all()?.to_vec1::<f32>()?;
        let nonempty = |v: Vec<f32>| if v.is_empty() { vec![0.0] } else { v };
        Ok(Self {
            out: s.clone_htod(&nonempty(h32)).map_err(dev("upload h"))?,
            hn: DevBuf::upload(s, h_norm)?,
            scores: s.clone_htod(&nonempty(sc)).map_err(dev("upload scores"))?,
            penalty: match penalty {
                Some(p) => Some(s.clone_htod(p).map_err(dev("upload penalty"))?),
                None => None,
            },
            err: s
                .clone_htod(&[i32::MAX])
                .map_err(dev("upload error word"))?,
            tokens: dims.tokens,
            d_model: dims.d_model,
            candidates: dims.candidates,
        })
    }

    /// Tokens T.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// The f32 output rows, `T × d_model` (waits for the stream).
    pub fn download(&self, rt: &CudaFusedApply) -> Result<Vec<f32>, CudaError> {
        let mut v = rt
            .stream
            .clone_dtoh(&self.out)
            .map_err(drv("download output"))?;
        v.truncate(self.tokens * self.d_model);
        Ok(v)
    }

    /// The kernel's report of a NaN/+inf score (waits for the stream): the first one in
    /// row-major order, as the CPU kernel reports it.
    pub fn check(&self, rt: &CudaFusedApply) -> Result<(), KernelError> {
        let e = rt
            .stream
            .clone_dtoh(&self.err)
            .map_err(drv("download error word"))?;
        let Some(idx) = e
            .first()
            .copied()
            .filter(|&v| v != i32::MAX)
            .and_then(|v| usize::try_from(v).ok())
        else {
            return Ok(());
        };
        let value = rt
            .stream
            .clone_dtoh(&self.scores.slice(idx..idx + 1))
            .map_err(drv("download bad score"))?
            .first()
            .copied()
            .unwrap_or(f32::NAN);
        let k = self.candidates.max(1);
        Err(SelectError::NonFiniteScore {
            token: idx / k,
            candidate: idx % k,
            value,
        }
        .into())
    }
}

/// Device pointers of the K candidates' `A` and `B` (fp16) at one layer.
#[derive(Debug)]
pub struct DeviceAdapters {
    a_ptrs: CudaSlice<u64>,
    b_ptrs: CudaSlice<u64>,
    rank: usize,
    d_model: usize,
    candidates: usize,
    /// Weights uploaded for this call only (None when they live in the expert cache).
    _owned: Option<CudaSlice<f16>>,
}

impl DeviceAdapters {
    /// Uploads all K candidates' weights of one layer (`A` then `B` per candidate).
    pub fn upload(rt: &CudaFusedApply, w: &dyn AdapterWeights) -> Result<Self, KernelError> {
        let (k, rank, d) = (w.num_candidates(), w.rank(), w.d_model());
        let per = rank * d;
        let mut host = Vec::with_capacity(2 * per * k);
        for j in 0..k {
            let (a, b) = (w.a(j), w.b(j));
            for (which, s) in [("A", a), ("B", b)] {
                if s.len() != per {
                    return Err(KernelError::WeightSlice {
                        which,
                        candidate: j,
                        len: s.len(),
                        expected: per,
                        rank,
                        d_model: d,
                    });
                }
            }
            host.extend_from_slice(a);
            host.extend_from_slice(b);
        }
        let s = &rt.stream;
        let buf = if host.is_empty() {
            s.alloc_zeros::<f16>(1)
        } else {
            s.clone_htod(&host)
        }
        .map_err(drv("upload weights"))?;
        let base = buf.device_ptr(s).0;
        let bytes = 2 * per as u64;
        let a: Vec<u64> = (0..k as u64).map(|j| base + j * 2 * bytes).collect();
        let b: Vec<u64> = a.iter().map(|p| p + bytes).collect();
        Ok(Self::from_pointers(rt, &a, &b, rank, d, Some(buf))?)
    }

    /// Adapters from raw device pointers (used by the expert cache). Each `A` must hold
    /// `rank × d_model` and each `B` `d_model × rank` fp16 values, 8-byte aligned, and
    /// stay allocated and unchanged while launches using them are in flight.
    pub(crate) fn from_pointers(
        rt: &CudaFusedApply,
        a: &[u64],
        b: &[u64],
        rank: usize,
        d_model: usize,
        owned: Option<CudaSlice<f16>>,
    ) -> Result<Self, CudaError> {
        let s = &rt.stream;
        let up = |v: &[u64]| {
            if v.is_empty() {
                s.alloc_zeros::<u64>(1)
            } else {
                s.clone_htod(v)
            }
            .map_err(drv("upload weight pointers"))
        };
        Ok(Self {
            a_ptrs: up(a)?,
            b_ptrs: up(b)?,
            rank,
            d_model,
            candidates: a.len(),
            _owned: owned,
        })
    }

    /// Candidates K.
    pub fn candidates(&self) -> usize {
        self.candidates
    }
}

/// Device buffers receiving the per-token selection of a launch.
#[derive(Debug)]
pub struct DeviceRecord {
    count: CudaSlice<i32>,
    idx: CudaSlice<i32>,
    score: CudaSlice<f32>,
    weight: CudaSlice<f32>,
    tokens: usize,
    stride: usize,
}

impl DeviceRecord {
    /// Buffers for `tokens` tokens of `stride` slots.
    pub fn new(rt: &CudaFusedApply, tokens: usize, stride: usize) -> Result<Self, CudaError> {
        let s = &rt.stream;
        let n = (tokens * stride).max(1);
        let e = drv("allocate selection record");
        Ok(Self {
            count: s.alloc_zeros::<i32>(tokens.max(1)).map_err(&e)?,
            idx: s.alloc_zeros::<i32>(n).map_err(&e)?,
            score: s.alloc_zeros::<f32>(n).map_err(&e)?,
            weight: s.alloc_zeros::<f32>(n).map_err(&e)?,
            tokens,
            stride,
        })
    }

    /// Downloads the selection (waits for the stream).
    pub fn download(&self, rt: &CudaFusedApply) -> Result<TokenAssignments, CudaError> {
        let s = &rt.stream;
        let e = drv("download selection record");
        let count = s.clone_dtoh(&self.count).map_err(&e)?;
        let idx = s.clone_dtoh(&self.idx).map_err(&e)?;
        let score = s.clone_dtoh(&self.score).map_err(&e)?;
        let weight = s.clone_dtoh(&self.weight).map_err(&e)?;
        let mut a = TokenAssignments::new();
        a.reset(self.tokens, self.stride);
        let (counts, slots) = a.parts_mut();
        for (t, c) in counts.iter_mut().enumerate() {
            let n = count
                .get(t)
                .map_or(0, |&v| usize::try_from(v).unwrap_or(0))
                .min(self.stride);
            *c = n as u32;
            for s in 0..n {
                let i = t * self.stride + s;
                if let (Some(slot), Some(&j), Some(&sc), Some(&w)) =
                    (slots.get_mut(i), idx.get(i), score.get(i), weight.get(i))
                {
                    *slot = Selected {
                        candidate: j as u32,
                        score: sc,
                        weight: w,
                    };
                }
            }
        }
        Ok(a)
    }
}

/// The CUDA fused operator on one GPU: context, stream, compiled kernels.
pub struct CudaFusedApply {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    functions: Mutex<HashMap<String, CudaFunction>>,
}

impl fmt::Debug for CudaFusedApply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaFusedApply")
            .field("device", &self.info)
            .finish()
    }
}

static GLOBAL: OnceLock<Result<CudaFusedApply, CudaError>> = OnceLock::new();

impl CudaFusedApply {
    /// The process-wide launcher on GPU 0, created on first use; the error says why
    /// there is none (`MOME_CUDA=0`, no driver, no GPU, no NVRTC). The answer is
    /// cached: a process probes once.
    pub fn global() -> Result<&'static CudaFusedApply, CudaError> {
        GLOBAL
            .get_or_init(|| {
                if std::env::var("MOME_CUDA").is_ok_and(|v| v == "0" || v == "off") {
                    return Err(CudaError::Disabled);
                }
                Self::new(0)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A launcher on GPU `ordinal`. Fails (without panicking) when the driver or NVRTC
    /// library is missing or there is no such device.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        // SAFETY: a dlopen probe of the driver library; it has no preconditions.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(drv("cuDeviceGetCount"))?;
        let count = usize::try_from(count).unwrap_or(0);
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        // SAFETY: a dlopen probe of the NVRTC library; it has no preconditions.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(CudaError::NoNvrtc);
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("cuCtx create"))?;
        let attr = |a: Attr| ctx.attribute(a).map_err(drv("cuDeviceGetAttribute"));
        let as_usize = |v: i32| usize::try_from(v).unwrap_or(0);
        let limits = DeviceLimits {
            sm_count: as_usize(attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?),
            smem_per_block_optin: as_usize(attr(
                Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )?),
            smem_per_sm: as_usize(attr(
                Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
            )?),
        };
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(drv("cuDeviceGetName"))?,
            compute_capability: ctx
                .compute_capability()
                .map_err(drv("compute capability"))?,
            limits,
            memory_clock_khz: attr(Attr::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)
                .map(|v| u64::try_from(v).unwrap_or(0))
                .unwrap_or(0),
            memory_bus_bits: attr(Attr::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)
                .map(|v| u64::try_from(v).unwrap_or(0))
                .unwrap_or(0),
            total_memory: ctx.total_mem().map_err(drv("cuDeviceTotalMem"))?,
        };
        let stream = ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        Ok(Self {
            ctx,
            stream,
            info,
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// The device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The CUDA context (for the expert cache and benchmarks).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every launch runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for all work on the launcher's stream.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))
    }

    /// The kernel entry for an h̃ dtype variant ("f" or "h"), compiled on first use.
    fn function(&self, variant: &str) -> Result<CudaFunction, CudaError> {
        let mut map = self.functions.lock();
        if let Some(f) = map.get(variant) {
            return Ok(f.clone());
        }
        let name = format!("mome_fused_apply_{variant}");
        let ptx = compile_variant(variant, self.info.compute_capability)?;
        let module = self.ctx.load_module(ptx).map_err(drv("cuModuleLoadData"))?;
        let f = module
            .load_function(&name)
            .map_err(drv("cuModuleGetFunction"))?;
        let max_smem = i32::try_from(self.info.limits.smem_per_block_optin).unwrap_or(i32::MAX);
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        // SAFETY: `f` is a live function of a module this context just loaded; the
        // attribute and value are valid for any kernel (the opt-in maximum the device
        // reports).
        unsafe {
            cudarc::driver::result::function::set_function_attribute(
                f.cu_function(),
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                max_smem,
            )
        }
        .map_err(drv("cuFuncSetAttribute"))?;
        map.insert(variant.to_string(), f.clone());
        Ok(f)
    }

    /// Compiles every dtype variant now (instead of on first use).
    pub fn warm_up(&self) -> Result<(), CudaError> {
        for v in VARIANTS {
            self.function(v)?;
        }
        Ok(())
    }

    /// The launch plan for a call of these sizes on this device.
    pub fn plan(&self, input: &CudaPlanInput) -> Result<CudaPlan, CudaError> {
        Ok(cuda_plan::plan(input, &self.info.limits)?)
    }

    /// Enqueues one launch: `inputs.out += Σ w · B (A h̃)` per the selection, optionally
    /// recording the selection. Asynchronous; returns the plan used. Calls without
    /// tokens, candidates or slots do nothing. The penalty used is the one `inputs` was
    /// uploaded with (`params.penalty` must be present exactly when it is).
    pub fn launch(
        &self,
        inputs: &mut DeviceInputs,
        adapters: &DeviceAdapters,
        params: &SelectionParams,
        record: Option<&mut DeviceRecord>,
    ) -> Result<Option<CudaPlan>, KernelError> {
        params.validate(inputs.candidates)?;
        if adapters.candidates != inputs.candidates || adapters.d_model != inputs.d_model {
            return Err(KernelError::shape(
                "device inputs [T, d_model, K]",
                &[inputs.tokens, inputs.d_model, inputs.candidates],
                "device adapters [d_model, K]",
                &[adapters.d_model, adapters.candidates],
            ));
        }
        if params.penalty.is_some() != inputs.penalty.is_some() {
            return Err(CudaError::Invalid(format!(
                "the selection parameters {} a penalty but the device inputs were uploaded {} one",
                if params.penalty.is_some() {
                    "have"
                } else {
                    "have no"
                },
                if inputs.penalty.is_some() {
                    "with"
                } else {
                    "without"
                },
            ))
            .into());
        }
        let slots = params.slots(inputs.candidates);
        if inputs.tokens == 0 || slots == 0 || inputs.d_model == 0 {
            return Ok(None);
        }
        let pin = CudaPlanInput {
            tokens: inputs.tokens,
            d_model: inputs.d_model,
            candidates: inputs.candidates,
            rank: adapters.rank,
            slots,
        };
        let plan = self.plan(&pin)?;
        let kp = plan.params(&pin, params.tau, params.temperature);
        let f = self.function(&inputs.hn.letter().to_string())?;
        let s = &self.stream;
        if let Some(r) = &record {
            if r.tokens != inputs.tokens || r.stride != slots {
                return Err(KernelError::shape(
                    "selection record [T, slots]",
                    &[r.tokens, r.stride],
                    "call [T, slots]",
                    &[inputs.tokens, slots],
                ));
            }
        }
        let penalty: u64 = inputs.penalty.as_ref().map_or(0, |p| p.device_ptr(s).0);
        let (rc, ri, rs, rw) = match &record {
            Some(r) => (
                r.count.device_ptr(s).0,
                r.idx.device_ptr(s).0,
                r.score.device_ptr(s).0,
                r.weight.device_ptr(s).0,
            ),
            None => (0, 0, 0, 0),
        };
        let hn = inputs.hn.ptr(s);
        let cfg = LaunchConfig {
            grid_dim: plan.grid(),
            block_dim: (cuda_plan::BLOCK, 1, 1),
            shared_mem_bytes: u32::try_from(plan.smem_bytes()).unwrap_or(u32::MAX),
        };
        let mut b = s.launch_builder(&f);
        b.arg(&kp)
            .arg(&mut inputs.out)
            .arg(&hn)
            .arg(&inputs.scores)
            .arg(&penalty)
            .arg(&adapters.a_ptrs)
            .arg(&adapters.b_ptrs)
            .arg(&mut inputs.err)
            .arg(&rc)
            .arg(&ri)
            .arg(&rs)
            .arg(&rw);
        // SAFETY: the arguments match the kernel's signature in order and type
        // (`Params` by value, then 11 pointers: device slices, raw device addresses of
        // live slices on this stream, or 0 where the kernel accepts null). The plan sized
        // the grid and the dynamic shared memory for these dims (within the opt-in limit
        // set on the function); every buffer holds what the kernel indexes: out/h̃ T×d,
        // scores T×K, penalty K, the pointer arrays K entries of validated rank×d fp16
        // matrices, err 1, the record T and T×slots. All buffers
        // outlive the launch: they are owned by the caller's `inputs`, `adapters` and
        // `record`, whose drops are ordered after the launch on this stream.
        unsafe { b.launch(cfg) }.map_err(|e| KernelError::from(drv("cuLaunchKernel")(e)))?;
        Ok(Some(plan))
    }

    /// The whole operator on CPU tensors: upload, launch, download. Same contract as
    /// [`super::super::fused_apply_with`] (returns the selection when `record`), for
    /// calls with at least one token, one candidate and `d_model ≥ 1`.
    // The arguments of `fused_apply_with`, plus the receiver.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_host(
        &self,
        h: &Tensor,
        h_norm: &Tensor,
        scores: &Tensor,
        weights: &dyn AdapterWeights,
        params: &SelectionParams,
        record: bool,
    ) -> Result<(Tensor, Option<TokenAssignments>), KernelError> {
        let dims = check_activations(h, h_norm, scores)?;
        check_weights(&dims, scores.dims(), h.dims(), weights)?;
        params.validate(dims.candidates)?;
        if dims.tokens == 0 || dims.d_model == 0 || params.slots(dims.candidates) == 0 {
            return Err(CudaError::Invalid(format!(
                "the CUDA kernel needs T ≥ 1, d_model ≥ 1 and K ≥ 1 (got {}, {}, {}); \
                 fused_apply runs such calls on the CPU",
                dims.tokens, dims.d_model, dims.candidates
            ))
            .into());
        }
        let mut inputs = DeviceInputs::upload(self, h, h_norm, scores, params.penalty.as_deref())?;
        let adapters = DeviceAdapters::upload(self, weights)?;
        let slots = params.slots(dims.candidates);
        let mut rec = if record {
            Some(DeviceRecord::new(self, dims.tokens, slots)?)
        } else {
            None
        };
        self.launch(&mut inputs, &adapters, params, rec.as_mut())?;
        inputs.check(self)?;
        let out = inputs.download(self)?;
        let shape = (dims.tokens, dims.d_model);
        let t = match h.dtype() {
            DType::F16 => {
                let mut v = vec![f16::ZERO; out.len()];
                v.convert_from_f32_slice(&out);
                Tensor::from_vec(v, shape, &Device::Cpu)?
            }
            _ => Tensor::from_vec(out, shape, &Device::Cpu)?,
        };
        let asg = match rec {
            Some(r) => Some(r.download(self)?),
            None => None,
        };
        Ok((t, asg))
    }
}

/// The source of the floor kernels (`kernels/floor.cu`).
pub const FLOOR_SRC: &str = include_str!("../../../kernels/floor.cu");

/// The floor the fused kernel is measured against: an empty launch and one plain read of
/// a device buffer (for benchmarks; compiled with NVRTC for the launcher's device).
pub struct FloorKernels {
    empty: CudaFunction,
    read: CudaFunction,
}

impl fmt::Debug for FloorKernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FloorKernels")
    }
}

impl FloorKernels {
    /// Compiles and loads the floor kernels on `rt`'s device.
    pub fn new(rt: &CudaFusedApply) -> Result<Self, CudaError> {
        let cc = rt.info.compute_capability;
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec![format!("--gpu-architecture=compute_{}{}", cc.0, cc.1)],
            name: Some("floor.cu".into()),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(FLOOR_SRC, opts).map_err(|e| {
            CudaError::Compile {
                kernel: "mome_floor_*".into(),
                log: e.to_string(),
            }
        })?;
        let m = rt.ctx.load_module(ptx).map_err(drv("cuModuleLoadData"))?;
        let get = |n| m.load_function(n).map_err(drv("cuModuleGetFunction"));
        Ok(Self {
            empty: get("mome_floor_empty")?,
            read: get("mome_floor_read")?,
        })
    }

    /// Enqueues an empty kernel (one CTA of one thread) on the launcher's stream.
    pub fn launch_empty(&self, rt: &CudaFusedApply) -> Result<(), CudaError> {
        let mut b = rt.stream.launch_builder(&self.empty);
        // SAFETY: the kernel takes no parameters and touches no memory.
        unsafe { b.launch(LaunchConfig::for_num_elems(1)) }.map_err(drv("cuLaunchKernel"))?;
        Ok(())
    }

    /// Enqueues one read of every 16-byte word of `buf` (its length rounded down to a
    /// multiple of 4 values), `4 ×` SMs CTAs of 256 threads at most; `sink` (≥ 1 value)
    /// may be written.
    pub fn launch_read(
        &self,
        rt: &CudaFusedApply,
        buf: &CudaSlice<u32>,
        sink: &mut CudaSlice<u32>,
    ) -> Result<(), CudaError> {
        if sink.is_empty() {
            return Err(CudaError::Invalid("floor read: empty sink".into()));
        }
        let words = buf.len() / 4;
        let n = i64::try_from(words).unwrap_or(i64::MAX);
        let sms = u32::try_from(rt.info.limits.sm_count).unwrap_or(1).max(1);
        let blocks = u32::try_from(words.div_ceil(256))
            .unwrap_or(u32::MAX)
            .clamp(1, sms * 4);
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = rt.stream.launch_builder(&self.read);
        b.arg(buf).arg(&n).arg(sink);
        // SAFETY: the arguments match `mome_floor_read(const uint4*, long long, unsigned
        // int*)`: `buf` holds at least `n` 16-byte words (its allocation is 256-byte
        // aligned), `sink` at least one value; both are device slices of this stream's
        // context that outlive the launch (their drops are ordered after it).
        unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel"))?;
        Ok(())
    }
}

/// Versions of the loaded libraries: (driver API version, e.g. 13000 for 13.0; NVRTC
/// (major, minor)). `None` where the library is missing.
pub fn library_versions() -> (Option<i32>, Option<(i32, i32)>) {
    // SAFETY: dlopen probes without preconditions; the version calls only write the
    // integers passed by pointer, which live on this stack frame.
    unsafe {
        let driver = cudarc::driver::sys::is_culib_present()
            .then(|| {
                let mut v = 0i32;
                let r = cudarc::driver::sys::cuDriverGetVersion(&mut v);
                (r == cudarc::driver::sys::cudaError_enum::CUDA_SUCCESS).then_some(v)
            })
            .flatten();
        let nvrtc = cudarc::nvrtc::sys::is_culib_present()
            .then(|| {
                let (mut major, mut minor) = (0i32, 0i32);
                let r = cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor);
                (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
            })
            .flatten();
        (driver, nvrtc)
    }
}

/// Dtype variants of the kernel: the letter of h̃'s dtype, `f` = f32, `h` = f16 (the
/// scores are always f32).
pub const VARIANTS: [&str; 2] = ["f", "h"];

/// Compiles one dtype variant of `kernels/fused_apply.cu` to PTX for compute capability
/// `cc` with NVRTC (needs libnvrtc, no GPU).
pub fn compile_variant(variant: &str, cc: (i32, i32)) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    let name = format!("mome_fused_apply_{variant}");
    if !VARIANTS.contains(&variant) {
        return Err(CudaError::Compile {
            kernel: name,
            log: "no such variant".into(),
        });
    }
    // SAFETY: a dlopen probe of the NVRTC library; it has no preconditions.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc);
    }
    let mut options: Vec<String> = vec![
        format!("--gpu-architecture=compute_{}{}", cc.0, cc.1),
        "-DMOME_ONE_VARIANT".into(),
        format!("-DMOME_VARIANT_{variant}"),
    ];
    options.extend(NVRTC_OPTIONS.iter().map(|s| s.to_string()));
    let opts = cudarc::nvrtc::CompileOptions {
        options,
        name: Some("fused_apply.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(FUSED_APPLY_SRC, opts).map_err(|e| CudaError::Compile {
        kernel: name,
        log: e.to_string(),
    })
}

/// The dispatch of [`super::super::fused_apply_with`]: `Some` when the CUDA path takes
/// the call (a GPU was found, the inputs are CPU tensors, the call is not degenerate
/// and has a plan on this device), `None` to leave it to the CPU kernel.
pub(crate) fn try_apply(
    h: &Tensor,
    h_norm: &Tensor,
    scores: &Tensor,
    weights: &dyn AdapterWeights,
    params: &SelectionParams,
    record: bool,
) -> Option<Result<(Tensor, Option<TokenAssignments>), KernelError>> {
    if !matches!(h.device(), Device::Cpu) {
        return None;
    }
    let (tokens, d_model) = h.dims2().ok()?;
    let (_, candidates) = scores.dims2().ok()?;
    let slots = params.slots(candidates);
    if tokens == 0 || d_model == 0 || slots == 0 {
        return None;
    }
    let rt = CudaFusedApply::global().ok()?;
    let input = CudaPlanInput {
        tokens,
        d_model,
        candidates,
        rank: weights.rank(),
        slots,
    };
    rt.plan(&input).ok()?;
    Some(rt.apply_host(h, h_norm, scores, weights, params, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvrtc_options_match_the_offline_check() {
        let script = include_str!("../../../tools/check-kernels.sh");
        let line = format!("NVRTC_OPTIONS=\"{}\"", NVRTC_OPTIONS.join(" "));
        assert!(
            script.contains(&line),
            "tools/check-kernels.sh lacks {line}"
        );
    }

    #[test]
    fn peak_bandwidth_from_attributes_and_table() {
        let info = DeviceInfo {
            ordinal: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            compute_capability: (9, 0),
            limits: DeviceLimits::H100,
            memory_clock_khz: 2_619_000,
            memory_bus_bits: 5120,
            total_memory: 80 << 30,
        };
        let bw = info.peak_bandwidth_attr().unwrap_or(0.0);
        assert!((bw / 3.352e12 - 1.0).abs() < 0.01, "{bw}");
        assert_eq!(info.peak_bandwidth_table().map(|t| t.1), Some(3.35e12));
        let h200 = DeviceInfo {
            name: "NVIDIA H200".into(),
            ..info
        };
        assert_eq!(h200.peak_bandwidth_table().map(|t| t.1), Some(4.8e12));
    }

    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        let (driver, nvrtc) = library_versions();
        if let Some((major, _)) = nvrtc {
            assert!(major >= 11, "{nvrtc:?}");
        }
        assert!(driver.is_none_or(|v| v >= 11000), "{driver:?}");
        // On machines without a GPU this is the CPU-fallback path; with one it succeeds.
        match CudaFusedApply::new(0) {
            Ok(rt) => assert!(!rt.info().name.is_empty()),
            Err(e) => assert!(matches!(
                e,
                CudaError::NoDriver | CudaError::NoDevice { .. } | CudaError::NoNvrtc
            )),
        }
    }
}
