//! The tokenizer, built from GGUF metadata, and the ChatML chat template.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use super::error::{ModelError, ModelResult};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text (never interpreted as control tokens).
    pub content: String,
}

impl ChatMessage {
    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system".into(),
            content: content.into(),
        }
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

/// Byte-level BPE tokenizer plus the model's ChatML chat template.
#[derive(Clone)]
pub struct Tokenizer {
    /// Control tokens in the text are matched (used for templates we build).
    special: tokenizers::Tokenizer,
    /// Control tokens in the text are plain text: user content cannot forge
    /// `<|im_end|>` and break out of its message.
    plain: tokenizers::Tokenizer,
    im_start: Option<u32>,
    im_end: Option<u32>,
    eos: Option<u32>,
    default_system: Option<String>,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("im_start", &self.im_start)
            .field("im_end", &self.im_end)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

/// The GPT-2 byte-to-unicode map used by byte-level BPE vocabularies.
pub fn byte_level_alphabet() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in printable.into_iter().zip(chars) {
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    ///
    /// Only `gpt2` (byte-level BPE) vocabularies are supported. The
    /// pre-tokenizer splits digits individually and then applies byte-level
    /// splitting without a prefix space — llama.cpp's `smollm` pre-tokenizer,
    /// which reproduces the reference model's ids. Control tokens
    /// (`token_type` 3) become special tokens so `<|im_start|>` stays one id.
    pub fn from_gguf_metadata(md: &HashMap<String, Value>, path: &Path) -> ModelResult<Self> {
        let bad = |key: &str, problem: String| ModelError::BadMetadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            problem,
        };
        let get = |key: &str| md.get(key).ok_or_else(|| bad(key, "missing".into()));
        let model = get("tokenizer.ggml.model")?
            .to_string()
            .map_err(|e| bad("tokenizer.ggml.model", e.to_string()))?;
        if model != "gpt2" {
            return Err(bad(
                "tokenizer.ggml.model",
                format!("{model:?} is not supported (only byte-level BPE, \"gpt2\")"),
            ));
        }
        let strings = |key: &str| -> ModelResult<Vec<String>> {
            get(key)?
                .to_vec()
                .map_err(|e| bad(key, e.to_string()))?
                .iter()
                .map(|v| v.to_string().cloned().map_err(|e| bad(key, e.to_string())))
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| bad("tokenizer.ggml.token_type", e.to_string()))?
                .iter()
                .map(|t| {
                    t.to_i32()
                        .map(i64::from)
                        .or_else(|_| t.to_u32().map(i64::from))
                        .map_err(|e| bad("tokenizer.ggml.token_type", e.to_string()))
                })
                .collect::<ModelResult<_>>()?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(bad(
                "tokenizer.ggml.token_type",
                format!("{} entries for {} tokens", types.len(), tokens.len()),
            ));
        }
        let id = |key: &str| -> ModelResult<Option<u32>> {
            match md.get(key) {
                None => Ok(None),
                Some(v) => v.to_u32().map(Some).map_err(|e| bad(key, e.to_string())),
            }
        };
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let template = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();

        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        for (i, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
            vocab.insert(tok.clone(), serde_json::Value::from(i as u64));
            // 3 = control, 4 = user-defined: both must never be split by BPE.
            if *ty == 3 || *ty == 4 {
                added.push(serde_json::json!({
                    "id": i, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true,
                }));
            }
        }
        let mut merge_pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let Some((a, b)) = m.split_once(' ') else {
                return Err(bad(
                    "tokenizer.ggml.merges",
                    format!("entry {i} {m:?} is not \"a b\""),
                ));
            };
            merge_pairs.push(serde_json::json!([a, b]));
        }
        // The same JSON a Hugging Face tokenizer.json would hold for this model.
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Digits", "individual_digits": true},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
                ],
            },
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merge_pairs,
            },
        });
        let text = serde_json::to_string(&json)
            .map_err(|e| ModelError::Tokenizer(format!("serialising the tokenizer: {e}")))?;
        let special: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e| ModelError::Tokenizer(format!("building from {}: {e}", path.display())))?;
        Ok(Self::from_parts(special, eos, template.as_deref()))
    }

    /// Loads a Hugging Face `tokenizer.json` (for safetensors checkpoints).
    pub fn from_file(path: &Path) -> ModelResult<Self> {
        if !path.exists() {
            return Err(ModelError::ModelNotFound {
                path: path.to_path_buf(),
                source_of_path: "the checkpoint directory given",
            });
        }
        let special = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let eos = special
            .token_to_id("<|im_end|>")
            .or_else(|| special.token_to_id("</s>"));
        Ok(Self::from_parts(special, eos, None))
    }

    fn from_parts(
        special: tokenizers::Tokenizer,
        eos: Option<u32>,
        template: Option<&str>,
    ) -> Self {
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);
        let im_start = special.token_to_id("<|im_start|>");
        let im_end = special.token_to_id("<|im_end|>");
        let vocab_size = special.get_vocab_size(true);
        Self {
            special,
            plain,
            im_start,
            im_end,
            eos,
            default_system: template.and_then(default_system_prompt),
            vocab_size,
        }
    }

    /// Uses the model's EOS id when the tokenizer file does not name one.
    pub(crate) fn with_default_eos(mut self, eos: Option<u32>) -> Self {
        if self.eos.is_none() {
            self.eos = eos;
        }
        self
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of a token string (e.g. `<|im_end|>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.special.token_to_id(token)
    }

    /// Tokens that end an assistant turn: EOS and `<|im_end|>`.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut v: Vec<u32> = [self.eos, self.im_end].into_iter().flatten().collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The system prompt the chat template inserts when none is given.
    pub fn default_system_prompt(&self) -> Option<&str> {
        self.default_system.as_deref()
    }

    /// Encodes plain text. Control-token strings in it are ordinary text.
    pub fn encode(&self, text: &str) -> ModelResult<Vec<u32>> {
        self.plain
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer(format!("encoding: {e}")))
    }

    /// Encodes text in which control-token strings (`<|im_start|>`…) are
    /// control tokens. For trusted text only (templates).
    pub fn encode_with_special_tokens(&self, text: &str) -> ModelResult<Vec<u32>> {
        self.special
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer(format!("encoding: {e}")))
    }

    /// Decodes ids to text. With `skip_special_tokens`, control tokens are dropped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> ModelResult<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(ModelError::TokenOutOfVocab {
                token: bad,
                position: ids.iter().position(|&i| i == bad).unwrap_or(0),
                vocab_size: self.vocab_size,
            });
        }
        self.special
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer(format!("decoding: {e}")))
    }

    /// The ChatML text of a conversation (what the GGUF's template renders):
    /// the default system prompt first when the conversation has none, each
    /// message as `<|im_start|>{role}\n{content}<|im_end|>\n`, then
    /// `<|im_start|>assistant\n` when `add_generation_prompt`.
    pub fn chat_text(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        let mut s = String::new();
        for (role, content) in self.chat_turns(messages) {
            s.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
        }
        if add_generation_prompt {
            s.push_str("<|im_start|>assistant\n");
        }
        s
    }

    /// Token ids of [`Tokenizer::chat_text`], with message contents encoded as
    /// plain text (they cannot inject control tokens).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> ModelResult<Vec<u32>> {
        let (Some(start), Some(end)) = (self.im_start, self.im_end) else {
            return Err(ModelError::Tokenizer(
                "the vocabulary has no <|im_start|>/<|im_end|>: no ChatML template".into(),
            ));
        };
        let mut ids = Vec::new();
        // Control tokens split the text before BPE runs, so encoding the
        // pieces separately gives the same ids as encoding the rendered text.
        for (role, content) in self.chat_turns(messages) {
            ids.push(start);
            ids.extend(self.encode(&format!("{role}\n{content}"))?);
            ids.push(end);
            ids.extend(self.encode("\n")?);
        }
        if add_generation_prompt {
            ids.push(start);
            ids.extend(self.encode("assistant\n")?);
        }
        Ok(ids)
    }

    /// A single user turn ready for generation.
    pub fn encode_user_prompt(&self, user: &str) -> ModelResult<Vec<u32>> {
        self.encode_chat(&[ChatMessage::user(user)], true)
    }

    fn chat_turns<'a>(&'a self, messages: &'a [ChatMessage]) -> Vec<(&'a str, &'a str)> {
        let mut turns = Vec::with_capacity(messages.len() + 1);
        let has_system = messages.first().is_some_and(|m| m.role == "system");
        if let (false, Some(sys)) = (has_system, self.default_system.as_deref()) {
            turns.push(("system", sys));
        }
        turns.extend(
            messages
                .iter()
                .map(|m| (m.role.as_str(), m.content.as_str())),
        );
        turns
    }

    /// The underlying `tokenizers` tokenizer (control tokens matched).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.special
    }
}

/// The default system prompt of a ChatML Jinja template like SmolLM2's:
/// the text of its literal `<|im_start|>system\n…<|im_end|>` block.
fn default_system_prompt(template: &str) -> Option<String> {
    const OPEN: &str = "<|im_start|>system\\n";
    const OPEN_RAW: &str = "<|im_start|>system\n";
    let (start, open_len) = match template.find(OPEN) {
        Some(i) => (i, OPEN.len()),
        None => (template.find(OPEN_RAW)?, OPEN_RAW.len()),
    };
    let rest = &template[start + open_len..];
    let end = rest.find("<|im_end|>")?;
    let text = &rest[..end];
    // A template that builds the system text from variables has no literal default.
    if text.contains("{{") || text.contains('+') || text.contains('\'') {
        return None;
    }
    Some(text.replace("\\n", "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection() {
        let a = byte_level_alphabet();
        let mut sorted = a.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
        assert_eq!(a[b'A' as usize], 'A');
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn default_system_from_smollm_template() {
        let t = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}";
        assert_eq!(
            default_system_prompt(t).as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert_eq!(default_system_prompt("{{ messages }}"), None);
    }
}
