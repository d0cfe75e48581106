//! The one query type: a question's user message as token ids, what each token is,
//! and each token's state at the query layer. The engine builds one for every request,
//! memory tuning one for every fact it writes, `mome search` one for its text; a
//! stored fact's query is rebuilt from its prompt the same way, so the two sides of a
//! match are always made by the same code.

use super::lexicon::{Analysis, Lexicon, TokenKind, BACKGROUND};
use crate::error::{Error, Result};
use crate::model::{Backbone, ChatMessage};

/// Weight of a function token in the pooled (stage-1) key; content and name tokens
/// weigh 1. Small but not zero, so that a question of function words only still has
/// a direction.
pub const FUNCTION_WEIGHT: f32 = 0.05;

/// A question, analysed.
#[derive(Debug, Clone)]
pub struct Query {
    ids: Vec<u32>,
    analysis: Analysis,
    /// `len × dim`, unit rows (centred states of the query layer).
    states: Vec<f32>,
    dim: usize,
}

impl Query {
    /// A query from its user-message tokens (`ids` and their decoded `pieces`) and
    /// their raw states (`ids.len() × dim`, row-major), which are centred by the
    /// caller and normalised here.
    pub fn new(
        ids: Vec<u32>,
        pieces: &[String],
        mut states: Vec<f32>,
        dim: usize,
        lexicon: &Lexicon,
    ) -> Result<Self> {
        if pieces.len() != ids.len() || states.len() != ids.len() * dim {
            return Err(Error::DimMismatch {
                what: "query states vs tokens".into(),
                expected: ids.len() * dim,
                found: states.len(),
            });
        }
        if let Some(i) = states.iter().position(|x| !x.is_finite()) {
            return Err(Error::InvalidArgument {
                name: "states",
                reason: format!("state of token {} is not finite", i / dim.max(1)),
            });
        }
        for row in states.chunks_exact_mut(dim.max(1)) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            if n > 0.0 {
                row.iter_mut().for_each(|x| *x /= n);
            }
        }
        Ok(Self {
            ids,
            analysis: lexicon.analyse(pieces),
            states,
            dim,
        })
    }

    /// Tokens of the user message.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether it has no token.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Token ids.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Width of the states.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// What each token is, its words and names.
    pub fn analysis(&self) -> &Analysis {
        &self.analysis
    }

    /// The unit state of token `i`.
    pub fn state(&self, i: usize) -> &[f32] {
        self.states
            .get(i * self.dim..(i + 1) * self.dim)
            .unwrap_or(&[])
    }

    /// Whether the question has something to be recognised by: a content word or a
    /// name. A fact whose prompt has neither would match every question.
    pub fn is_distinctive(&self) -> bool {
        self.analysis
            .kinds
            .iter()
            .any(|k| *k != TokenKind::Function)
    }

    /// The stage-1 key: the mean of the unit states weighted by kind (content and
    /// names 1, function tokens [`FUNCTION_WEIGHT`]), unit norm. A rewording keeps
    /// its content words and names, so its key stays near the stored prompt's even
    /// when the sentence is rebuilt (measured: the stored prompt within the first 32
    /// of 1,308 real and synthetic facts for every rewording; docs/BENCHMARKS.md).
    pub fn pooled_key(&self) -> Vec<f32> {
        let mut m = vec![0f32; self.dim];
        for (i, kind) in self.analysis.kinds.iter().enumerate() {
            let w = if *kind == TokenKind::Function {
                FUNCTION_WEIGHT
            } else {
                1.0
            };
            for (a, x) in m.iter_mut().zip(self.state(i)) {
                *a += w * x;
            }
        }
        let n = m.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            m.iter_mut().for_each(|x| *x /= n);
        }
        m
    }
}

/// A question as the engine feeds it to the model.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The chat-formatted prompt (default system prompt, generation prompt).
    pub tokens: Vec<u32>,
    /// Position of the user message's first token in `tokens`.
    pub offset: usize,
    /// The user message, analysed.
    pub query: Query,
}

impl Encoded {
    /// Position just past the user message.
    pub fn user_end(&self) -> usize {
        self.offset + self.query.len()
    }
}

/// Builds [`Query`]s with the backbone: the one place that decides what a query is.
#[derive(Debug, Clone)]
pub struct QueryEncoder {
    lexicon: Lexicon,
    layer: usize,
    /// Mean state of the default system prefix at the query layer: every request
    /// shares it, so it is removed from every token state.
    centre: Vec<f32>,
    /// Tokens before the user message in a one-turn chat prompt.
    user_prefix: Vec<u32>,
    /// Tokens after it.
    user_suffix_len: usize,
}

impl QueryEncoder {
    /// An encoder for queries at `layer` of `backbone`.
    pub fn new(backbone: &Backbone, layer: usize) -> Result<Self> {
        let tok = &backbone.tokenizer;
        let mut lines = Vec::new();
        for line in BACKGROUND.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let ids = tok.encode(line)?;
            lines.push(pieces(backbone, &ids)?);
        }
        let lexicon = Lexicon::from_lines(lines);
        let sys = tok.encode_chat(&[], false)?;
        let d = backbone.model.d_model();
        let centre = if sys.is_empty() {
            vec![0.0; d]
        } else {
            let q = backbone.model.queries(&sys, layer)?;
            q.per_token
                .mean(0)
                .and_then(|m| m.to_vec1::<f32>())
                .map_err(|e| Error::Kernel(e.into()))?
        };
        let mut user_prefix = sys;
        if let Some(start) = tok.token_id("<|im_start|>") {
            user_prefix.push(start);
        }
        user_prefix.extend(tok.encode("user\n")?);
        let user_suffix_len = tok.encode("\n")?.len() + 2 + tok.encode("assistant\n")?.len();
        Ok(Self {
            lexicon,
            layer,
            centre,
            user_prefix,
            user_suffix_len,
        })
    }

    /// The lexicon of function words.
    pub fn lexicon(&self) -> &Lexicon {
        &self.lexicon
    }

    /// The query layer.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// Token ids of a prompt as `ask` feeds it to the model.
    pub fn chat_tokens(&self, backbone: &Backbone, prompt: &str) -> Result<Vec<u32>> {
        Ok(backbone
            .tokenizer
            .encode_chat(&[ChatMessage::user(prompt)], true)?)
    }

    /// Encodes a question: chat tokens, the user message's position, its query.
    pub fn encode(&self, backbone: &Backbone, prompt: &str) -> Result<Encoded> {
        let tokens = self.chat_tokens(backbone, prompt)?;
        self.encode_tokens(backbone, tokens)
    }

    /// [`QueryEncoder::encode`] from chat tokens already made.
    pub fn encode_tokens(&self, backbone: &Backbone, tokens: Vec<u32>) -> Result<Encoded> {
        let p = self.user_prefix.len();
        let (offset, end) = if tokens.len() > p + self.user_suffix_len
            && tokens.get(..p) == Some(&self.user_prefix[..])
        {
            (p, tokens.len() - self.user_suffix_len)
        } else {
            (0, tokens.len())
        };
        let q = backbone.model.queries(&tokens, self.layer)?;
        let rows = q
            .per_token
            .to_vec2::<f32>()
            .map_err(|e| Error::Kernel(e.into()))?;
        let d = self.centre.len();
        let mut states = Vec::with_capacity((end - offset) * d);
        for r in &rows[offset..end] {
            states.extend(r.iter().zip(&self.centre).map(|(x, c)| x - c));
        }
        let ids = tokens[offset..end].to_vec();
        let pieces = pieces(backbone, &ids)?;
        let query = Query::new(ids, &pieces, states, d, &self.lexicon)?;
        Ok(Encoded {
            tokens,
            offset,
            query,
        })
    }
}

/// The decoded text of each token.
fn pieces(backbone: &Backbone, ids: &[u32]) -> Result<Vec<String>> {
    ids.iter()
        .map(|&id| Ok(backbone.tokenizer.decode(&[id], false)?))
        .collect()
}
