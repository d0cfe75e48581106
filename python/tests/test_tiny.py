"""The engine from Python on the tiny random model of the Rust tests (no real model
needed): exact recall, the bare model's tokens for a near miss, streaming, and a
read-only engine following its writer."""

from __future__ import annotations

import shutil
import threading

import pytest

import mome
from conftest import TINY_FACTS

NEAR_MISS = "What is the door code of Everlunt?"


@pytest.fixture()
def tiny(tiny_store, tiny_model):
    with mome.Engine.open(tiny_store, tiny_model) as e:
        yield e


def test_stored_facts_exact_and_a_near_miss_bare(tiny):
    for prompt, answer in TINY_FACTS:
        a = tiny.ask(prompt)
        assert a.text == answer, (prompt, a)
        assert a.used_experts
    a = tiny.ask(NEAR_MISS)
    assert not a.used_experts
    assert a.tokens == tiny.ask(NEAR_MISS, use_experts=False).tokens


@pytest.mark.parametrize(
    "prompt,use_experts",
    [(TINY_FACTS[0][0], True), (NEAR_MISS, True), (TINY_FACTS[1][0], False),
     ("What are the door codes of Brontalis and Cazimir?", True)],
)
def test_streamed_pieces_join_to_the_answer(tiny, prompt, use_experts):
    whole = tiny.ask(prompt, use_experts=use_experts)
    stream = tiny.ask_stream(prompt, use_experts=use_experts)
    assert stream.answer is None
    pieces = list(stream)
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == whole.text
    assert stream.answer is not None
    assert stream.answer.text == whole.text
    assert stream.answer.tokens == whole.tokens
    assert stream.answer.selected == whole.selected
    assert list(stream) == []  # exhausted stays exhausted


def test_a_stored_answer_streams_token_by_token(tiny):
    prompt, answer = TINY_FACTS[2]
    pieces = list(tiny.ask_stream(prompt))
    assert "".join(pieces) == answer
    assert len(pieces) > 1, pieces


def test_closing_a_stream_stops_it(tiny):
    stream = tiny.ask_stream(NEAR_MISS, max_tokens=200, use_experts=False)
    first = next(stream)
    assert first
    stream.close()
    assert list(stream) == []
    assert stream.answer is None
    # The generation thread let go of the engine: a write lock is free again.
    tiny.flush()
    assert tiny.ask(TINY_FACTS[0][0]).text == TINY_FACTS[0][1]


def test_streams_from_threads(tiny):
    want = {p: tiny.ask(p).text for p, _ in TINY_FACTS}
    got: dict[str, str] = {}

    def run(prompt: str) -> None:
        got[prompt] = "".join(tiny.ask_stream(prompt))

    threads = [threading.Thread(target=run, args=(p,)) for p, _ in TINY_FACTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert got == want


def test_stream_arguments_are_checked(tiny):
    with pytest.raises(ValueError, match="max_tokens"):
        tiny.ask_stream("hi", max_tokens=0)
    with pytest.raises(TypeError):
        tiny.ask_stream(42)


def test_a_stream_of_a_closed_engine_raises(tiny_store, tiny_model, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(tiny_store, path, ignore=shutil.ignore_patterns("mome.lock"))
    e = mome.Engine.open(path, tiny_model)
    e.close()
    with pytest.raises(mome.ClosedError):
        list(e.ask_stream(TINY_FACTS[0][0]))


def test_read_only_engine_follows_its_writer(tiny_store, tiny_model, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(tiny_store, path, ignore=shutil.ignore_patterns("mome.lock"))
    with mome.Engine.open(path, tiny_model) as writer:
        with mome.Engine.open_read_only(path, tiny_model) as reader:
            assert reader.read_only and not writer.read_only
            assert len(reader) == len(TINY_FACTS)
            new = ("What is the door code of Galvorn?", "362")
            assert writer.memorize([new]).memorized == 1
            # The reader sees the store as of its last refresh.
            assert len(reader) == len(TINY_FACTS)
            assert not reader.ask(new[0]).used_experts
            assert reader.refresh() is True
            assert reader.refresh() is False
            assert len(reader) == len(TINY_FACTS) + 1
            assert reader.ask(new[0]).text == new[1]
            assert "".join(reader.ask_stream(new[0])) == new[1]
            assert writer.refresh() is False
            with pytest.raises(mome.ReadOnlyError) as exc:
                reader.memorize([("What is the door code of Hestrim?", "555")])
            assert exc.value.operation == "memorize"
            assert exc.value.path == str(path)
            with pytest.raises(mome.ReadOnlyError):
                reader.forget(TINY_FACTS[0][0])
            # Nothing the reader did changed the store.
            assert writer.ask(TINY_FACTS[0][0]).text == TINY_FACTS[0][1]
            assert len(writer) == len(TINY_FACTS) + 1


def test_read_only_open_of_a_locked_store(tiny_store, tiny_model, tmp_path):
    path = tmp_path / "s"
    shutil.copytree(tiny_store, path, ignore=shutil.ignore_patterns("mome.lock"))
    with mome.Engine.open(path, tiny_model):
        with pytest.raises(mome.LockedError):
            mome.Engine.open(path, tiny_model)
        with mome.Engine.open_read_only(path, tiny_model) as reader:
            assert reader.ask(TINY_FACTS[1][0]).text == TINY_FACTS[1][1]
