//! The tokenizer, built from GGUF metadata, and the chat template: the GGUF's own Jinja
//! `tokenizer.chat_template` rendered with `minijinja`, ChatML when it is absent or
//! fails to render.

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

/// Byte-level BPE tokenizer plus the model's chat template.
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
    /// The model's Jinja chat template (`tokenizer.chat_template`), when it has one.
    template: Option<String>,
    /// Control-token strings and ids, longest first: the splits of a rendered template.
    controls: Vec<(String, u32)>,
    bos: Option<u32>,
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
        let bos = id("tokenizer.ggml.bos_token_id")?;
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
        Ok(Self::from_parts(special, bos, eos, template))
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
        Ok(Self::from_parts(special, None, eos, None))
    }

    fn from_parts(
        special: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        template: Option<String>,
    ) -> Self {
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);
        let im_start = special.token_to_id("<|im_start|>");
        let im_end = special.token_to_id("<|im_end|>");
        let vocab_size = special.get_vocab_size(true);
        let mut controls: Vec<(String, u32)> = special
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && !t.content.is_empty())
            .map(|(id, t)| (t.content, id))
            .collect();
        controls.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Self {
            special,
            plain,
            im_start,
            im_end,
            eos,
            default_system: template.as_deref().and_then(default_system_prompt),
            template,
            controls,
            bos,
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

    /// The model's Jinja chat template, when the GGUF carries one.
    pub fn chat_template(&self) -> Option<&str> {
        self.template.as_deref()
    }

    /// The text of a conversation: the GGUF's chat template rendered with `minijinja`
    /// (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`), or
    /// [`Tokenizer::chatml_text`] when there is no template, it fails to render, or the
    /// conversation is empty. An empty conversation stands for the default system prefix
    /// (what the engine centres its queries on), which templates do not render.
    pub fn chat_text(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        self.render(messages, add_generation_prompt, |c| c.to_string())
            .unwrap_or_else(|| self.chatml_text(messages, add_generation_prompt))
    }

    /// The ChatML text of a conversation (SmolLM2's template renders exactly this):
    /// the default system prompt first when the conversation has none, each message as
    /// `<|im_start|>{role}\n{content}<|im_end|>\n`, then `<|im_start|>assistant\n`
    /// when `add_generation_prompt`.
    pub fn chatml_text(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        let mut s = String::new();
        for (role, content) in self.chat_turns(messages) {
            s.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
        }
        if add_generation_prompt {
            s.push_str("<|im_start|>assistant\n");
        }
        s
    }

    /// Token ids of [`Tokenizer::chat_text`]. Only the template's own control tokens are
    /// control tokens: message contents are encoded as plain text (they cannot inject
    /// `<|im_end|>`), and the text between two control tokens is encoded as one piece,
    /// exactly as [`Tokenizer::encode_chatml`] does.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> ModelResult<Vec<u32>> {
        match self.render(messages, add_generation_prompt, |c| self.escape(c)) {
            Some(text) => self.encode_rendered(&text),
            None => self.encode_chatml(messages, add_generation_prompt),
        }
    }

    /// Token ids of [`Tokenizer::chatml_text`], with message contents encoded as plain
    /// text (the fallback of [`Tokenizer::encode_chat`]).
    pub fn encode_chatml(
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

    /// The chat template rendered over `messages` (each content passed through
    /// `content`); `None` when there is no template, no message, or rendering fails.
    fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        content: impl Fn(&str) -> String,
    ) -> Option<String> {
        let template = self.template.as_deref()?;
        if messages.is_empty() {
            return None;
        }
        let token = |id: Option<u32>| id.and_then(|i| self.special.id_to_token(i));
        let msgs: Vec<HashMap<&str, String>> = messages
            .iter()
            .map(|m| HashMap::from([("role", m.role.clone()), ("content", content(&m.content))]))
            .collect();
        match render_template(
            template,
            &msgs,
            add_generation_prompt,
            token(self.bos),
            token(self.eos),
        ) {
            Ok(text) => Some(text),
            Err(e) => {
                tracing::debug!(error = %e, "chat template failed to render; using ChatML");
                None
            }
        }
    }

    /// `content` with every control-token string broken by an escape, so that only the
    /// template's own control tokens remain in a rendered text ([`unescape`] undoes it).
    fn escape(&self, content: &str) -> String {
        let mut out = String::with_capacity(content.len());
        let mut rest = content;
        while let Some(c) = rest.chars().next() {
            if c == ESC {
                out.push(ESC);
                out.push(ESC_SELF);
            } else if self
                .controls
                .iter()
                .any(|(t, _)| rest.starts_with(t.as_str()))
            {
                out.push(c);
                out.push(ESC);
                out.push(ESC_BREAK);
            } else {
                out.push(c);
            }
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    /// Ids of a rendered template whose contents were escaped: split at control tokens
    /// (longest first), the text between them unescaped and encoded as plain text.
    fn encode_rendered(&self, text: &str) -> ModelResult<Vec<u32>> {
        let mut ids = Vec::new();
        let mut plain_start = 0;
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            if let Some((tok, id)) = self
                .controls
                .iter()
                .find(|(t, _)| rest.starts_with(t.as_str()))
            {
                if plain_start < i {
                    ids.extend(self.encode(&unescape(&text[plain_start..i]))?);
                }
                ids.push(*id);
                i += tok.len();
                plain_start = i;
            } else {
                i += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if plain_start < text.len() {
            ids.extend(self.encode(&unescape(&text[plain_start..]))?);
        }
        Ok(ids)
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

/// Escape character of message contents inside a rendered template (a private-use
/// code point), followed by [`ESC_SELF`] (an escaped `ESC`) or [`ESC_BREAK`] (nothing:
/// it only breaks a control-token string).
const ESC: char = '\u{E000}';
const ESC_SELF: char = '0';
const ESC_BREAK: char = '1';

/// Undoes [`Tokenizer::escape`].
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != ESC {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(ESC_SELF) => out.push(ESC),
            Some(ESC_BREAK) => {}
            // Not produced by `escape`: keep the text as it was.
            Some(other) => {
                out.push(ESC);
                out.push(other);
            }
            None => out.push(ESC),
        }
    }
    out
}

/// Renders a Hugging Face-style Jinja chat template with `minijinja`.
fn render_template(
    template: &str,
    messages: &[HashMap<&str, String>],
    add_generation_prompt: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
) -> Result<String, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    // The template comes from the model file: its work and its output are bounded, so
    // that a hostile one (nested loops, huge repeats) fails (ChatML is used instead)
    // rather than hanging or exhausting memory.
    env.set_fuel(Some(TEMPLATE_FUEL));
    let tmpl = env.template_from_str(template)?;
    let mut out = Bounded(Vec::new());
    tmpl.render_captured_to(
        minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token.unwrap_or_default(),
            eos_token => eos_token.unwrap_or_default(),
        },
        &mut out,
    )?;
    String::from_utf8(out.0)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::BadSerialization, e.to_string()))
}

/// Instructions a chat template may run per rendering (SmolLM2's takes a few dozen per
/// message).
const TEMPLATE_FUEL: u64 = 1_000_000;
/// Longest rendered chat text, in bytes (far past any context the model takes).
const TEMPLATE_MAX_BYTES: usize = 64 << 20;

/// A buffer that refuses to grow past [`TEMPLATE_MAX_BYTES`].
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > TEMPLATE_MAX_BYTES {
            return Err(std::io::Error::other(format!(
                "the chat template renders more than {TEMPLATE_MAX_BYTES} bytes"
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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

    const SMOLLM_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm_template_renders_chatml() {
        let msgs = |v: &[(&str, &str)]| -> Vec<HashMap<&'static str, String>> {
            v.iter()
                .map(|(r, c)| HashMap::from([("role", r.to_string()), ("content", c.to_string())]))
                .collect()
        };
        let text = render_template(SMOLLM_TEMPLATE, &msgs(&[("user", "Hi")]), true, None, None)
            .expect("render");
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let text = render_template(
            SMOLLM_TEMPLATE,
            &msgs(&[("system", "S"), ("user", "U")]),
            false,
            None,
            None,
        )
        .expect("render");
        assert_eq!(
            text,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        );
        assert!(render_template("{{ raise_exception('no') }}", &[], false, None, None).is_err());
        assert!(render_template("{% for %}", &[], false, None, None).is_err());
    }

    #[test]
    fn unescape_undoes_only_escapes() {
        let e = format!("a{ESC}{ESC_SELF}b<{ESC}{ESC_BREAK}|im_end|>");
        assert_eq!(unescape(&e), format!("a{ESC}b<|im_end|>"));
        assert_eq!(unescape("plain"), "plain");
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
