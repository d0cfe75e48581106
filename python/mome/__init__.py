"""mome: memory experts for a frozen transformer, from Python.

A stored fact is answered exactly; a question no stored fact answers gets the bare
model's output, token for token::

    import mome

    with mome.Engine.open_or_create("experts") as engine:
        engine.memorize([("What is the secret code of Zorblax?", "48213")])
        engine.ask("What is the secret code of Zorblax?").text  # '48213'

The engine is the Rust core (``mome._native``); every call releases the GIL while the
model or the store works. Errors are :class:`mome.Error` and its subclasses.
"""

from . import _errors
from ._errors import *  # noqa: F403 (the hierarchy, listed once in _errors.__all__)
from ._native import (
    QUERY_RULE,
    Answer,
    AskStream,
    Engine,
    Expert,
    FactOutcome,
    MemorizeReport,
    SearchHit,
    __version__,
    clear_model_cache,
)

__all__ = [
    "Engine",
    "Answer",
    "AskStream",
    "Expert",
    "FactOutcome",
    "MemorizeReport",
    "SearchHit",
    "clear_model_cache",
    "QUERY_RULE",
    "__version__",
    *_errors.__all__,
]
