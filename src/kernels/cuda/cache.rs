//! Device expert cache: a fixed pool of device slots, one expert per slot (all its
//! adapted layers), LRU with pinning ([`SlotTable`]), misses copied from the store's
//! bytes through pinned staging buffers on a copy stream of their own.
//!
//! Use per request: [`DeviceExpertCache::acquire`] the candidates right after
//! retrieval — the copies of the misses then run on the copy stream while the backbone
//! computes the layers before the first adapted one — then, per adapted layer,
//! [`DeviceExpertCache::adapters`] (which makes the launch stream wait for the copies)
//! and [`CudaFusedApply::launch`]; [`DeviceExpertCache::release`] when the request is done.
//!
//! A slot's layout is the store record's: for each layer, `A` (`rank × d_model`) then
//! `B` (`d_model × rank`), fp16, so a miss is one contiguous copy.

// One of the named modules allowed `unsafe` (workspace lints): asynchronous copies into device slots.
#![allow(unsafe_code)]

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtr, DriverError, PinnedHostSlice};
use half::f16;

use super::runtime::{CudaFusedApply, DeviceAdapters};
use super::slots::{Lookup, SlotCounters, SlotTable};
use super::CudaError;

/// Staging buffers: a miss waits only for the copy issued `STAGING` misses earlier.
const STAGING: usize = 2;

fn drv(during: &'static str) -> impl Fn(DriverError) -> CudaError {
    move |e| CudaError::Driver {
        during,
        message: e.to_string(),
    }
}

/// Where the cache copies experts from: all adapted layers of an expert, contiguous,
/// in slot layout (the store's mmap'd record).
pub trait ExpertSource {
    /// The fp16 weights of expert `id` (`layers × 2 × rank × d_model` values), or `None`
    /// if there is no such expert.
    fn expert_weights(&self, id: u64) -> Option<&[f16]>;
}

/// Shape of one cached expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertLayout {
    /// Adapted layers per expert.
    pub layers: usize,
    /// Adapter rank.
    pub rank: usize,
    /// Model width.
    pub d_model: usize,
}

impl ExpertLayout {
    /// fp16 values of one layer (`A` and `B`).
    pub fn layer_values(&self) -> usize {
        2 * self.rank * self.d_model
    }

    /// fp16 values of one slot (all layers).
    pub fn slot_values(&self) -> usize {
        self.layers * self.layer_values()
    }
}

/// Counters of the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Slots in the pool.
    pub slots: usize,
    /// Slots holding an expert.
    pub resident: usize,
    /// Hits, misses, evictions, refusals.
    pub counters: SlotCounters,
    /// Bytes copied host → device for misses.
    pub bytes_copied: u64,
}

/// Experts pinned for one request, in the order asked for.
#[derive(Debug)]
pub struct CacheLease {
    ids: Vec<u64>,
    slots: Vec<usize>,
    cache_id: usize,
}

impl CacheLease {
    /// The experts, in the order they were acquired (the candidate order).
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }
}

/// A fixed pool of device slots holding hot experts.
pub struct DeviceExpertCache {
    layout: ExpertLayout,
    table: SlotTable,
    pool: CudaSlice<f16>,
    pool_base: u64,
    staging: Vec<PinnedHostSlice<f16>>,
    next_staging: usize,
    copy_stream: Arc<CudaStream>,
    compute: Arc<CudaStream>,
    bytes_copied: u64,
    /// Recorded on the copy stream after the latest acquire that copied anything. A
    /// launch waits for it, so a hit on an expert whose copy (issued by any request) is
    /// still in flight is safe.
    last_copy: Option<CudaEvent>,
    cache_id: usize,
}

impl std::fmt::Debug for DeviceExpertCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceExpertCache")
            .field("layout", &self.layout)
            .field("stats", &self.stats())
            .finish()
    }
}

impl DeviceExpertCache {
    /// A cache of `slots` experts of `layout` on `rt`'s device.
    pub fn new(rt: &CudaFusedApply, layout: ExpertLayout, slots: usize) -> Result<Self, CudaError> {
        static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        let ctx = rt.context();
        let per = layout.slot_values().max(1);
        let pool = rt
            .stream()
            .alloc_zeros::<f16>(per.saturating_mul(slots.max(1)))
            .map_err(drv("allocate cache pool"))?;
        let pool_base = pool.device_ptr(rt.stream()).0;
        let mut staging = Vec::with_capacity(STAGING);
        for _ in 0..STAGING {
            // SAFETY: page-locked host memory of `per` values; its contents are written
            // (`copy_from_slice`) before any copy reads them.
            let buf = unsafe { ctx.alloc_pinned::<f16>(per) }.map_err(drv("cuMemHostAlloc"))?;
            staging.push(buf);
        }
        let copy_stream = ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        rt.synchronize()?;
        Ok(Self {
            layout,
            table: SlotTable::new(slots),
            pool,
            pool_base,
            staging,
            next_staging: 0,
            copy_stream,
            compute: rt.stream().clone(),
            bytes_copied: 0,
            last_copy: None,
            cache_id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Hit/miss counters and occupancy.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            slots: self.table.capacity(),
            resident: self.table.resident(),
            counters: self.table.counters(),
            bytes_copied: self.bytes_copied,
        }
    }

    /// The shape of a cached expert.
    pub fn layout(&self) -> ExpertLayout {
        self.layout
    }

    /// Pins `ids` for a request, copying the missing ones in (asynchronously, on the
    /// copy stream). On error nothing stays pinned.
    pub fn acquire(
        &mut self,
        ids: &[u64],
        source: &dyn ExpertSource,
    ) -> Result<CacheLease, CudaError> {
        // A slot being refilled may still be read by kernels already enqueued (by a
        // request that has released it): copies wait for the launch stream's work so far.
        let guard = self
            .compute
            .record_event(None)
            .map_err(drv("cuEventRecord"))?;
        self.copy_stream
            .wait(&guard)
            .map_err(drv("cuStreamWaitEvent"))?;
        let mut slots = Vec::with_capacity(ids.len());
        let mut copied = false;
        let mut failed = None;
        for &id in ids {
            match self.acquire_one(id, source, &mut copied) {
                Ok(s) => slots.push(s),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if copied {
            self.last_copy = Some(
                self.copy_stream
                    .record_event(None)
                    .map_err(drv("cuEventRecord"))?,
            );
        }
        if let Some(e) = failed {
            for s in slots {
                self.table.unpin(s);
            }
            return Err(e);
        }
        Ok(CacheLease {
            ids: ids.to_vec(),
            slots,
            cache_id: self.cache_id,
        })
    }

    fn acquire_one(
        &mut self,
        id: u64,
        source: &dyn ExpertSource,
        copied: &mut bool,
    ) -> Result<usize, CudaError> {
        let slot = match self.table.lookup_or_assign(id) {
            Lookup::Hit(s) => s,
            Lookup::Full => {
                return Err(CudaError::CacheFull {
                    slots: self.table.capacity(),
                })
            }
            Lookup::Miss { slot, .. } => {
                if let Err(e) = self.fill(slot, id, source) {
                    self.table.forget(slot);
                    return Err(e);
                }
                *copied = true;
                slot
            }
        };
        self.table.pin(slot);
        Ok(slot)
    }

    fn fill(&mut self, slot: usize, id: u64, source: &dyn ExpertSource) -> Result<(), CudaError> {
        let per = self.layout.slot_values();
        let w = source.expert_weights(id).ok_or_else(|| CudaError::Expert {
            id,
            what: "not found in the source".into(),
        })?;
        if w.len() != per {
            return Err(CudaError::Expert {
                id,
                what: format!(
                    "has {} fp16 values, the cache's layout {:?} needs {per}",
                    w.len(),
                    self.layout
                ),
            });
        }
        if per == 0 {
            return Ok(());
        }
        let i = self.next_staging % self.staging.len().max(1);
        self.next_staging = self.next_staging.wrapping_add(1);
        let Some(stage) = self.staging.get_mut(i) else {
            return Err(CudaError::Invalid("no staging buffer".into()));
        };
        // Waits until the previous copy out of this staging buffer has finished.
        stage
            .as_mut_slice()
            .map_err(drv("staging buffer"))?
            .copy_from_slice(w);
        let range = slot * per..(slot + 1) * per;
        let mut dst = self
            .pool
            .try_slice_mut(range)
            .ok_or_else(|| CudaError::Invalid(format!("slot {slot} outside the pool")))?;
        self.copy_stream
            .memcpy_htod(&*stage, &mut dst)
            .map_err(drv("cuMemcpyHtoDAsync"))?;
        self.bytes_copied += (per * 2) as u64;
        Ok(())
    }

    /// Device pointers of the leased experts' weights at `layer`, in lease order, for
    /// [`CudaFusedApply::launch`]. Makes the launch stream wait for the copies issued so far.
    pub fn adapters(
        &self,
        rt: &CudaFusedApply,
        lease: &CacheLease,
        layer: usize,
    ) -> Result<DeviceAdapters, CudaError> {
        if lease.cache_id != self.cache_id {
            return Err(CudaError::Invalid("lease of another cache".into()));
        }
        if layer >= self.layout.layers {
            return Err(CudaError::Invalid(format!(
                "layer {layer} of {} adapted layers",
                self.layout.layers
            )));
        }
        if let Some(ev) = &self.last_copy {
            rt.stream().wait(ev).map_err(drv("cuStreamWaitEvent"))?;
        }
        let bytes = 2u64;
        let per_slot = (self.layout.slot_values() as u64) * bytes;
        let layer_off = (layer * self.layout.layer_values()) as u64 * bytes;
        let a_len = (self.layout.rank * self.layout.d_model) as u64 * bytes;
        let a: Vec<u64> = lease
            .slots
            .iter()
            .map(|&s| self.pool_base + s as u64 * per_slot + layer_off)
            .collect();
        let b: Vec<u64> = a.iter().map(|p| p + a_len).collect();
        DeviceAdapters::from_pointers(rt, &a, &b, self.layout.rank, self.layout.d_model, None)
    }

    /// Unpins a request's experts. Kernels already enqueued may still read them; a later
    /// refill of their slots waits for those (see [`Self::acquire`]).
    pub fn release(&mut self, lease: CacheLease) {
        if lease.cache_id != self.cache_id {
            return;
        }
        for s in lease.slots {
            self.table.unpin(s);
        }
    }

    /// Whether `id` is resident (without counting a use).
    pub fn contains(&self, id: u64) -> bool {
        self.table.slot_of(id).is_some()
    }
}
