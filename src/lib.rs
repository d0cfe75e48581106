//! # mome — memory experts for a frozen transformer
//!
//! mome is an embedded engine that lets a model runtime attach millions of *memory
//! experts* to a frozen transformer. An expert is a key vector plus small fp16 low-rank
//! adapter weights for a few layers of the backbone. The engine stores experts durably
//! (RocksDB metadata, memory-mapped shard files), finds candidates with a vector index,
//! picks and weights them per token by cross-attention, and applies them inside the
//! backbone's forward pass.
//!
//! ## Where to start
//!
//! * [`Engine`] — the façade: [`Engine::memorize`] facts, [`Engine::ask`] prompts.
//! * [`Store`] — the durable home of experts: [`Store::insert_batch`] (durable group
//!   commit), [`Store::get`] (zero-copy [`ExpertRef`]), [`Store::snapshot`],
//!   [`Store::verify`], [`Store::compact`]; configured by a [`StoreConfig`].
//! * [`ExpertIndex`] — the vector index kept in step with a store ([`KeyIndex`]:
//!   [`HnswIndex`], [`FlatIndex`]).
//! * [`fused_apply`] — the fused selection + adapter operator; [`select`] — stage-2
//!   selection on plain slices; [`Candidates`] — stage-1 retrieval.
//! * [`Backbone`] / [`Llama`] / [`Tokenizer`] — the Llama-architecture backbone.
//! * [`export_archive`] / [`import_archive`] — portable, checksummed archives.
//! * Errors: each layer has its own type ([`StoreError`], [`IndexError`],
//!   [`ArchiveError`], [`KernelError`], [`SelectError`], [`ModelError`]); [`Error`]
//!   wraps them all and [`Result`] uses it.
//! * Long operations report to a [`Progress`] handed in by the caller
//!   ([`Store::set_progress`]); the library draws nothing.
//!
//! ## Example
//!
//! ```
//! use half::f16;
//! use mome::{AdapterPair, NewExpert, Provenance, Store, StoreConfig};
//!
//! # fn main() -> Result<(), mome::StoreError> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! // d_model 64, key_dim 64, rank 4, adapters on layers 2 and 5.
//! let config = StoreConfig::new(64, 64, 4, vec![2, 5]);
//! let store = Store::create(dir.path().join("experts"), config)?;
//!
//! let pair = AdapterPair { a: vec![f16::from_f32(0.01); 4 * 64], b: vec![f16::ZERO; 64 * 4] };
//! let id = store.insert(NewExpert {
//!     key: vec![f16::from_f32(0.125); 64],
//!     layers: vec![pair.clone(), pair],
//!     provenance: Provenance::fact("The secret code of Zorblax is", "48213"),
//! })?; // durable once this returns
//!
//! let expert = store.get(id)?; // zero-copy view into the shard's memory map
//! assert_eq!(expert.key()[0], f16::from_f32(0.125));
//! assert_eq!(expert.a(1).len(), 4 * 64);
//! assert_eq!(store.meta(id)?.provenance.answer.as_deref(), Some("48213"));
//! # Ok(())
//! # }
//! ```
//!
//! See `ARCHITECTURE.md` for how the pieces fit, the layer order, and which invariants
//! each directory keeps.
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

// Layers, bottom to top (ARCHITECTURE.md §Layers; `tests/layering.rs` checks that no
// module imports one above it).
mod archive;
mod engine;
mod error;
mod fs;
mod index;
mod kernels;
mod model;
mod progress;
mod select;
mod store;
mod tune;

/// The tiny random backbone of the tests, for tests and examples that need a model
/// but not a real one (also written by the Python package's tests).
#[doc(hidden)]
pub use model::tiny;
/// Test data shared by tests, benches and the benchmark tool (feature `test-support`).
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod synth;

/// Fault injection under the engine's own file I/O (feature `test-support`):
/// `tests/io_faults.rs`.
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub use fs::{set_file_io, Fault, FaultyIo, FileIo};

pub use error::{Error, Result};
pub use progress::{NoProgress, Progress};

pub use store::{
    plan_compaction, read_header, AdapterPair, BackgroundVerify, BackgroundVerifyPolicy,
    BackgroundVerifyStatus, CompactionPlan, CompactionPolicy, CompactionReport, DbError,
    ExpertMeta, ExpertRef, ImportProgress, Loc, NewExpert, OrphanFile, Problem, Provenance,
    RecordHeader, RecordInfo, RecordLayout, RecordState, ShardHeader, ShardState, ShardStats,
    Snapshot, Store, StoreConfig, StoreDir, StoreError, StoreResult, StoreStats, UsageAccumulator,
    VerifyReport, WeightDtype, DEFAULT_SHARD_SIZE, MIN_SHARD_SIZE, SHARD_FORMAT_VERSION,
    STORE_FORMAT_VERSION,
};

pub use index::{
    add_reachable, saved_index_info, tombstone_horizon, ExpertIndex, FlatIndex, Hit, HnswIndex,
    IndexCheck, IndexError, IndexKind, IndexParams, IndexResult, KeyIndex, OpenedFrom,
    Quantization, SavedIndexInfo,
};

pub use archive::{
    check as check_archive, export as export_archive, import as import_archive, ArchiveError,
    ArchiveSummary, ExportReport, ImportReport, ARCHIVE_FORMAT_VERSION, ARCHIVE_MAGIC,
};

pub use model::{
    argmax, byte_level_alphabet, data_dir, locate_model, model_path, pooled_query, AdapterHook,
    AdapterSites, Adapters, Backbone, ChatMessage, ChatReply, GenerateOptions, Generated, Hidden,
    KvCache, Llama, LlamaConfig, Logits, Mode, ModelError, ModelResult, NoopHook, Pass, Queries,
    Sampler, Sampling, StopReason, TextStream, Tokenizer, WeightFormat, DATA_DIR_ENV, MODEL_ENV,
    MODEL_FILE_NAME, MODEL_SHA256,
};

/// The CUDA path of the fused operator: the device cache's bookkeeping everywhere, the
/// launcher and the device cache with the `cuda` feature (docs/CUDA.md).
pub use kernels::cuda;
pub use kernels::{
    fused_apply, fused_apply_explain, fused_apply_with, gate, reference_apply, reference_mix,
    reference_select, AdapterWeights, FusedApplyOp, FusedOptions, KernelError, OwnedAdapters,
    ReferenceSelection,
};

pub use select::{
    generate_answers, generate_answers_streaming, match_fact, select_facts, Analysis, CandidateSet,
    Chosen, Encoded, Lexicon, Match, OwnedFact, Query, QueryEncoder, RowPlan, RuleParams,
    SelectError, Selected, Selection, SelectionHook, SelectionParams, Selector, Source, StoredFact,
    TokenAssignments, TokenKind, RETRY_CANDIDATES, RETRY_MIN_SCORE,
};

pub use tune::{
    train_batch, train_batch_with, train_shared, validate_facts, Fact, FactOutcome, FactStatus,
    FrozenPrefix, MemorizeEvent, MemorizeReport, Memorizer, TrainRow, TrainedRow, TuneOptions,
};

pub use engine::{
    default_store_config, evaluate, legacy_rule, Answer, AskOptions, Engine, EngineParams,
    EvalReport, EvalSet, MultiFact, Paraphrase, Probe, Tally, ENGINE_FILE, LEGACY_QUERY_RULE,
    QUERY_RULE,
};
