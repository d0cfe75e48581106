"""Errors: the Rust typed errors arrive as the mome.Error hierarchy with their
message and fields; wrong Python types raise TypeError/ValueError naming the argument."""

from __future__ import annotations

import os

import pytest

import mome
from conftest import run_python


def test_corrupt_shard_is_reported_with_expert_shard_offset(store_copy, model, facts):
    with mome.Engine.open(store_copy, model) as e:
        ids = [e.search(p, k=1)[0].id for p, _ in facts]
        victim = ids[1]
        x = e.expert(victim)
        shard, offset = x.shard, x.offset
    path = store_copy / "shards" / f"{shard:08}.shard"
    with open(path, "r+b") as f:
        # A byte of the key, inside the record's checksummed bytes.
        f.seek(offset + 64 + 5)
        b = f.read(1)
        f.seek(offset + 64 + 5)
        f.write(bytes([b[0] ^ 0x10]))
    with mome.Engine.open(store_copy, model) as e:
        with pytest.raises(mome.CorruptionError) as err:
            e.expert(victim)
        assert (err.value.expert_id, err.value.shard, err.value.offset) == (victim, shard, offset)
        assert f"expert {victim}" in str(err.value) and f"offset {offset}" in str(err.value)
        assert isinstance(err.value, mome.Error)
        v = e.verify()
        assert not v["ok"]
        assert any(p["id"] == victim and p["shard"] == shard for p in v["problems"])
        # The other experts still read; a question whose candidates include the
        # corrupt record fails loudly rather than answering without it.
        assert e.expert(ids[0]).answer == facts[0][1]
        with pytest.raises(mome.CorruptionError):
            e.ask(facts[0][0])


LOCKED = r"""
import sys, mome
try:
    mome.Engine.open(sys.argv[1])
    print("opened")
except mome.LockedError as e:
    print("LockedError", e.path, "|", e)
"""


def test_second_process_gets_locked_error(engine, store):
    p = run_python(LOCKED, str(store))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("LockedError"), p.stdout
    assert "locked by another writer" in p.stdout


def test_second_open_in_process_gets_locked_error(engine, store, model):
    with pytest.raises(mome.LockedError):
        mome.Engine.open(store, model)


def test_wrong_config_import_is_refused(engine, tmp_path, model):
    archive = tmp_path / "a.mome"
    engine.export(archive)
    with mome.Engine.create(tmp_path / "rank4", model, rank=4) as other:
        with pytest.raises(mome.ConfigMismatchError) as err:
            other.import_(archive)
        assert err.value.field == "rank"
        assert len(other) == 0
    # A damaged archive is refused too, before anything is written.
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "bad.mome"
    bad.write_bytes(bytes(raw))
    with mome.Engine.create(tmp_path / "same", model) as other:
        with pytest.raises(mome.CorruptionError):
            other.import_(bad)
        assert len(other) == 0


def test_store_and_model_errors(tmp_path, model, store):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(mome.NotAStoreError):
        mome.Engine.open(empty, model)
    with pytest.raises(mome.AlreadyExistsError):
        mome.Engine.create(store, model)
    with pytest.raises(mome.ModelError, match="model file not found"):
        mome.Engine.create(tmp_path / "new", tmp_path / "no-such-model.gguf")
    not_gguf = tmp_path / "junk.gguf"
    not_gguf.write_bytes(os.urandom(4096))
    with pytest.raises(mome.ModelError):
        mome.Engine.create(tmp_path / "new2", not_gguf)
    with pytest.raises(ValueError, match="device"):
        mome.Engine.open(store, model, device="cuda:7")


def test_wrong_types_and_values(engine, facts):
    with pytest.raises(TypeError, match="facts"):
        engine.memorize("What is 2 + 2?")
    with pytest.raises(TypeError, match=r"facts\[0\]"):
        engine.memorize([42])
    with pytest.raises(TypeError, match=r"facts\[1\]\[\"answer\"\]"):
        engine.memorize([facts[0], {"prompt": "Who is Zub?", "answer": 7}])
    with pytest.raises(ValueError, match=r"facts\[0\] has no \"answer\""):
        engine.memorize([{"prompt": "Who is Zub?"}])
    with pytest.raises(ValueError, match=r"facts\[0\] must be a \(prompt, answer\) pair"):
        engine.memorize([("a", "b", "c")])
    # Values the Rust core refuses: InvalidInputError, also a ValueError; nothing stored.
    with pytest.raises(mome.InvalidInputError, match="fact 1"):
        engine.memorize([("Who guards the gate of Lupan?", "Kor"), ("   ", "x")])
    with pytest.raises(ValueError, match="facts"):
        engine.memorize([])
    with pytest.raises(ValueError, match="batch_size"):
        engine.memorize([facts[0]], batch_size=0)
    with pytest.raises(TypeError, match="progress"):
        engine.memorize([facts[0]], progress="yes")
    assert len(engine) == 3
    with pytest.raises(TypeError, match="prompt"):
        engine.ask(3)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.ask("hi", max_tokens=-1)
    with pytest.raises(TypeError):
        engine.ask("hi", use_experts="no")
    with pytest.raises(TypeError, match="id"):
        engine.expert("1")
    with pytest.raises(TypeError, match="id"):
        engine.expert(True)
    with pytest.raises(ValueError, match="id"):
        engine.expert(-1)
    with pytest.raises(mome.NotFoundError):
        engine.expert(2**64 - 1)
    with pytest.raises(ValueError, match="k"):
        engine.search("hi", k=0)
    with pytest.raises(TypeError, match="query"):
        engine.search(object())
    with pytest.raises(mome.InvalidInputError, match="dimension"):
        engine.search([0.5, 0.25])
    with pytest.raises(ValueError, match="1-D"):
        engine.search([[0.5], [0.25]])
    with pytest.raises(TypeError, match=r"ids\[1\]"):
        engine.delete([1, "2"])
    with pytest.raises(TypeError):
        mome.Engine.open(12)
    # None of it changed the store or broke the engine.
    assert len(engine) == 3
    assert engine.ask(facts[0][0], max_tokens=16).text == facts[0][1]


def test_hierarchy():
    for cls in (
        mome.CorruptionError,
        mome.LockedError,
        mome.ConfigMismatchError,
        mome.ModelError,
        mome.NotFoundError,
        mome.InvalidInputError,
    ):
        assert issubclass(cls, mome.Error)
    assert issubclass(mome.InvalidInputError, ValueError)
    assert issubclass(mome.NotFoundError, LookupError)
    assert issubclass(mome.StoreIOError, OSError)
