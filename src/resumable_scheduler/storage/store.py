"""The `Store` interface: where one run's checkpoint objects live.

A backup is a sequence of self-contained checkpoint objects named
`ckpt-<seq>-<crc32>.weights.h5` (see `storage.backup_dir`). What differs
between a local directory and a bucket is only how an object is published,
listed, read, deleted, and how one writer is guaranteed; everything else
(numbering, verification, "the newest usable one, with fallback", pruning)
is written once, in `storage.backup_dir`, over this interface.

Back ends:

- `storage.local.LocalStore`: a POSIX directory; a commit is a temporary
  file, fsynced and renamed; one writer by an `fcntl` lock.
- `storage.bucket.BucketStore`: any fsspec URL (`s3://`, `gs://`, ...); a
  commit is one object put only if absent (no rename on a bucket: the
  object appears whole or not at all); one writer by a lease object.

`store_for(location)` picks the back end from the location.

Contract: a reader never sees a partial object; `commit` never overwrites a
committed object (`FileExistsError`); `names()` lists committed objects
only, oldest first. Not thread-safe; one `Store` per `fit`.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable


@runtime_checkable
class Store(Protocol):
    """One run's checkpoint objects (see the module doc for the contract)."""

    #: The location as the user gave it (a path or a URL), for messages.
    location: str

    def open(self) -> None:
        """Makes the location if needed, takes the one-writer lock or lease
        (a second writer gets `RuntimeError`), and removes leftovers of
        interrupted commits, with a warning."""

    def close(self) -> None:
        """Gives the lock or lease back (idempotent)."""

    def names(self) -> list[str]:
        """Committed object names (not paths), in no particular order."""

    def read(self, name: str) -> bytes:
        """The bytes of one committed object (`OSError` if unreadable)."""

    def commit(self, name: str, data: bytes) -> None:
        """Publishes `data` as `name`, atomically; `FileExistsError` if
        `name` exists. A failure leaves no object and raises `OSError`."""

    def delete(self, name: str) -> None:
        """Deletes one object (no error if it is gone)."""

    def exists(self, name: str) -> bool:
        """Whether an object (or file) `name` exists at the location."""

    def describe(self, name: str) -> str:
        """The full path or URL of `name`, for messages."""

    def remove_all(self) -> None:
        """Deletes the location and everything in it (end of a finished run)."""


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for `scheme://...` locations other than `file://`.

    >>> is_url("s3://bucket/run"), is_url("/tmp/run"), is_url("file:///tmp/run")
    (True, False, False)
    """
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


def store_for(location: str | os.PathLike[str]) -> Store:
    """The back end for `location`: a bucket for URLs, else a directory."""
    text = os.fspath(location)
    if is_url(text):
        from resumable_scheduler.storage.bucket import BucketStore

        return BucketStore(text)
    from resumable_scheduler.storage.local import LocalStore

    return LocalStore(text.removeprefix("file://"))
