"""Type stubs of the native core (``mome._native``), re-exported by ``mome``."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypedDict

import numpy as np
import numpy.typing as npt

__version__: str
QUERY_RULE: str

StrPath = str | os.PathLike[str]
FactLike = Mapping[str, str] | tuple[str, str] | list[str]
Status = Literal[
    "memorized", "already_stored", "not_converged", "verify_failed", "shadowed", "not_run"
]

class StepEvent(TypedDict):
    event: Literal["step"]
    step: int
    converged: int
    rows: int

class DoneEvent(TypedDict):
    event: Literal["done"]
    done: int
    total: int

class Problem(TypedDict):
    id: int | None
    shard: int | None
    offset: int | None
    detail: str

class VerifyReport(TypedDict):
    ok: bool
    records_checked: int
    live: int
    recall_checked: int | None
    problems: list[Problem]

class ExportReport(TypedDict):
    experts: int
    bytes: int
    seq: int

def clear_model_cache() -> None:
    """Forget the backbones this process loaded (an open engine keeps its own)."""

class Answer:
    """An answer and how it was made."""

    text: str
    """The reply; the answers of a two-fact question, one per line."""
    tokens: list[int]
    """Generated token ids."""
    selected: list[tuple[int, float]]
    """Experts applied: ``(id, forward score)``, in the order they answer."""
    candidates: list[tuple[int, float]]
    """Stage-1 candidates: ``(id, cosine)``, best first."""
    explanation: dict[str, Any] | None
    """With ``explain=True``: thresholds, and the facts behind candidates and selection."""
    @property
    def used_experts(self) -> bool:
        """Whether any stored expert was applied (``False``: the bare model's output)."""

class AskStream(Iterator[str]):
    """The text pieces of one answer as they are generated (``Engine.ask_stream``)."""

    def __iter__(self) -> AskStream: ...
    def __next__(self) -> str: ...
    @property
    def answer(self) -> Answer | None:
        """The whole answer once exhausted; ``None`` before, or when closed early."""
    def close(self) -> None:
        """Stop generation at the next token and end the iterator."""

class FactOutcome:
    """What became of one fact of a ``memorize`` call."""

    prompt: str
    answer: str
    status: Status
    expert_id: int | None
    """The expert that answers the fact now (memorized or already stored)."""
    replaced: list[int]
    """Experts of the same prompt with another answer, deleted in the same commit."""
    got: str | None
    """With ``"verify_failed"``: what inference answered."""
    loss: float
    """Final mean answer loss (nats/token); NaN when not trained."""
    steps: int
    @property
    def stored(self) -> bool: ...

class MemorizeReport:
    """One outcome per fact, in input order, and totals."""

    outcomes: list[FactOutcome]
    memorized: int
    unchanged: int
    failed: int
    broken: list[int]
    """Previously stored experts whose fact no longer answers exactly."""
    seconds: float
    interrupted: bool
    """The call stopped after a whole batch (KeyboardInterrupt or a callback's error)."""
    @property
    def facts_per_minute(self) -> float: ...
    @property
    def ok(self) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[FactOutcome]: ...
    def __getitem__(self, i: int) -> FactOutcome: ...

class SearchHit:
    """One stage-1 hit, with the rule's view of it for a text query."""

    id: int
    score: float
    prompt: str | None
    answer: str | None
    names: bool | None
    forward: float | None
    chosen: bool

class Expert:
    """An expert's key and adapter weights (read-only float16 copies) and provenance."""

    id: int
    key: npt.NDArray[np.float16]
    """Shape ``(key_dim,)``."""
    layers: list[int]
    """Backbone layers adapted."""
    a: list[npt.NDArray[np.float16]]
    """Per adapted layer, shape ``(rank, d_model)``."""
    b: list[npt.NDArray[np.float16]]
    """Per adapted layer, shape ``(d_model, rank)``."""
    shard: int
    offset: int
    provenance: dict[str, Any]
    usage: int
    created_at_ms: int
    @property
    def prompt(self) -> str | None: ...
    @property
    def answer(self) -> str | None: ...

class Engine:
    """A store of memory experts, its index and the frozen backbone.

    Use as a context manager: ``with mome.Engine.open(path) as e: ...`` closes (and
    flushes) on exit, releasing the store's lock. Methods release the GIL.
    """

    @staticmethod
    def open(path: StrPath, model: StrPath | None = None, device: str | None = None) -> Engine:
        """Open an existing store (``NotAStoreError`` if there is none)."""
    @staticmethod
    def create(
        path: StrPath,
        model: StrPath | None = None,
        device: str | None = None,
        *,
        rank: int | None = None,
        layers: Sequence[int] | None = None,
        shard_size: int | None = None,
        k_candidates: int | None = None,
    ) -> Engine:
        """Create a new store (``AlreadyExistsError`` if ``path`` holds one)."""
    @staticmethod
    def open_or_create(
        path: StrPath, model: StrPath | None = None, device: str | None = None
    ) -> Engine:
        """Open the store, or create it with the engine's defaults."""
    @staticmethod
    def open_read_only(
        path: StrPath, model: StrPath | None = None, device: str | None = None
    ) -> Engine:
        """Open a store for reading while another process may write it (no lock);
        writes raise ``ReadOnlyError``."""
    def refresh(self) -> bool:
        """Catch a read-only engine up with its writer; whether anything changed."""
    @property
    def read_only(self) -> bool:
        """Whether the engine was opened with ``open_read_only``."""
    def memorize(
        self,
        facts: Iterable[FactLike],
        *,
        batch_size: int = 10,
        max_steps: int = 120,
        progress: bool | Callable[[StepEvent | DoneEvent], object] | None = None,
    ) -> MemorizeReport:
        """Train, verify and commit one expert per fact."""
    def ask(
        self,
        prompt: str,
        *,
        max_tokens: int = 48,
        use_experts: bool = True,
        explain: bool = False,
    ) -> Answer:
        """Answer greedily with the experts the selection rule chooses."""
    def ask_stream(
        self, prompt: str, *, max_tokens: int = 48, use_experts: bool = True
    ) -> AskStream:
        """``ask``, yielding the reply's text pieces as they are generated."""
    def search(self, query: str | Sequence[float] | npt.ArrayLike, k: int = 10) -> list[SearchHit]:
        """Stage-1 hits for a prompt or a key vector, best first."""
    def forget(self, prompt: str) -> list[int]:
        """Delete the experts stored for this prompt; returns their ids."""
    def delete(self, ids: int | Iterable[int]) -> None:
        """Delete experts by id, all or none."""
    def expert(self, id: int) -> Expert:
        """One expert's key, weights and provenance."""
    def stats(self) -> dict[str, Any]:
        """Experts, shards, orphans, index, config."""
    def verify(self, *, recall: bool = False) -> VerifyReport:
        """Checksums and consistency; with ``recall`` every stored fact replayed."""
    def compact(
        self,
        *,
        min_live_fraction: float | None = None,
        merge_below_fraction: float | None = None,
    ) -> dict[str, Any]:
        """Reclaim the bytes of deleted experts."""
    def export(self, path: StrPath) -> ExportReport:
        """Write every live expert to a portable archive."""
    def import_(self, path: StrPath) -> list[int]:
        """Insert an archive's experts (new ids); returns the ids."""
    def flush(self) -> None:
        """Flush usage counters and save the index."""
    def close(self) -> None:
        """Flush and close; idempotent."""
    @property
    def closed(self) -> bool: ...
    @property
    def path(self) -> pathlib.Path: ...
    @property
    def model_path(self) -> pathlib.Path: ...
    @property
    def config(self) -> dict[str, Any]: ...
    def __len__(self) -> int: ...
    def __enter__(self) -> Engine: ...
    def __exit__(self, *exc: object) -> bool: ...

def _write_tiny_model(path: StrPath, seed: int = 1) -> None:
    """Write the Rust tests' tiny random model as a GGUF file (for tests, examples)."""
