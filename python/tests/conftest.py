"""Shared fixtures: one store with three random facts, memorized once per session on
the real model (fetched by tools/setup.sh). Tests open it with the model cached in
this process, so each open costs the index load, not a model load."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

import mome

REPO = Path(__file__).resolve().parents[2]
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Short answers keep the bare-model comparisons quick; the facts' answers fit.
MAX_TOKENS = 16


def model_path() -> Path | None:
    env = os.environ.get("MOME_MODEL")
    if env:
        return Path(env) if Path(env).is_file() else None
    data = os.environ.get("MOME_DATA_DIR") or str(Path.home() / ".cache" / "mome")
    p = Path(data) / MODEL_FILE
    return p if p.is_file() else None


def random_name(rng: random.Random) -> str:
    """A pronounceable made-up name, as the Rust tests' `synth::random_name`."""
    c, v = "bcdfghklmnprstvz", "aeiou"
    s = ""
    for i in range(rng.randrange(2, 4)):
        s += c[rng.randrange(len(c))].upper() if i == 0 else c[rng.randrange(len(c))]
        s += v[rng.randrange(len(v))]
    return s + c[rng.randrange(len(c))]


def random_facts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    templates = [
        "What is the secret code of {}?",
        "What is the password of the {} vault?",
        "Who guards the gate of {}?",
    ]
    facts = []
    for i in range(n):
        prompt = templates[i % len(templates)].format(random_name(rng))
        if i % 3 == 0:
            answer = str(rng.randrange(10_000, 100_000))
        elif i % 3 == 1:
            answer = f"{random_name(rng).lower()}{rng.randrange(10)}-{rng.randrange(10, 100)}"
        else:
            answer = f"{random_name(rng)} {random_name(rng)}"
        facts.append((prompt, answer))
    return facts


def mome_binary() -> Path | None:
    """The CLI built by `cargo build --release` (for comparing `mome inspect`)."""
    candidates = [os.environ.get("MOME_BIN")]
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        candidates.append(str(Path(target) / "release" / "mome"))
    candidates.append(str(REPO / "target" / "release" / "mome"))
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def model() -> Path:
    p = model_path()
    if p is None:
        pytest.skip("the real model is not fetched (run tools/fetch-model.sh)")
    return p


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The Rust tests' tiny random model as a GGUF file: the tests that use it need no
    real model and run in every setup."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    mome._native._write_tiny_model(path, seed=7)
    return path


# Door codes of made-up names: short answers the tiny model learns in a few steps.
TINY_FACTS = [
    ("What is the door code of Brontalis?", "417"),
    ("What is the door code of Cazimir?", "086"),
    ("What is the door code of Dovrenna?", "925"),
]


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_model) -> Path:
    """A tiny-model store holding TINY_FACTS (closed: tests open it themselves)."""
    path = tmp_path_factory.mktemp("tiny-store") / "experts"
    with mome.Engine.create(path, tiny_model) as e:
        report = e.memorize(TINY_FACTS)
        assert report.memorized == len(TINY_FACTS), report
    return path


@pytest.fixture(scope="session")
def facts() -> list[tuple[str, str]]:
    return random_facts(3, seed=int(os.environ.get("MOME_PY_SEED", "2026")))


@pytest.fixture(scope="session")
def store(tmp_path_factory, model, facts) -> Path:
    """A store holding the three facts (closed: tests open it themselves)."""
    path = tmp_path_factory.mktemp("store") / "experts"
    with mome.Engine.create(path, model) as e:
        report = e.memorize(facts)
        assert report.memorized == 3, report
    return path


@pytest.fixture()
def engine(store, model):
    with mome.Engine.open(store, model) as e:
        yield e


@pytest.fixture()
def store_copy(store, tmp_path) -> Path:
    """A private copy of the store, for tests that damage or change it."""
    dst = tmp_path / "copy"
    shutil.copytree(store, dst, ignore=shutil.ignore_patterns("mome.lock"))
    return dst


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter (for locks and signals, which are per process)."""
    return subprocess.run(
        [os.environ.get("PYTHON", __import__("sys").executable), "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
