//! In-memory map from expert id to record location, shared copy-on-write by snapshots.
//!
//! Ids are assigned densely from 1, so the table is a vector of fixed-size chunks.
//! Publishing a new version after a commit clones only the outer vector of chunk
//! pointers and the chunks the commit touched; a snapshot is one `Arc` clone. This keeps
//! readers lock-free and a commit O(touched chunks + ids/CHUNK) instead of O(experts).

use std::sync::Arc;

const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// Location of a committed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Loc {
    /// Shard id (≥ 1).
    pub shard: u32,
    /// Slot inside the shard.
    pub slot: u32,
}

impl Loc {
    fn pack(self) -> u64 {
        ((self.shard as u64) << 32) | self.slot as u64
    }
    fn unpack(v: u64) -> Option<Loc> {
        // Shard ids start at 1, so 0 can mean "no record".
        (v != 0).then_some(Loc {
            shard: (v >> 32) as u32,
            slot: v as u32,
        })
    }
}

#[derive(Clone, Default)]
pub(crate) struct LocTable {
    chunks: Vec<Option<Arc<[u64; CHUNK]>>>,
    live: u64,
}

impl LocTable {
    pub(crate) fn get(&self, id: u64) -> Option<Loc> {
        let (c, i) = split(id)?;
        let chunk = self.chunks.get(c)?.as_ref()?;
        Loc::unpack(chunk[i])
    }

    /// Sets or clears `id`; returns the previous location.
    pub(crate) fn set(&mut self, id: u64, loc: Option<Loc>) -> Option<Loc> {
        let (c, i) = split(id)?;
        if self.chunks.len() <= c {
            // Clearing an id beyond the table is a no-op; only growth needs a new chunk.
            loc?;
            self.chunks.resize(c + 1, None);
        }
        let slot = &mut self.chunks[c];
        let chunk = slot.get_or_insert_with(|| Arc::new([0u64; CHUNK]));
        let arr = Arc::make_mut(chunk);
        let prev = Loc::unpack(arr[i]);
        arr[i] = loc.map_or(0, Loc::pack);
        match (prev.is_some(), loc.is_some()) {
            (false, true) => self.live += 1,
            (true, false) => self.live -= 1,
            _ => {}
        }
        prev
    }

    pub(crate) fn len(&self) -> u64 {
        self.live
    }

    /// Live `(id, loc)` pairs in ascending id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, Loc)> + '_ {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk.iter().flat_map(move |arr| {
                arr.iter().enumerate().filter_map(move |(i, v)| {
                    Loc::unpack(*v).map(|loc| (((c as u64) << CHUNK_BITS) | i as u64, loc))
                })
            })
        })
    }
}

fn split(id: u64) -> Option<(usize, usize)> {
    let c = usize::try_from(id >> CHUNK_BITS).ok()?;
    Some((c, (id as usize) & (CHUNK - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_on_write_keeps_old_versions() {
        let mut t = LocTable::default();
        let l = |s, x| Some(Loc { shard: s, slot: x });
        t.set(1, l(1, 0));
        t.set(5000, l(2, 3));
        let snap = t.clone();
        t.set(1, None);
        t.set(7, l(1, 1));
        assert_eq!(snap.get(1), l(1, 0));
        assert_eq!(snap.get(7), None);
        assert_eq!(t.get(1), None);
        assert_eq!(t.get(7), l(1, 1));
        assert_eq!(t.len(), 2);
        assert_eq!(snap.len(), 2);
        let ids: Vec<u64> = t.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![7, 5000]);
        assert_eq!(t.get(u64::MAX), None);
        assert_eq!(t.set(1 << 40, None), None);
    }
}
