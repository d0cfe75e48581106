//! Exact cosine search by a full scan: the oracle for recall tests, and the best index
//! for stores small enough that a scan beats a graph walk (a few tens of thousands).

use std::collections::HashMap;
use std::path::Path;

use parking_lot::RwLock;

use super::error::{IndexError, IndexResult as Result};
use super::{check_k, check_query, Hit, KeyIndex};

#[derive(Default)]
struct Inner {
    ids: Vec<u64>,
    /// Unit-normalised keys, `ids.len() × dim`, so a dot product is the cosine.
    keys: Vec<f32>,
    pos: HashMap<u64, usize>,
}

/// Exact index: unit-normalised f32 keys in one matrix.
pub struct FlatIndex {
    dim: usize,
    inner: RwLock<Inner>,
}

pub(crate) fn normalized(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter().map(|x| x / n).collect()
    } else {
        v.to_vec()
    }
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise without reassociation.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

impl FlatIndex {
    /// An empty index of keys of length `dim`.
    pub fn new(dim: usize) -> Self {
        FlatIndex {
            dim,
            inner: RwLock::new(Inner::default()),
        }
    }

    /// Loads an index written by [`KeyIndex::save`].
    pub fn load(path: &Path, dim: usize) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| IndexError::io(path, e))?;
        let bad =
            |what: &str| IndexError::corrupt(format!("flat index {}: {what}", path.display()));
        if bytes.len() < 16 || &bytes[0..8] != b"MOMEFLAT" {
            return Err(bad("bad magic"));
        }
        let n = u64::from_le_bytes(bytes[8..16].try_into().map_err(|_| bad("header"))?) as usize;
        let rec = 8 + dim * 4;
        // Checked: the count is the file's claim, and a wrapped product could match.
        if n.checked_mul(rec).and_then(|b| b.checked_add(16)) != Some(bytes.len()) {
            return Err(bad("length does not match its count"));
        }
        let idx = FlatIndex::new(dim);
        {
            let mut g = idx.inner.write();
            for r in bytes[16..].chunks_exact(rec) {
                let id = u64::from_le_bytes(r[0..8].try_into().map_err(|_| bad("record"))?);
                let p = g.ids.len();
                g.pos.insert(id, p);
                g.ids.push(id);
                g.keys.extend(
                    r[8..]
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
        }
        Ok(idx)
    }
}

impl KeyIndex for FlatIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.inner.read().ids.len()
    }

    fn add(&self, id: u64, key: &[f32]) -> Result<()> {
        check_query(key, self.dim, "key")?;
        let key = normalized(key);
        let mut g = self.inner.write();
        if let Some(&p) = g.pos.get(&id) {
            g.keys[p * self.dim..(p + 1) * self.dim].copy_from_slice(&key);
        } else {
            let p = g.ids.len();
            g.ids.push(id);
            g.keys.extend_from_slice(&key);
            g.pos.insert(id, p);
        }
        Ok(())
    }

    fn is_exact(&self) -> bool {
        true
    }

    fn remove(&self, id: u64) -> Result<bool> {
        let mut g = self.inner.write();
        let Some(p) = g.pos.remove(&id) else {
            return Ok(false);
        };
        let last = g.ids.len() - 1;
        if p != last {
            let moved = g.ids[last];
            g.ids[p] = moved;
            let d = self.dim;
            g.keys.copy_within(last * d..(last + 1) * d, p * d);
            g.pos.insert(moved, p);
        }
        g.ids.pop();
        let new_len = g.ids.len() * self.dim;
        g.keys.truncate(new_len);
        Ok(true)
    }

    fn contains(&self, id: u64) -> bool {
        self.inner.read().pos.contains_key(&id)
    }

    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>> {
        check_query(query, self.dim, "query")?;
        check_k(k)?;
        let q = normalized(query);
        let g = self.inner.read();
        let mut hits: Vec<Hit> = g
            .ids
            .iter()
            .zip(g.keys.chunks_exact(self.dim))
            .map(|(&id, key)| Hit {
                id,
                score: dot(&q, key),
            })
            .collect();
        let k = k.min(hits.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        let by_score = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id));
        if k < hits.len() {
            hits.select_nth_unstable_by(k - 1, by_score);
            hits.truncate(k);
        }
        hits.sort_by(by_score);
        Ok(hits)
    }

    fn save(&self, path: &Path) -> Result<()> {
        let g = self.inner.read();
        let mut out = Vec::with_capacity(16 + g.ids.len() * (8 + self.dim * 4));
        out.extend_from_slice(b"MOMEFLAT");
        out.extend_from_slice(&(g.ids.len() as u64).to_le_bytes());
        for (id, key) in g.ids.iter().zip(g.keys.chunks_exact(self.dim)) {
            out.extend_from_slice(&id.to_le_bytes());
            for x in key {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        crate::fs::write_file(path, &out).map_err(|e| IndexError::io(path, e))
    }

    fn memory_bytes(&self) -> usize {
        let g = self.inner.read();
        g.keys.len() * 4 + g.ids.len() * 8 + g.pos.len() * 24
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_top_k_with_removes_and_round_trip() {
        let idx = FlatIndex::new(3);
        idx.add(1, &[1.0, 0.0, 0.0]).unwrap();
        idx.add(2, &[0.0, 1.0, 0.0]).unwrap();
        idx.add(3, &[1.0, 1.0, 0.0]).unwrap();
        idx.add(4, &[0.0, 0.0, 0.0]).unwrap();
        let hits = idx.search(&[2.0, 0.1, 0.0], 2).unwrap();
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![1, 3]);
        assert!((hits[0].score - 0.99875).abs() < 1e-4);
        assert!(idx.remove(1).unwrap());
        assert!(!idx.remove(1).unwrap());
        let hits = idx.search(&[2.0, 0.1, 0.0], 10).unwrap();
        assert_eq!(hits.len(), 3);
        assert_eq!(hits[0].id, 3);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("flat");
        idx.save(&p).unwrap();
        let back = FlatIndex::load(&p, 3).unwrap();
        assert_eq!(back.search(&[2.0, 0.1, 0.0], 10).unwrap(), hits);
        assert!(idx.search(&[f32::NAN, 0.0, 0.0], 1).is_err());
        assert!(idx.search(&[1.0, 0.0], 1).is_err());
        assert!(idx.search(&[1.0, 0.0, 0.0], 0).is_err());
    }
}
