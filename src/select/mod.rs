//! Selection: which stored facts a question asks for, and where in the sequence each
//! of their experts acts.
//!
//! 1. **The query** ([`Query`], built by [`QueryEncoder`] — the one query path of the
//!    engine, memory tuning and `mome search`): the user message's tokens, what each
//!    is (function word, content word, part of a name: [`lexicon`]), and each token's
//!    state at the query layer (layer 2 of SmolLM2), centred on the system prompt and
//!    unit-normalised.
//! 2. **Stage 1, retrieval**: the query's pooled key ([`Query::pooled_key`], content
//!    weighted) searches the index for K candidates. An expert's index key is the
//!    pooled key of its fact's prompt.
//! 3. **Stage 2, the rule** ([`rule`]): a candidate is selected when its stored
//!    prompt's names occur in the question word for word and each of its content words
//!    occurs up to inflection (late interaction: every stored token against every
//!    question token, by lexical identity or the cosine of their states), and the
//!    selected facts together account for the question's names and most of its
//!    content. The stored side is the fact's prompt, encoded by the same
//!    [`QueryEncoder`]. A question about an entity that is not stored fails rule 1 or
//!    3; the same question with another attribute fails rule 2; a question that
//!    merely contains a stored one fails rule 4.
//! 4. **Per position** ([`plan`]): a selected fact is active from the first position
//!    at which the question has shown all of its names and content words, and after
//!    the user message in its answer branch. The plan's scores go to the fused
//!    operator ([`crate::kernels`]) at every adapted layer through [`SelectionHook`].
//!
//! Why this rule (docs/BENCHMARKS.md §Selection): pooled similarity of whole prompts —
//! the rule before — scores a one-word near-miss (another entity, same question) as
//! high as a real rewording; measured on real and synthetic facts, no threshold of it
//! separates them. Per-token matching with names as exact runs separates all of them
//! on held-out families, and rewordings that keep the question's words (reordered,
//! inflected, light additions) still match; rewordings that replace a content word by
//! a synonym ("seat of government" for "capital") do not, by design: at the token
//! level a synonym is indistinguishable from a different attribute.

mod candidates;
mod hook;
pub mod lexicon;
pub mod plan;
mod query;
pub mod rule;
mod selector;

pub use candidates::CandidateSet;
pub use hook::{generate_answers, generate_answers_streaming, SelectionHook};
pub use lexicon::{Analysis, Lexicon, TokenKind};
pub use plan::RowPlan;
pub use query::{Encoded, Query, QueryEncoder};
pub use rule::{match_fact, select_facts, Chosen, Match, RuleParams};
pub use selector::{
    OwnedFact, Selection, Selector, Source, StoredFact, RETRY_CANDIDATES, RETRY_MIN_SCORE,
};

pub use crate::kernels::{SelectError, Selected, SelectionParams, TokenAssignments};
