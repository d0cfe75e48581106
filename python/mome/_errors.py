"""The exceptions mome raises.

Every failure of the Rust core is an instance of :class:`Error` (or a subclass) whose
message is the Rust error's message. Wrong Python types raise the built-in
``TypeError``; values outside their range raise :class:`InvalidInputError`, which is
also a ``ValueError``.

The native module looks these classes up by name when it raises, so they are defined
here in Python (multiple inheritance, attributes) rather than in Rust.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every error of the mome engine."""


class CorruptionError(Error):
    """A record, shard, metadata or archive failed its checksum or structural check.

    Attributes (``None`` where unknown): ``expert_id``, ``shard``, ``offset`` (byte
    offset of the record in its shard file, or of the bad byte in an archive), ``path``.
    """

    expert_id: int | None = None
    shard: int | None = None
    offset: int | None = None
    path: str | None = None


class LockedError(Error):
    """Another process (or another open engine in this one) holds the store.

    Attribute: ``path``, the store directory.
    """

    path: str | None = None


class ConfigMismatchError(Error):
    """The store, archive or model given do not fit together: another shape, backbone
    or selection rule.

    Attributes (``None`` where not applicable): ``field``, ``stored``, ``given``.
    """

    field: str | None = None
    stored: str | None = None
    given: str | None = None


class ModelError(Error):
    """The backbone failed: not found, unreadable, unsupported, or generation failed."""


class NotFoundError(Error, LookupError):
    """No live expert (or shard) has this id. Attribute: ``expert_id``."""

    expert_id: int | None = None


class NotAStoreError(Error):
    """The directory holds no mome store (``Engine.open`` does not create one)."""


class AlreadyExistsError(Error):
    """``Engine.create`` on a directory that already holds a store or other files."""


class InvalidInputError(Error, ValueError):
    """A value mome refuses: a blank or duplicate fact, a vector of the wrong length or
    with NaN, an argument outside its range. Nothing was written."""


class StoreIOError(Error, OSError):
    """An operating-system error on one of the store's files."""


class PoisonedError(Error):
    """An earlier write failed part-way; the store accepts no writes until reopened."""


class ReadOnlyError(Error):
    """A write (``memorize``, ``forget``, ``delete``, ``compact``, ``import_``) on an
    engine opened with ``Engine.open_read_only``; nothing was written.

    Attributes: ``path`` (the store directory), ``operation`` (the refused one).
    """

    path: str | None = None
    operation: str | None = None


class ClosedError(Error):
    """The engine was closed (``close()`` or the end of its ``with`` block)."""


class BusyError(Error):
    """The engine was used from inside its own ``memorize`` progress callback."""


__all__ = [
    "Error",
    "CorruptionError",
    "LockedError",
    "ConfigMismatchError",
    "ModelError",
    "NotFoundError",
    "NotAStoreError",
    "AlreadyExistsError",
    "InvalidInputError",
    "StoreIOError",
    "PoisonedError",
    "ReadOnlyError",
    "ClosedError",
    "BusyError",
]
