//! Bookkeeping of the device expert cache: which expert sits in which slot, pins, LRU.
//! Pure (no GPU); the device side is `cache` (feature `cuda`).

use std::collections::HashMap;

/// Result of [`SlotTable::lookup_or_assign`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The expert is resident in this slot.
    Hit(usize),
    /// The expert was given this slot and must be copied in; `evicted` is the expert
    /// that lived there before, if any.
    Miss {
        /// The slot to fill.
        slot: usize,
        /// The expert that was evicted from it.
        evicted: Option<u64>,
    },
    /// Every slot is pinned: nothing can be evicted.
    Full,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    id: Option<u64>,
    pins: u32,
    last_used: u64,
}

/// Hit, miss and eviction counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCounters {
    /// Lookups that found the expert resident.
    pub hits: u64,
    /// Lookups that assigned a slot (the expert had to be copied in).
    pub misses: u64,
    /// Misses that evicted another expert.
    pub evictions: u64,
    /// Lookups refused because every slot was pinned.
    pub full: u64,
}

/// A fixed number of slots, each holding one expert (all its adapted layers), with LRU
/// replacement among unpinned slots. An expert is pinned while a request in flight uses
/// it, so its slot is never overwritten under a running kernel.
#[derive(Debug, Clone)]
pub struct SlotTable {
    slots: Vec<Slot>,
    map: HashMap<u64, usize>,
    tick: u64,
    counters: SlotCounters,
}

impl SlotTable {
    /// A table of `slots` empty slots.
    pub fn new(slots: usize) -> Self {
        Self {
            slots: vec![Slot::default(); slots],
            map: HashMap::with_capacity(slots),
            tick: 0,
            counters: SlotCounters::default(),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Number of slots holding an expert.
    pub fn resident(&self) -> usize {
        self.map.len()
    }

    /// The slot of `id`, if resident (does not count as a use).
    pub fn slot_of(&self, id: u64) -> Option<usize> {
        self.map.get(&id).copied()
    }

    /// The expert in `slot`, if any.
    pub fn id_in(&self, slot: usize) -> Option<u64> {
        self.slots.get(slot).and_then(|s| s.id)
    }

    /// Pins on `slot` (0 for an unknown slot).
    pub fn pins(&self, slot: usize) -> u32 {
        self.slots.get(slot).map_or(0, |s| s.pins)
    }

    /// Counters so far.
    pub fn counters(&self) -> SlotCounters {
        self.counters
    }

    /// Finds `id`'s slot, or assigns it one: a free slot if there is one (lowest index
    /// first), else the least recently used unpinned slot. Marks the slot used.
    pub fn lookup_or_assign(&mut self, id: u64) -> Lookup {
        self.tick += 1;
        if let Some(&s) = self.map.get(&id) {
            if let Some(slot) = self.slots.get_mut(s) {
                slot.last_used = self.tick;
            }
            self.counters.hits += 1;
            return Lookup::Hit(s);
        }
        let free = self.slots.iter().position(|s| s.id.is_none());
        let victim = free.or_else(|| {
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.pins == 0)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(i, _)| i)
        });
        let Some(s) = victim else {
            self.counters.full += 1;
            return Lookup::Full;
        };
        let tick = self.tick;
        let Some(slot) = self.slots.get_mut(s) else {
            return Lookup::Full;
        };
        let evicted = slot.id.replace(id);
        slot.last_used = tick;
        if let Some(old) = evicted {
            self.map.remove(&old);
            self.counters.evictions += 1;
        }
        self.map.insert(id, s);
        self.counters.misses += 1;
        Lookup::Miss { slot: s, evicted }
    }

    /// Adds a pin to `slot`. Returns false for an unknown or empty slot.
    pub fn pin(&mut self, slot: usize) -> bool {
        match self.slots.get_mut(slot) {
            Some(s) if s.id.is_some() => {
                s.pins += 1;
                true
            }
            _ => false,
        }
    }

    /// Removes a pin from `slot`. Returns false if it had none.
    pub fn unpin(&mut self, slot: usize) -> bool {
        match self.slots.get_mut(slot) {
            Some(s) if s.pins > 0 => {
                s.pins -= 1;
                true
            }
            _ => false,
        }
    }

    /// Empties `slot` (e.g. its copy failed), dropping its pins.
    pub fn forget(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            if let Some(id) = s.id.take() {
                self.map.remove(&id);
            }
            s.pins = 0;
        }
    }

    /// Resident, unpinned experts in the order they would be evicted (first = next).
    pub fn eviction_order(&self) -> Vec<u64> {
        let mut v: Vec<(u64, u64)> = self
            .slots
            .iter()
            .filter(|s| s.pins == 0)
            .filter_map(|s| s.id.map(|id| (s.last_used, id)))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fills_free_slots_then_hits() {
        let mut t = SlotTable::new(3);
        assert_eq!(
            t.lookup_or_assign(10),
            Lookup::Miss {
                slot: 0,
                evicted: None
            }
        );
        assert_eq!(
            t.lookup_or_assign(11),
            Lookup::Miss {
                slot: 1,
                evicted: None
            }
        );
        assert_eq!(t.lookup_or_assign(10), Lookup::Hit(0));
        assert_eq!(t.resident(), 2);
        assert_eq!(
            t.counters(),
            SlotCounters {
                hits: 1,
                misses: 2,
                evictions: 0,
                full: 0
            }
        );
    }

    #[test]
    fn evicts_least_recently_used_unpinned() {
        let mut t = SlotTable::new(3);
        for id in [1, 2, 3] {
            t.lookup_or_assign(id);
        }
        t.lookup_or_assign(1); // 2 is now the oldest
        assert_eq!(t.eviction_order(), [2, 3, 1]);
        assert_eq!(
            t.lookup_or_assign(4),
            Lookup::Miss {
                slot: 1,
                evicted: Some(2)
            }
        );
        assert_eq!(t.slot_of(2), None);
        assert_eq!(t.slot_of(4), Some(1));
        assert_eq!(t.counters().evictions, 1);
        assert_eq!(t.eviction_order(), [3, 1, 4]);
    }

    #[test]
    fn pinned_slots_are_never_evicted() {
        let mut t = SlotTable::new(2);
        let Lookup::Miss { slot: a, .. } = t.lookup_or_assign(1) else {
            panic!()
        };
        let Lookup::Miss { slot: b, .. } = t.lookup_or_assign(2) else {
            panic!()
        };
        assert!(t.pin(a));
        assert!(t.pin(a));
        // 1 is older but pinned: 2 goes.
        assert_eq!(
            t.lookup_or_assign(3),
            Lookup::Miss {
                slot: b,
                evicted: Some(2)
            }
        );
        assert!(t.pin(b));
        assert_eq!(t.lookup_or_assign(4), Lookup::Full);
        assert_eq!(t.counters().full, 1);
        // Still resident and hit while full.
        assert_eq!(t.lookup_or_assign(1), Lookup::Hit(a));
        assert!(t.unpin(a));
        assert_eq!(t.lookup_or_assign(4), Lookup::Full, "a still has one pin");
        assert!(t.unpin(a));
        assert!(!t.unpin(a));
        assert_eq!(
            t.lookup_or_assign(4),
            Lookup::Miss {
                slot: a,
                evicted: Some(1)
            }
        );
        assert_eq!(t.pins(b), 1);
    }

    #[test]
    fn forget_frees_a_slot() {
        let mut t = SlotTable::new(1);
        t.lookup_or_assign(7);
        assert!(t.pin(0));
        t.forget(0);
        assert_eq!(t.pins(0), 0);
        assert_eq!(t.slot_of(7), None);
        assert!(!t.pin(0), "empty slots cannot be pinned");
        assert_eq!(
            t.lookup_or_assign(8),
            Lookup::Miss {
                slot: 0,
                evicted: None
            }
        );
        assert_eq!(t.id_in(0), Some(8));
        assert_eq!(SlotTable::new(0).lookup_or_assign(1), Lookup::Full);
    }
}
