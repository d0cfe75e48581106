"""Memorize a few facts, then measure exact recall and locality (notebook style).

    python python/examples/recall_and_locality.py [STORE_DIR]

Exact recall: each stored fact's question answers its stored answer exactly.
Locality: a question no stored fact answers gets the bare model's output, token for
token (the same question about another entity, and unrelated questions).
"""

import sys
import tempfile

import mome

facts = [
    ("What is the secret code of Zorblax?", "48213"),
    ("What is the password of the Kelvura vault?", "mirasol7-42"),
    ("Who guards the gate of Tepanor?", "Duvik Solamen"),
]
others = [
    "What is the secret code of Morvath?",  # near miss: an entity not stored
    "What is the capital of France?",
    "How many legs does a spider have?",
]

path = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + "/experts"
with mome.Engine.open_or_create(path) as engine:
    report = engine.memorize(facts, progress=True)
    print(report)
    recalled = sum(engine.ask(q).text == a for q, a in facts)
    local = sum(
        engine.ask(q).tokens == engine.ask(q, use_experts=False).tokens for q in others
    )
    print(f"exact recall {recalled}/{len(facts)}, locality {local}/{len(others)}")
    print(engine.ask(facts[0][0], explain=True).explanation["selected"])
