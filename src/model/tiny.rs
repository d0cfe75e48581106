//! The tiny random backbone of the tests: a 4-layer model with d_model 48 and a
//! byte-level tokenizer with SmolLM2's control tokens and chat template. It answers
//! nothing sensible, but it runs every path of the engine (memorizing included) in
//! milliseconds, so tests of the engine and of the packages built on it need no real
//! model. The same seed gives the same weights, and the same GGUF bytes, everywhere.

use candle_core::quantized::gguf_file::Value as GgufValue;
use candle_core::Device;

use super::{Llama, LlamaConfig, ModelResult};

/// Control tokens of the tiny tokenizer (same first ids as SmolLM2's).
pub const TINY_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// The tiny tokenizer's vocabulary and merges: 3 control tokens, the 256 byte symbols,
/// then a few merges.
pub fn tiny_vocab() -> (Vec<String>, Vec<String>) {
    let mut tokens: Vec<String> = TINY_SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(super::byte_level_alphabet().iter().map(|c| c.to_string()));
    let merges = vec!["Ġ t", "h e", "Ġt he", "i n", "a n"];
    for m in &merges {
        tokens.push(m.replace(' ', ""));
    }
    (tokens, merges.into_iter().map(String::from).collect())
}

/// `tokenizer.ggml.*` metadata for the tiny vocabulary, with SmolLM2's chat template
/// (a shorter default system prompt).
pub fn tiny_tokenizer_metadata() -> Vec<(String, GgufValue)> {
    let (tokens, merges) = tiny_vocab();
    let types: Vec<GgufValue> = (0..tokens.len())
        .map(|i| GgufValue::I32(if i < TINY_SPECIALS.len() { 3 } else { 1 }))
        .collect();
    vec![
        ("tokenizer.ggml.model".into(), GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), GgufValue::String("smollm".into())),
        (
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(tokens.into_iter().map(GgufValue::String).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            GgufValue::Array(merges.into_iter().map(GgufValue::String).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), GgufValue::Array(types)),
        (
            "tokenizer.chat_template".into(),
            GgufValue::String(
                "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny model<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}".into(),
            ),
        ),
    ]
}

/// The tiny configuration sized to the tiny vocabulary.
pub fn tiny_config() -> LlamaConfig {
    LlamaConfig::tiny(tiny_vocab().0.len())
}

/// The tiny random model: the same seed gives the same weights in every process.
pub fn tiny_model(seed: u64) -> ModelResult<Llama> {
    Llama::random(&tiny_config(), seed, &Device::Cpu)
}

/// Writes the tiny model and tokenizer as a GGUF file any engine can load by path
/// (the Python package's tests use it: no real model needed).
pub fn write_tiny_model(path: &std::path::Path, seed: u64) -> ModelResult<()> {
    tiny_model(seed)?.save_gguf(path, &tiny_tokenizer_metadata())
}
