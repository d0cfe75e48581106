"""The NumPy views of an expert equal what `mome inspect --json` prints for it."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import mome
from conftest import mome_binary


def test_numpy_views_match_mome_inspect(store, model, facts):
    binary = mome_binary()
    if binary is None:
        pytest.skip("target/release/mome is not built (cargo build --release -p mome-cli)")
    with mome.Engine.open(store, model) as e:
        ids = [e.search(p, k=1)[0].id for p, _ in facts]
        views = {i: e.expert(i) for i in ids}
        cfg = e.config
    # The CLI takes the store's lock: the engine is closed first.
    for i, x in views.items():
        out = subprocess.run(
            [str(binary), "inspect", "--db", str(store), "--expert", str(i), "--json"],
            capture_output=True, text=True, timeout=60, check=True,
        )
        want = json.loads(out.stdout)
        assert x.key.dtype == np.float16 and x.key.shape == (cfg["key_dim"],)
        assert not x.key.flags.writeable
        assert x.layers == cfg["layers"] == [l["layer"] for l in want["layers"]]
        assert (x.shard, x.offset) == (want["shard"], want["offset"])
        # The CLI's JSON leaves out empty fields; the view has every key.
        assert {k: v for k, v in x.provenance.items() if v not in (None, [])} == want["provenance"]
        assert x.provenance["final_loss"] == want["provenance"]["final_loss"]
        assert x.prompt == want["provenance"]["prompt"]

        def norm(a):
            return float(np.sqrt(np.sum(a.astype(np.float64) ** 2)))

        assert norm(x.key) == pytest.approx(want["key_norm"], rel=1e-12)
        for a, b, layer in zip(x.a, x.b, want["layers"]):
            assert a.shape == (cfg["rank"], cfg["d_model"]) and a.dtype == np.float16
            assert b.shape == (cfg["d_model"], cfg["rank"])
            assert norm(a) == pytest.approx(layer["a_norm"], rel=1e-12)
            assert norm(b) == pytest.approx(layer["b_norm"], rel=1e-12)
            assert norm(b) > 0
