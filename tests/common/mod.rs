//! Helpers shared by the integration tests: deterministic experts from a seed (store,
//! index), clustered keys (recall), tiny models and tokenizers (backbone).
#![allow(dead_code)]

use candle_core::quantized::gguf_file::Value;
use candle_core::{Device, Tensor, D};
use mome::{AdapterHook, Llama};
use mome::{ExpertRef, StoreConfig};
use std::path::PathBuf;

/// A small shape with tiny shards so that tests cross many roll-overs quickly.
pub fn small_config() -> StoreConfig {
    StoreConfig::new(16, 8, 2, vec![1, 3]).with_shard_size(64 * 1024)
}

#[allow(unused_imports)]
pub use mome::synth::{seeded_expert as expert, seeded_values as values};

/// Panics unless the stored expert is byte-identical to `expert(cfg, seed)`.
pub fn assert_expert(cfg: &StoreConfig, got: &ExpertRef, seed: u64) {
    let want = expert(cfg, seed);
    assert_eq!(got.key(), &want.key[..], "key of expert {}", got.id());
    for (l, p) in want.layers.iter().enumerate() {
        assert_eq!(got.a(l), &p.a[..], "A{l} of expert {}", got.id());
        assert_eq!(got.b(l), &p.b[..], "B{l} of expert {}", got.id());
    }
}

/// Reads back the seed recorded in an expert's provenance.
pub fn seed_of(text: &str) -> Option<u64> {
    text.strip_prefix("seed=")?.parse().ok()
}

#[allow(unused_imports)]
pub use mome::synth::clustered_keys;

// ---- backbone helpers ----
// Not every test uses all of them.
#[allow(unused_imports)]
pub use mome::tiny::{tiny_config, tiny_tokenizer_metadata, tiny_vocab, TINY_SPECIALS};

/// A tiny random model.
pub fn tiny_model(seed: u64) -> Llama {
    mome::tiny::tiny_model(seed).expect("tiny model")
}

/// Max absolute difference of two tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .expect("same shape")
        .abs()
        .expect("abs")
        .flatten_all()
        .expect("flatten")
        .max(0)
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar")
}

/// Bit patterns of a tensor's values.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .expect("flatten")
        .to_vec1::<f32>()
        .expect("f32")
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// The real model, or `None` to skip — except under CI, where a missing
/// model fails the test (CI fetches it first).
pub fn real_model_path() -> Option<PathBuf> {
    match mome::locate_model(None) {
        Ok(p) => Some(p),
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but the real model is missing: {e}");
            }
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// A reference gated adapter hook: per token, cosine scores of the query
/// against expert keys, experts below `tau` abstain, softmax over the rest,
/// `h + Σ w_j B_j A_j h̃`. Returns `h` itself when nothing is selected.
pub struct GatedHook {
    /// `[n, d]`, unit rows.
    pub keys: Tensor,
    /// Per adapted layer: `(A [n, r, d], B [n, d, r])`.
    pub adapters: Vec<(usize, Tensor, Tensor)>,
    pub tau: f32,
}

impl GatedHook {
    pub fn random(layers: &[usize], n: usize, d: usize, r: usize, tau: f32, seed: u64) -> Self {
        let dev = Device::Cpu;
        let rnd = |shape: &[usize], s: u64| {
            let count: usize = shape.iter().product();
            let data: Vec<f32> = (0..count)
                .map(|i| {
                    let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ s);
                    ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect();
            Tensor::from_vec(data, shape, &dev).expect("tensor")
        };
        let keys = rnd(&[n, d], seed);
        let norm = keys.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
        let keys = keys.broadcast_div(&norm).unwrap();
        let adapters = layers
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                (
                    l,
                    (rnd(&[n, r, d], seed + 10 + i as u64) * 0.3).unwrap(),
                    (rnd(&[n, d, r], seed + 20 + i as u64) * 0.3).unwrap(),
                )
            })
            .collect();
        Self {
            keys,
            adapters,
            tau,
        }
    }
}

impl AdapterHook for GatedHook {
    fn apply(
        &self,
        layer: usize,
        _pos: usize,
        h: &Tensor,
        h_norm: &Tensor,
        queries: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let Some((_, a, b)) = self.adapters.iter().find(|(l, _, _)| *l == layer) else {
            return Ok(h.clone());
        };
        let (bsz, t, d) = h.dims3()?;
        let q = queries.reshape((bsz * t, d))?;
        let qn = q.broadcast_div(&q.sqr()?.sum_keepdim(1)?.sqrt()?)?;
        let scores = qn.matmul(&self.keys.t()?)?; // [bt, n]
        let selected = scores.ge(self.tau as f64)?; // [bt, n]
        if selected
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?
            == 0.0
        {
            return Ok(h.clone());
        }
        // Abstaining experts get a logit whose softmax weight underflows to 0;
        // rows where all abstain are zeroed by the mask afterwards.
        let floor = Tensor::full(-1e4f32, scores.shape(), scores.device())?;
        let logits = selected.where_cond(&(&scores * 10.0)?, &floor)?;
        let w = candle_nn::ops::softmax(&logits, D::Minus1)?
            .mul(&selected.to_dtype(candle_core::DType::F32)?)?; // [bt, n]
        let x = h_norm.reshape((bsz * t, d))?;
        let n = self.keys.dim(0)?;
        let mut delta = Tensor::zeros((bsz * t, d), h.dtype(), h.device())?;
        for j in 0..n {
            let aj = a.get(j)?; // [r, d]
            let bj = b.get(j)?; // [d, r]
            let yj = x.matmul(&aj.t()?)?.matmul(&bj.t()?)?; // [bt, d]
            let wj = w.narrow(1, j, 1)?;
            delta = (delta + yj.broadcast_mul(&wj)?)?;
        }
        h + delta.reshape((bsz, t, d))?
    }
}

/// The tiny random model and the tiny tokenizer as an engine's backbone; the same
/// seed gives the same weights (and digest) in every process.
pub fn tiny_backbone(seed: u64) -> mome::Backbone {
    let md: std::collections::HashMap<String, Value> =
        tiny_tokenizer_metadata().into_iter().collect();
    let tokenizer = mome::Tokenizer::from_gguf_metadata(&md, std::path::Path::new("tiny.gguf"))
        .expect("tiny tokenizer");
    mome::Backbone {
        model: tiny_model(seed),
        tokenizer,
    }
}

/// An engine on the tiny backbone over the store in `dir` (created with the engine's
/// defaults for that model if there is none).
pub fn tiny_engine(dir: &std::path::Path, seed: u64) -> mome::Engine {
    mome::Engine::open_or_create_with(dir, tiny_backbone(seed), None, Default::default())
        .expect("tiny engine")
}
