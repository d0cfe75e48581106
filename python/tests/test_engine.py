"""The engine from Python on the real model: exact recall, the bare model's output for
questions no stored fact answers, search, archives, forgetting, and the GIL."""

from __future__ import annotations

import threading
import time

import pytest

import mome
from conftest import MAX_TOKENS, random_facts


def test_memorized_facts_are_answered_exactly(engine, facts):
    assert len(engine) == 3
    for prompt, answer in facts:
        a = engine.ask(prompt, max_tokens=MAX_TOKENS)
        assert a.text == answer, (prompt, a)
        assert a.used_experts and len(a.selected) == 1
        assert a.candidates and a.tokens


def test_unrelated_prompt_gets_the_bare_models_output(engine):
    prompt = "What is the capital of France?"
    with_experts = engine.ask(prompt, max_tokens=MAX_TOKENS)
    bare = engine.ask(prompt, max_tokens=MAX_TOKENS, use_experts=False)
    assert with_experts.selected == []
    assert with_experts.tokens == bare.tokens
    assert with_experts.text == bare.text


def test_near_miss_gets_the_bare_models_output(engine, facts):
    # The same question about an entity that is not stored.
    template = facts[0][0].rsplit(" ", 1)[0]
    stored = {p for p, _ in facts}
    other = next(
        p
        for p, _ in random_facts(12, seed=99)
        if p.startswith(template) and p not in stored
    )
    a = engine.ask(other, max_tokens=MAX_TOKENS)
    bare = engine.ask(other, max_tokens=MAX_TOKENS, use_experts=False)
    assert a.selected == [], a.explanation
    assert a.tokens == bare.tokens
    assert all(ans not in a.text for _, ans in facts)


def test_explain_names_the_facts(engine, facts):
    prompt, answer = facts[1]
    a = engine.ask(prompt, max_tokens=MAX_TOKENS, explain=True)
    why = a.explanation
    assert why["k_candidates"] >= 1
    assert [s["answer"] for s in why["selected"]] == [answer]
    assert why["candidates"][0]["prompt"] == prompt
    assert engine.ask(prompt, max_tokens=MAX_TOKENS).explanation is None


def test_search_by_text_and_by_key(engine, facts):
    prompt, answer = facts[2]
    hits = engine.search(prompt, k=3)
    assert hits[0].prompt == prompt and hits[0].answer == answer
    assert hits[0].chosen and hits[0].names
    assert [h.chosen for h in hits].count(True) == 1
    e = engine.expert(hits[0].id)
    by_key = engine.search(e.key.astype("float32"), k=1)
    assert by_key[0].id == e.id and by_key[0].score > 0.99
    assert by_key[0].names is None and not by_key[0].chosen


def test_stats_and_verify(engine):
    s = engine.stats()
    assert s["live"] == 3 and s["deleted"] == 0
    assert s["config"]["rank"] == engine.config["rank"] == 8
    v = engine.verify(recall=True)
    assert v["ok"], v["problems"]
    assert v["records_checked"] == 3 and v["recall_checked"] == 3


def test_export_import_forget_delete_compact(engine, facts, tmp_path, model):
    archive = tmp_path / "facts.mome"
    r = engine.export(archive)
    assert r["experts"] == 3 and archive.stat().st_size == r["bytes"]
    with mome.Engine.create(tmp_path / "other", model) as other:
        ids = other.import_(archive)
        assert len(ids) == 3 and len(other) == 3
        (p0, a0), (p1, _), (p2, a2) = facts
        assert other.ask(p0, max_tokens=MAX_TOKENS).text == a0
        # Forgetting a prompt gives the bare model's answer back.
        gone = other.forget(p0)
        assert len(gone) == 1
        assert other.forget(p0) == []
        after = other.ask(p0, max_tokens=MAX_TOKENS)
        assert after.selected == []
        assert after.tokens == other.ask(p0, max_tokens=MAX_TOKENS, use_experts=False).tokens
        # Deleting by id; an unknown id deletes nothing.
        keep = other.search(p2, k=1)[0].id
        drop = other.search(p1, k=1)[0].id
        with pytest.raises(mome.NotFoundError):
            other.delete([drop, 10_000])
        assert len(other) == 2
        other.delete(drop)
        assert len(other) == 1 and other.expert(keep).answer == a2
        with pytest.raises(mome.NotFoundError) as err:
            other.expert(drop)
        assert err.value.expert_id == drop
        c = other.compact()
        assert set(c) >= {"records_copied", "reclaimed_bytes", "tombstones_purged"}
        assert other.ask(p2, max_tokens=MAX_TOKENS).text == a2
        assert other.verify()["ok"]


def test_context_manager_closes_and_releases_the_lock(store, model):
    with mome.Engine.open(store, model) as e:
        assert not e.closed
        assert "experts=3" in repr(e)
    assert e.closed and "closed" in repr(e)
    with pytest.raises(mome.ClosedError):
        e.ask("What is 2 + 2?")
    e.close()  # idempotent
    with mome.Engine.open(store, model) as again:
        assert len(again) == 3


def test_ask_releases_the_gil(engine):
    # Another Python thread keeps running while the model generates.
    done = threading.Event()
    ticks = 0

    def spin():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=spin)
    t.start()
    start = time.perf_counter()
    engine.ask("Write one word about the sea.", max_tokens=MAX_TOKENS, use_experts=False)
    elapsed = time.perf_counter() - start
    done.set()
    t.join()
    # With the GIL held throughout, the thread would not tick at all during the call.
    assert ticks > min(20, elapsed * 1000 / 4), (ticks, elapsed)


def test_reprs(engine, facts):
    a = engine.ask(facts[0][0], max_tokens=MAX_TOKENS)
    assert repr(a).startswith("Answer(text=") and str(a) == a.text
    h = engine.search(facts[0][0], k=1)[0]
    assert repr(h).startswith(f"SearchHit(id={h.id}")
    x = engine.expert(h.id)
    assert repr(x).startswith(f"Expert(id={h.id}")
