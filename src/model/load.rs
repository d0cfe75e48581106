//! Loading and saving weights: GGUF (llama.cpp layout), safetensors (a Hugging
//! Face Llama checkpoint directory), and tiny random models for tests.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

use super::config::LlamaConfig;
use super::error::{CandleContext, ModelError, ModelResult};
use super::linear::Linear;
use super::llama::{Block, Llama, WeightFormat};
use super::sha256::{sha256_hex, Sha256};

/// A parsed GGUF file held in memory.
pub(crate) struct GgufFile {
    pub(crate) path: PathBuf,
    pub(crate) bytes: Vec<u8>,
    pub(crate) content: gguf_file::Content,
}

impl GgufFile {
    /// Reads and parses `path`, checking that every tensor's data lies inside the file.
    pub(crate) fn read(path: &Path) -> ModelResult<Self> {
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ModelError::ModelNotFound {
                    path: path.to_path_buf(),
                    source_of_path: "the path given",
                }
            } else {
                ModelError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let invalid = |message: String| ModelError::InvalidGguf {
            path: path.to_path_buf(),
            message,
        };
        // candle's reader divides by `general.alignment` unchecked (0 panics): a bad file
        // is a typed error here, never a panic.
        let content =
            std::panic::catch_unwind(|| gguf_file::Content::read(&mut Cursor::new(&bytes[..])))
                .map_err(|_| {
                    invalid("the GGUF reader failed on its header (general.alignment 0?)".into())
                })?
                .map_err(|e| invalid(e.to_string()))?;
        let actual = bytes.len() as u64;
        let mut infos: Vec<_> = content.tensor_infos.iter().collect();
        infos.sort_by_key(|(_, info)| info.offset);
        for (name, info) in infos {
            let dtype = info.ggml_dtype;
            let elems = info.shape.elem_count();
            if !elems.is_multiple_of(dtype.block_size()) {
                return Err(ModelError::BadTensor {
                    name: name.clone(),
                    problem: format!("{elems} elements is not a whole number of {dtype:?} blocks"),
                });
            }
            let size = (elems / dtype.block_size() * dtype.type_size()) as u64;
            let needed = content
                .tensor_data_offset
                .saturating_add(info.offset)
                .saturating_add(size);
            if needed > actual {
                return Err(ModelError::Truncated {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    needed,
                    actual,
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            content,
        })
    }

    pub(crate) fn metadata(&self) -> &HashMap<String, gguf_file::Value> {
        &self.content.metadata
    }

    fn bad_md(&self, key: &str, problem: impl Into<String>) -> ModelError {
        ModelError::BadMetadata {
            path: self.path.clone(),
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    fn md(&self, key: &str) -> ModelResult<&gguf_file::Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.bad_md(key, "missing"))
    }

    pub(crate) fn md_u32(&self, key: &str) -> ModelResult<u32> {
        let v = self.md(key)?;
        // Writers differ in the integer width they use for counts.
        v.to_u32()
            .or_else(|_| v.to_u64().map(|x| x as u32))
            .or_else(|_| v.to_i32().map(|x| x as u32))
            .map_err(|e| self.bad_md(key, e.to_string()))
    }

    pub(crate) fn md_u32_opt(&self, key: &str) -> ModelResult<Option<u32>> {
        if self.content.metadata.contains_key(key) {
            self.md_u32(key).map(Some)
        } else {
            Ok(None)
        }
    }

    fn md_f32(&self, key: &str) -> ModelResult<f32> {
        let v = self.md(key)?;
        v.to_f32()
            .or_else(|_| v.to_f64().map(|x| x as f32))
            .map_err(|e| self.bad_md(key, e.to_string()))
    }

    pub(crate) fn md_str(&self, key: &str) -> ModelResult<&str> {
        self.md(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| self.bad_md(key, e.to_string()))
    }

    fn tensor(&self, name: &str, expected: &[usize], device: &Device) -> ModelResult<QTensor> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            });
        }
        let qt = self
            .content
            .tensor(&mut Cursor::new(&self.bytes[..]), name, device)
            .map_err(|e| ModelError::BadTensor {
                name: name.to_string(),
                problem: e.to_string(),
            })?;
        if qt.shape().dims() != expected {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: qt.shape().dims().to_vec(),
            });
        }
        Ok(qt)
    }

    /// The model configuration from the `llama.*` metadata.
    pub(crate) fn llama_config(&self) -> ModelResult<LlamaConfig> {
        let arch = self.md_str("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::UnsupportedArchitecture {
                path: self.path.clone(),
                found: format!("general.architecture = {arch:?}"),
            });
        }
        if let Some(n) = self.md_u32_opt("llama.expert_count")? {
            if n > 1 {
                return Err(ModelError::UnsupportedArchitecture {
                    path: self.path.clone(),
                    found: format!("a mixture of {n} experts (llama.expert_count)"),
                });
            }
        }
        if let Ok(kind) = self.md_str("llama.rope.scaling.type") {
            if kind != "none" {
                return Err(ModelError::UnsupportedArchitecture {
                    path: self.path.clone(),
                    found: format!("RoPE scaling {kind:?}"),
                });
            }
        }
        let hidden = self.md_u32("llama.embedding_length")? as usize;
        let heads = self.md_u32("llama.attention.head_count")? as usize;
        let vocab_size = match self.md_u32_opt("llama.vocab_size")? {
            Some(v) => v as usize,
            None => match self.content.tensor_infos.get("token_embd.weight") {
                Some(info) => info.shape.dims().first().copied().unwrap_or(0),
                None => {
                    return Err(ModelError::MissingTensor {
                        path: self.path.clone(),
                        name: "token_embd.weight".into(),
                    })
                }
            },
        };
        let config = LlamaConfig {
            vocab_size,
            hidden_size: hidden,
            intermediate_size: self.md_u32("llama.feed_forward_length")? as usize,
            num_hidden_layers: self.md_u32("llama.block_count")? as usize,
            num_attention_heads: heads,
            num_key_value_heads: self
                .md_u32_opt("llama.attention.head_count_kv")?
                .map_or(heads, |v| v as usize),
            rms_norm_eps: self.md_f32("llama.attention.layer_norm_rms_epsilon")? as f64,
            rope_theta: if self.content.metadata.contains_key("llama.rope.freq_base") {
                self.md_f32("llama.rope.freq_base")?
            } else {
                10_000.0
            },
            max_position_embeddings: self
                .md_u32_opt("llama.context_length")?
                .map_or(4096, |v| v as usize),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            bos_token_id: self.md_u32_opt("tokenizer.ggml.bos_token_id")?,
            eos_token_id: self.md_u32_opt("tokenizer.ggml.eos_token_id")?,
        };
        config.validate()?;
        if let Some(rope_dim) = self.md_u32_opt("llama.rope.dimension_count")? {
            if rope_dim as usize != config.head_dim() {
                return Err(ModelError::UnsupportedArchitecture {
                    path: self.path.clone(),
                    found: format!(
                        "partial rotary embedding ({rope_dim} of {} head dimensions)",
                        config.head_dim()
                    ),
                });
            }
        }
        Ok(config)
    }

    /// Builds the model; the digest is the SHA-256 of the file.
    pub(crate) fn llama(&self, format: WeightFormat, device: &Device) -> ModelResult<Llama> {
        let c = self.llama_config()?;
        let (d, ff, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let kv = c.num_key_value_heads * hd;
        let dense = |name: &str, shape: &[usize]| -> ModelResult<Tensor> {
            self.tensor(name, shape, device)?
                .dequantize(device)
                .ctx(|| format!("dequantizing {name}"))
        };
        let linear = |name: &str, shape: &[usize]| -> ModelResult<Linear> {
            match format {
                WeightFormat::F32 => Ok(Linear::Dense(dense(name, shape)?)),
                WeightFormat::Quantized => {
                    let qt = self.tensor(name, shape, device)?;
                    Ok(Linear::Quantized(
                        QMatMul::from_qtensor(qt).ctx(|| format!("preparing {name}"))?,
                    ))
                }
            }
        };
        let embed_q = self.tensor("token_embd.weight", &[c.vocab_size, d], device)?;
        let embed = embed_q
            .dequantize(device)
            .ctx(|| "dequantizing token_embd.weight".into())?;
        // Grown as layers load: the layer count is the file's claim, not a bound.
        let mut blocks = Vec::new();
        for i in 0..c.num_hidden_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            blocks.push(Block {
                attn_norm: dense(&n("attn_norm"), &[d])?,
                q: linear(&n("attn_q"), &[d, d])?,
                k: linear(&n("attn_k"), &[kv, d])?,
                v: linear(&n("attn_v"), &[kv, d])?,
                o: linear(&n("attn_output"), &[d, d])?,
                ffn_norm: dense(&n("ffn_norm"), &[d])?,
                gate: linear(&n("ffn_gate"), &[ff, d])?,
                up: linear(&n("ffn_up"), &[ff, d])?,
                down: linear(&n("ffn_down"), &[d, ff])?,
            });
        }
        let norm = dense("output_norm.weight", &[d])?;
        let lm_head = if c.tie_word_embeddings {
            match format {
                WeightFormat::F32 => None,
                // The quantized head reuses the checkpoint's quantized embedding.
                WeightFormat::Quantized => Some(Linear::Quantized(
                    QMatMul::from_qtensor(embed_q).ctx(|| "preparing the LM head".into())?,
                )),
            }
        } else {
            Some(linear("output.weight", &[c.vocab_size, d])?)
        };
        let digest = format!("sha256:{}", sha256_hex(&self.bytes));
        Llama::assemble(c, embed, blocks, norm, lm_head, format, digest)
    }
}

/// Permutes a q/k projection from Hugging Face's half-split RoPE layout to the
/// interleaved (GGUF) one: rows `[head][half][i]` become `[head][i][half]`.
fn hf_to_interleaved(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / heads;
    w.reshape((heads, 2, hd / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// Inverse of [`hf_to_interleaved`].
fn interleaved_to_hf(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / heads;
    w.reshape((heads, hd / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

impl Llama {
    /// Loads a GGUF file (llama.cpp's Llama layout).
    ///
    /// `F32` dequantizes everything (trainable, and on CPU the faster path);
    /// `Quantized` keeps the linear layers in their GGUF format.
    pub fn from_gguf(path: &Path, format: WeightFormat, device: &Device) -> ModelResult<Self> {
        GgufFile::read(path)?.llama(format, device)
    }

    /// Builds a model from Hugging Face-named, Hugging Face-layout tensors
    /// (`model.layers.{i}.self_attn.q_proj.weight`, …), converted to f32.
    ///
    /// The digest is `sha256-tensors:` over the tensors in name order.
    pub fn from_hf_tensors(
        config: LlamaConfig,
        tensors: &HashMap<String, Tensor>,
        device: &Device,
    ) -> ModelResult<Self> {
        let digest = format!("sha256-tensors:{}", tensors_digest(tensors)?);
        Self::from_hf_tensors_with_digest(config, tensors, device, Path::new("<memory>"), digest)
    }

    fn from_hf_tensors_with_digest(
        c: LlamaConfig,
        tensors: &HashMap<String, Tensor>,
        device: &Device,
        path: &Path,
        digest: String,
    ) -> ModelResult<Self> {
        c.validate()?;
        let (d, ff, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let kv = c.num_key_value_heads * hd;
        let get = |name: &str, shape: &[usize]| -> ModelResult<Tensor> {
            let t = tensors.get(name).ok_or_else(|| ModelError::MissingTensor {
                path: path.to_path_buf(),
                name: name.to_string(),
            })?;
            if t.dims() != shape {
                return Err(ModelError::ShapeMismatch {
                    name: name.to_string(),
                    expected: shape.to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            match t.dtype() {
                DType::F32 | DType::F16 | DType::BF16 | DType::F64 => {}
                other => {
                    return Err(ModelError::BadTensor {
                        name: name.to_string(),
                        problem: format!("dtype {other:?} is not a float type"),
                    })
                }
            }
            t.to_dtype(DType::F32)
                .and_then(|t| t.to_device(device))
                .ctx(|| format!("converting {name} to f32"))
        };
        let embed = get("model.embed_tokens.weight", &[c.vocab_size, d])?;
        // Grown as layers load: the layer count is the file's claim, not a bound.
        let mut blocks = Vec::new();
        for i in 0..c.num_hidden_layers {
            let n = |s: &str| format!("model.layers.{i}.{s}.weight");
            let q = get(&n("self_attn.q_proj"), &[d, d])?;
            let k = get(&n("self_attn.k_proj"), &[kv, d])?;
            let q = hf_to_interleaved(&q, c.num_attention_heads)
                .ctx(|| format!("permuting layer {i} q_proj"))?;
            let k = hf_to_interleaved(&k, c.num_key_value_heads)
                .ctx(|| format!("permuting layer {i} k_proj"))?;
            blocks.push(Block {
                attn_norm: get(&n("input_layernorm"), &[d])?,
                q: Linear::Dense(q),
                k: Linear::Dense(k),
                v: Linear::Dense(get(&n("self_attn.v_proj"), &[kv, d])?),
                o: Linear::Dense(get(&n("self_attn.o_proj"), &[d, d])?),
                ffn_norm: get(&n("post_attention_layernorm"), &[d])?,
                gate: Linear::Dense(get(&n("mlp.gate_proj"), &[ff, d])?),
                up: Linear::Dense(get(&n("mlp.up_proj"), &[ff, d])?),
                down: Linear::Dense(get(&n("mlp.down_proj"), &[d, ff])?),
            });
        }
        let norm = get("model.norm.weight", &[d])?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(Linear::Dense(get("lm_head.weight", &[c.vocab_size, d])?))
        };
        Llama::assemble(c, embed, blocks, norm, lm_head, WeightFormat::F32, digest)
    }

    /// Loads a Hugging Face Llama checkpoint directory: `config.json` plus
    /// `model.safetensors` or the shards listed in `model.safetensors.index.json`.
    pub fn from_safetensors_dir(dir: &Path, device: &Device) -> ModelResult<Self> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source: std::io::Error| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    ModelError::ModelNotFound {
                        path,
                        source_of_path: "the checkpoint directory given",
                    }
                } else {
                    ModelError::Io { path, source }
                }
            }
        };
        let config_path = dir.join("config.json");
        let config_bytes = std::fs::read(&config_path).map_err(io(&config_path))?;
        let config = hf_config(&config_bytes, &config_path)?;
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let raw = std::fs::read(&index_path).map_err(io(&index_path))?;
            let index: serde_json::Value =
                serde_json::from_slice(&raw).map_err(|e| ModelError::InvalidSafetensors {
                    path: index_path.clone(),
                    message: e.to_string(),
                })?;
            let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) else {
                return Err(ModelError::InvalidSafetensors {
                    path: index_path,
                    message: "no weight_map object".into(),
                });
            };
            let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut hasher = Sha256::new();
        hasher.update(&config_bytes);
        let mut tensors = HashMap::new();
        for file in &files {
            let bytes = std::fs::read(file).map_err(io(file))?;
            hasher.update(&bytes);
            let loaded =
                candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
                    ModelError::InvalidSafetensors {
                        path: file.clone(),
                        message: e.to_string(),
                    }
                })?;
            tensors.extend(loaded);
        }
        let digest = format!("sha256-safetensors:{}", hasher.finalize_hex());
        Self::from_hf_tensors_with_digest(config, &tensors, device, dir, digest)
    }

    /// The weights as Hugging Face-named, Hugging Face-layout f32 tensors
    /// (q/k permuted back to the half-split RoPE layout). Dense models only.
    pub fn to_hf_tensors(&self) -> ModelResult<HashMap<String, Tensor>> {
        let c = &self.config;
        let dense = |l: &Linear, what: &str| -> ModelResult<Tensor> {
            l.dense().cloned().ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "{what}: quantized weights cannot be exported as safetensors; load the model as F32"
                ))
            })
        };
        let mut out = HashMap::new();
        out.insert("model.embed_tokens.weight".to_string(), self.embed.clone());
        out.insert("model.norm.weight".to_string(), self.norm.clone());
        if let Some(head) = &self.lm_head {
            if !c.tie_word_embeddings {
                out.insert("lm_head.weight".to_string(), dense(head, "lm_head")?);
            }
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let n = |s: &str| format!("model.layers.{i}.{s}.weight");
            let q = interleaved_to_hf(&dense(&b.q, "q_proj")?, c.num_attention_heads)
                .ctx(|| format!("permuting layer {i} q_proj"))?;
            let k = interleaved_to_hf(&dense(&b.k, "k_proj")?, c.num_key_value_heads)
                .ctx(|| format!("permuting layer {i} k_proj"))?;
            out.insert(n("self_attn.q_proj"), q);
            out.insert(n("self_attn.k_proj"), k);
            out.insert(n("self_attn.v_proj"), dense(&b.v, "v_proj")?);
            out.insert(n("self_attn.o_proj"), dense(&b.o, "o_proj")?);
            out.insert(n("mlp.gate_proj"), dense(&b.gate, "gate_proj")?);
            out.insert(n("mlp.up_proj"), dense(&b.up, "up_proj")?);
            out.insert(n("mlp.down_proj"), dense(&b.down, "down_proj")?);
            out.insert(n("input_layernorm"), b.attn_norm.clone());
            out.insert(n("post_attention_layernorm"), b.ffn_norm.clone());
        }
        Ok(out)
    }

    /// Writes a Hugging Face checkpoint directory (`config.json` +
    /// `model.safetensors`) that [`Llama::from_safetensors_dir`] and
    /// Hugging Face-compatible loaders read.
    pub fn save_safetensors_dir(&self, dir: &Path) -> ModelResult<()> {
        let io = |path: PathBuf| move |source| ModelError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        let tensors = self.to_hf_tensors()?;
        let file = dir.join("model.safetensors");
        candle_core::safetensors::save(&tensors, &file).map_err(|e| {
            ModelError::InvalidSafetensors {
                path: file.clone(),
                message: e.to_string(),
            }
        })?;
        let c = &self.config;
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_id,
            "hidden_act": "silu",
            "rope_scaling": null,
            "torch_dtype": "float32",
        });
        let config_path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&json)
            .map_err(|e| ModelError::InvalidConfig(format!("serialising config.json: {e}")))?;
        std::fs::write(&config_path, text).map_err(io(config_path.clone()))
    }

    /// Writes a GGUF file in llama.cpp's Llama layout with f32 tensors, plus
    /// `extra` metadata (e.g. a tokenizer's `tokenizer.ggml.*` keys). Dense
    /// models only; meant for tiny test models.
    pub fn save_gguf(&self, path: &Path, extra: &[(String, gguf_file::Value)]) -> ModelResult<()> {
        use gguf_file::Value as V;
        let c = &self.config;
        let mut md: Vec<(String, V)> = vec![
            ("general.architecture".into(), V::String("llama".into())),
            ("llama.vocab_size".into(), V::U32(c.vocab_size as u32)),
            (
                "llama.embedding_length".into(),
                V::U32(c.hidden_size as u32),
            ),
            (
                "llama.feed_forward_length".into(),
                V::U32(c.intermediate_size as u32),
            ),
            (
                "llama.block_count".into(),
                V::U32(c.num_hidden_layers as u32),
            ),
            (
                "llama.attention.head_count".into(),
                V::U32(c.num_attention_heads as u32),
            ),
            (
                "llama.attention.head_count_kv".into(),
                V::U32(c.num_key_value_heads as u32),
            ),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                V::F32(c.rms_norm_eps as f32),
            ),
            ("llama.rope.freq_base".into(), V::F32(c.rope_theta)),
            (
                "llama.rope.dimension_count".into(),
                V::U32(c.head_dim() as u32),
            ),
            (
                "llama.context_length".into(),
                V::U32(c.max_position_embeddings as u32),
            ),
        ];
        if let Some(b) = c.bos_token_id {
            md.push(("tokenizer.ggml.bos_token_id".into(), V::U32(b)));
        }
        if let Some(e) = c.eos_token_id {
            md.push(("tokenizer.ggml.eos_token_id".into(), V::U32(e)));
        }
        md.extend(extra.iter().cloned());
        let dense = |l: &Linear| -> ModelResult<Tensor> {
            l.dense()
                .cloned()
                .ok_or_else(|| ModelError::InvalidInput("save_gguf needs dense weights".into()))
        };
        let mut named: Vec<(String, Tensor)> = vec![
            ("token_embd.weight".into(), self.embed.clone()),
            ("output_norm.weight".into(), self.norm.clone()),
        ];
        if let Some(head) = &self.lm_head {
            if !c.tie_word_embeddings {
                named.push(("output.weight".into(), dense(head)?));
            }
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            named.push((n("attn_norm"), b.attn_norm.clone()));
            named.push((n("attn_q"), dense(&b.q)?));
            named.push((n("attn_k"), dense(&b.k)?));
            named.push((n("attn_v"), dense(&b.v)?));
            named.push((n("attn_output"), dense(&b.o)?));
            named.push((n("ffn_norm"), b.ffn_norm.clone()));
            named.push((n("ffn_gate"), dense(&b.gate)?));
            named.push((n("ffn_up"), dense(&b.up)?));
            named.push((n("ffn_down"), dense(&b.down)?));
        }
        let mut qtensors = Vec::with_capacity(named.len());
        for (name, t) in &named {
            let qt = QTensor::quantize(t, GgmlDType::F32).ctx(|| format!("encoding {name}"))?;
            qtensors.push((name.as_str(), qt));
        }
        let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(n, q)| (*n, q)).collect();
        let mut buf = Cursor::new(Vec::new());
        gguf_file::write(&mut buf, &md_refs, &t_refs).ctx(|| "writing GGUF".into())?;
        std::fs::write(path, buf.into_inner()).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// A model with random weights (uniform, scaled so activations stay O(1)),
    /// deterministic in `seed`. For tests and benchmarks.
    pub fn random(config: &LlamaConfig, seed: u64, device: &Device) -> ModelResult<Self> {
        config.validate()?;
        let c = config;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        let mut add = |name: String, shape: &[usize], scale: f32, offset: f32| -> ModelResult<()> {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0))
                .collect();
            let t = Tensor::from_vec(data, shape, &Device::Cpu).ctx(|| format!("random {name}"))?;
            tensors.insert(name, t);
            Ok(())
        };
        let (d, ff, kv) = (
            c.hidden_size,
            c.intermediate_size,
            c.num_key_value_heads * c.head_dim(),
        );
        let s = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
        add(
            "model.embed_tokens.weight".into(),
            &[c.vocab_size, d],
            1.0,
            0.0,
        )?;
        add("model.norm.weight".into(), &[d], 0.1, 1.0)?;
        if !c.tie_word_embeddings {
            add("lm_head.weight".into(), &[c.vocab_size, d], s(d), 0.0)?;
        }
        for i in 0..c.num_hidden_layers {
            let n = |x: &str| format!("model.layers.{i}.{x}.weight");
            add(n("input_layernorm"), &[d], 0.1, 1.0)?;
            add(n("post_attention_layernorm"), &[d], 0.1, 1.0)?;
            add(n("self_attn.q_proj"), &[d, d], s(d), 0.0)?;
            add(n("self_attn.k_proj"), &[kv, d], s(d), 0.0)?;
            add(n("self_attn.v_proj"), &[kv, d], s(d), 0.0)?;
            add(n("self_attn.o_proj"), &[d, d], s(d), 0.0)?;
            add(n("mlp.gate_proj"), &[ff, d], s(d), 0.0)?;
            add(n("mlp.up_proj"), &[ff, d], s(d), 0.0)?;
            add(n("mlp.down_proj"), &[d, ff], s(ff), 0.0)?;
        }
        Self::from_hf_tensors(c.clone(), &tensors, device)
    }
}

/// SHA-256 over tensors in name order: name, dtype, shape, then the raw bytes.
fn tensors_digest(tensors: &HashMap<String, Tensor>) -> ModelResult<String> {
    let sorted: BTreeMap<_, _> = tensors.iter().collect();
    let mut h = Sha256::new();
    for (name, t) in sorted {
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", t.dtype(), t.dims()).as_bytes());
        let t = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .ctx(|| format!("hashing {name}"))?;
        for x in t {
            h.update(&x.to_le_bytes());
        }
    }
    Ok(h.finalize_hex())
}

/// Parses a Hugging Face Llama `config.json`.
fn hf_config(bytes: &[u8], path: &Path) -> ModelResult<LlamaConfig> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ModelError::BadMetadata {
            path: path.to_path_buf(),
            key: "<document>".into(),
            problem: e.to_string(),
        })?;
    let bad = |key: &str, problem: &str| ModelError::BadMetadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        problem: problem.to_string(),
    };
    let model_type = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
    let is_llama_arch = v
        .get("architectures")
        .and_then(|a| a.as_array())
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("LlamaForCausalLM")));
    if model_type != "llama" && !is_llama_arch {
        return Err(ModelError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            found: format!("model_type = {model_type:?}"),
        });
    }
    if let Some(scaling) = v.get("rope_scaling") {
        if !scaling.is_null() {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: format!("rope_scaling = {scaling}"),
            });
        }
    }
    if let Some(act) = v.get("hidden_act").and_then(|a| a.as_str()) {
        if act != "silu" {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: format!("hidden_act = {act:?}"),
            });
        }
    }
    let usize_of = |key: &str| -> ModelResult<usize> {
        v.get(key)
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
            .ok_or_else(|| bad(key, "missing or not a non-negative integer"))
    };
    let heads = usize_of("num_attention_heads")?;
    let token = |key: &str| -> Option<u32> {
        match v.get(key) {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32),
            Some(serde_json::Value::Array(a)) => {
                a.first().and_then(|x| x.as_u64()).map(|x| x as u32)
            }
            _ => None,
        }
    };
    let config = LlamaConfig {
        vocab_size: usize_of("vocab_size")?,
        hidden_size: usize_of("hidden_size")?,
        intermediate_size: usize_of("intermediate_size")?,
        num_hidden_layers: usize_of("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: match v.get("num_key_value_heads") {
            Some(x) if !x.is_null() => usize_of("num_key_value_heads")?,
            _ => heads,
        },
        rms_norm_eps: v
            .get("rms_norm_eps")
            .and_then(|x| x.as_f64())
            .ok_or_else(|| bad("rms_norm_eps", "missing or not a number"))?,
        rope_theta: v
            .get("rope_theta")
            .and_then(|x| x.as_f64())
            .unwrap_or(10_000.0) as f32,
        max_position_embeddings: usize_of("max_position_embeddings")?,
        tie_word_embeddings: v
            .get("tie_word_embeddings")
            .and_then(|x| x.as_bool())
            .unwrap_or(false),
        bos_token_id: token("bos_token_id"),
        eos_token_id: token("eos_token_id"),
    };
    config.validate()?;
    Ok(config)
}
