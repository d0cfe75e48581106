//! Memory tuning: writing facts as experts.
//!
//! [`Memorizer`] owns the pipeline (the engine hands it its parts): each fact's prompt
//! is encoded by the engine's one query path, its stored neighbours are retrieved and
//! the selection rule decides what inference will apply on that prompt; a batch of new
//! experts trains against the frozen backbone ([`train`]) with exactly those plans,
//! is verified through the inference operator, and only exact ones are committed —
//! replacing, in the same commit, the experts of the same prompt with another answer.

mod memorize;
mod train;

pub use memorize::{validate_facts, Memorizer};
pub use train::{
    train_batch, train_batch_with, train_shared, FrozenPrefix, TrainRow, TrainedRow, TuneOptions,
};

use serde::{Deserialize, Serialize};

/// A fact to memorize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    /// The question, as a user would ask it.
    pub prompt: String,
    /// The exact answer.
    pub answer: String,
}

impl Fact {
    /// A fact.
    pub fn new(prompt: impl Into<String>, answer: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            answer: answer.into(),
        }
    }
}

/// What became of one fact.
#[derive(Debug, Clone, PartialEq)]
pub enum FactStatus {
    /// Trained, verified through the inference path, committed.
    Memorized {
        /// The new expert's id.
        id: u64,
        /// Experts of the same prompt with another answer, deleted in the same commit.
        replaced: Vec<u64>,
    },
    /// The same prompt is already stored with the same answer: nothing was written.
    AlreadyStored {
        /// The stored expert.
        id: u64,
    },
    /// Did not meet the stopping rule within the step budget.
    NotConverged,
    /// Converged in training but greedy decoding through the inference path
    /// gave something else.
    VerifyFailed {
        /// What inference answered.
        got: String,
    },
    /// The selection rule would not choose the new expert for its own prompt (another
    /// expert accounts for the question first), so it could never be used.
    Shadowed,
}

impl FactStatus {
    /// Whether the fact is now answered by the store (memorized, or already there).
    pub fn is_stored(&self) -> bool {
        matches!(self, Self::Memorized { .. } | Self::AlreadyStored { .. })
    }
}

/// One fact's outcome.
#[derive(Debug, Clone)]
pub struct FactOutcome {
    /// The fact.
    pub fact: Fact,
    /// What happened.
    pub status: FactStatus,
    /// Final mean answer loss (nats/token); NaN when not trained.
    pub loss: f32,
    /// Optimizer steps taken.
    pub steps: u32,
}

/// Progress of memorizing.
#[derive(Debug, Clone, Copy)]
pub enum MemorizeEvent {
    /// A training step of a batch finished; `converged` rows of `rows` so far.
    Step {
        /// Step number in the batch.
        step: usize,
        /// Rows converged.
        converged: usize,
        /// Rows in the batch.
        rows: usize,
    },
    /// `n` more facts are finished (memorized or failed).
    Done(usize),
}

/// Summary of a memorize call.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemorizeReport {
    /// One entry per fact, in input order (after a stop, per fact of the batches that
    /// ran: a prefix of the input).
    pub outcomes: Vec<FactOutcome>,
    /// Facts committed (new experts).
    pub memorized: usize,
    /// Facts already stored with the same answer.
    pub unchanged: usize,
    /// Facts not committed.
    pub failed: usize,
    /// Previously stored experts whose fact no longer answers exactly after this
    /// call, each id once.
    pub broken: Vec<u64>,
    /// Wall time.
    pub seconds: f64,
    /// The call was stopped between batches (`Memorizer::memorize_until`).
    pub stopped: bool,
}
