"""memorize from Python: input forms, the report, a callback, re-memorizing, and a
KeyboardInterrupt that stops after the batch in flight with nothing half-written."""

from __future__ import annotations

import json
import threading

import pytest

import mome
from conftest import MAX_TOKENS, random_facts, run_python


def test_report_tuples_dicts_progress_and_unchanged(tmp_path, model, facts):
    events = []
    new = random_facts(5, seed=7)[3:]
    with mome.Engine.create(tmp_path / "s", model) as e:
        # The same fact again is unchanged; dicts and tuples are both facts.
        r = e.memorize(
            [{"prompt": new[0][0], "answer": new[0][1]}, new[1]],
            batch_size=1,
            progress=events.append,
        )
        assert (r.memorized, r.unchanged, r.failed, r.ok) == (2, 0, 0, True)
        assert [o.status for o in r] == ["memorized", "memorized"]
        assert r[0].expert_id is not None and r[-1].stored and r[0].steps > 0
        assert r[0].loss < 0.05 and r.facts_per_minute > 0 and len(r) == 2
        assert "memorized=2" in repr(r) and "memorized" in repr(r[0])
        assert [ev for ev in events if ev["event"] == "done"] == [
            {"event": "done", "done": 1, "total": 2},
            {"event": "done", "done": 2, "total": 2},
        ]
        assert any(ev["event"] == "step" for ev in events)
        again = e.memorize([new[0]])
        assert again.unchanged == 1 and again[0].status == "already_stored"
        assert again[0].expert_id == r[0].expert_id
        assert e.ask(new[1][0], max_tokens=MAX_TOKENS).text == new[1][1]


INTERRUPT = r"""
import json, os, signal, sys
import mome
db, facts = sys.argv[1], json.loads(sys.argv[2])
# Python installs this handler at startup only when SIGINT is not ignored, and a
# background job of a non-interactive shell starts with it ignored: Ctrl-C's behaviour
# in an interactive program must not depend on how the test suite was launched.
signal.signal(signal.SIGINT, signal.default_int_handler)
def progress(ev):
    # A real SIGINT, as Ctrl-C sends, while the first batch trains.
    if ev["event"] == "step" and ev["step"] == 1:
        os.kill(os.getpid(), signal.SIGINT)
with mome.Engine.create(db) as e:
    try:
        e.memorize(facts, batch_size=1, progress=progress)
        print(json.dumps({"raised": None}))
    except KeyboardInterrupt as err:
        r = err.report
        print(json.dumps({"raised": "KeyboardInterrupt", "interrupted": r.interrupted,
                          "status": [o.status for o in r], "live": len(e)}))
"""


def test_keyboard_interrupt_stops_after_the_batch(tmp_path, model):
    facts = random_facts(6, seed=11)[3:]
    db = tmp_path / "s"
    p = run_python(INTERRUPT, str(db), json.dumps(facts))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["raised"] == "KeyboardInterrupt" and out["interrupted"]
    assert out["status"] == ["memorized", "not_run", "not_run"]
    assert out["live"] == 1
    # What was committed is whole: reopened, verified, and answered exactly.
    with mome.Engine.open(db, model) as e:
        assert len(e) == 1
        assert e.verify(recall=True)["ok"]
        assert e.ask(facts[0][0], max_tokens=MAX_TOKENS).text == facts[0][1]


def test_callback_exception_stops_and_carries_the_report(tmp_path, model):
    facts = random_facts(8, seed=5)[6:]

    def boom(ev):
        if ev["event"] == "done":
            raise RuntimeError("stop here")

    with mome.Engine.create(tmp_path / "s", model) as e:
        with pytest.raises(RuntimeError, match="stop here") as err:
            e.memorize(facts, batch_size=1, progress=boom)
        r = err.value.report
        assert r.interrupted and [o.status for o in r] == ["memorized", "not_run"]
        assert r.failed == 1 and len(e) == 1


def test_callback_cannot_reenter_the_engine(tmp_path, model):
    seen = []

    with mome.Engine.create(tmp_path / "s", model) as e:

        def reenter(ev):
            try:
                e.ask("What is 2 + 2?")
            except mome.BusyError as err:
                seen.append(err)
                raise

        with pytest.raises(mome.BusyError):
            e.memorize(random_facts(1, seed=3), progress=reenter)
        assert seen and len(e) == 1


def test_callback_consuming_another_threads_stream_is_busy(tmp_path, model):
    # A stream started on another thread while memorize holds the engine cannot
    # generate until memorize ends; consuming it in the callback raises instead of
    # waiting forever, and the stream still answers once memorize has returned.
    prompt = "What is 2 + 2?"
    streams, seen = [], []

    with mome.Engine.create(tmp_path / "s", model) as e:

        def consume(ev):
            if not streams:
                t = threading.Thread(
                    target=lambda: streams.append(e.ask_stream(prompt, max_tokens=8))
                )
                t.start()
                t.join(timeout=60)
                assert streams, "ask_stream did not return on its thread"
            try:
                next(streams[0])
            except mome.BusyError as err:
                seen.append(err)
                raise

        with pytest.raises(mome.BusyError):
            e.memorize(random_facts(1, seed=5), progress=consume)
        assert seen
        assert "".join(streams[0]) == e.ask(prompt, max_tokens=8).text
