//! CUDA path of the fused selection + adapter operator.
//!
//! * `cuda_plan.rs` (private) — pure launch plan (tile, grid, shared memory), everywhere.
//! * [`slots`] — pure bookkeeping of the device expert cache (LRU, pins), everywhere.
//! * With the `cuda` feature: `runtime` (probe, NVRTC compile of
//!   `kernels/fused_apply.cu`, uploads, launch, download) and `cache` (device slots
//!   filled through a pinned staging buffer on a copy stream). Every `unsafe` block of
//!   the CUDA path lives in these two files.
//!
//! Nothing CUDA is linked: `cudarc` loads `libcuda` and `libnvrtc` with `dlopen` on
//! first use, so a `cuda` build runs on a machine without a driver and
//! [`super::fused_apply`] falls back to the CPU kernel there. See docs/CUDA.md.

pub mod slots;

#[cfg(feature = "cuda")]
pub mod cache;
#[cfg(feature = "cuda")]
pub mod runtime;

#[cfg(feature = "cuda")]
pub use super::cuda_plan::expert_bytes;
pub use super::cuda_plan::PlanError;
pub use slots::{Lookup, SlotCounters, SlotTable};

#[cfg(feature = "cuda")]
pub use cache::{CacheLease, CacheStats, DeviceExpertCache, ExpertLayout, ExpertSource};
#[cfg(feature = "cuda")]
pub use runtime::{CudaFusedApply, DeviceAdapters, DeviceInfo, DeviceInputs, DeviceRecord};

/// Errors of the CUDA path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// mome was built without the `cuda` feature.
    #[error("mome was built without the `cuda` cargo feature")]
    NotBuilt,
    /// The CUDA path was switched off (`MOME_CUDA=0`).
    #[error("the CUDA path is disabled (MOME_CUDA=0)")]
    Disabled,
    /// The driver library (libcuda) could not be loaded.
    #[error("no CUDA driver: libcuda could not be loaded")]
    NoDriver,
    /// The driver loaded but reports no device (or not the one asked for).
    #[error("no CUDA device with ordinal {ordinal} (the driver reports {count})")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// Devices the driver reports.
        count: usize,
    },
    /// NVRTC (libnvrtc) could not be loaded, so the kernels cannot be compiled.
    #[error("no NVRTC: libnvrtc could not be loaded (add its folder to LD_LIBRARY_PATH)")]
    NoNvrtc,
    /// A driver call failed.
    #[error("CUDA driver error in {during}: {message}")]
    Driver {
        /// What was being done.
        during: &'static str,
        /// The driver's message.
        message: String,
    },
    /// NVRTC rejected a kernel.
    #[error("NVRTC could not compile {kernel}: {log}")]
    Compile {
        /// Kernel entry point.
        kernel: String,
        /// NVRTC's log.
        log: String,
    },
    /// The call has no launch plan on this device.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Every slot of the device expert cache is pinned.
    #[error("device expert cache: all {slots} slots are pinned by requests in flight")]
    CacheFull {
        /// Slots in the cache.
        slots: usize,
    },
    /// An expert's weights from the source are unusable.
    #[error("expert {id}: {what}")]
    Expert {
        /// Expert id.
        id: u64,
        /// What is wrong.
        what: String,
    },
    /// Inputs the CUDA path cannot take: buffers that do not belong together (a lease
    /// of another cache, a layer out of range, inputs uploaded without the penalty the
    /// parameters name) or a call without tokens, width or candidates.
    #[error("CUDA path: {0}")]
    Invalid(String),
}

/// Whether the CUDA path is usable in this process, and on which device: `Ok` with the
/// device's name, or why not (not built, disabled, no driver, no GPU, no NVRTC).
pub fn status() -> Result<String, CudaError> {
    #[cfg(feature = "cuda")]
    {
        runtime::CudaFusedApply::global().map(|rt| rt.info().to_string())
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(CudaError::NotBuilt)
    }
}
