"""`LocalStore`: checkpoint objects as files in a POSIX directory.

A commit writes the bytes to `<name-stem>.tmp-XXXXXXXX.weights.h5`, fsyncs
it, renames it to its final name and fsyncs the directory
(`storage.atomic.commit_file`): a kill at any instant leaves the old set of
files or the new one. One writer per directory: an `fcntl` lock on
`<dir>/.lock` (a second process gets `RuntimeError`; a lock whose process
died is free again; re-entrant within one process).

>>> import tempfile
>>> store = LocalStore(tempfile.mkdtemp()); store.open()
>>> store.commit("ckpt-00000000-00000000.weights.h5", b"data")
>>> store.names(), store.read("ckpt-00000000-00000000.weights.h5")
(['ckpt-00000000-00000000.weights.h5'], b'data')
>>> store.close()
"""

from __future__ import annotations

import os
import shutil

from resumable_scheduler.storage import atomic

SUFFIX = ".weights.h5"


class LocalStore:
    """A `storage.store.Store` over a local directory."""

    def __init__(self, directory: str) -> None:
        self.location = directory
        self.directory = os.path.abspath(directory)
        self._lock = atomic.DirLock(self.directory)

    @property
    def lock(self) -> atomic.DirLock:
        return self._lock

    def open(self) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._lock.acquire()
        except OSError as e:
            raise OSError(
                f"Cannot use backup_dir={self.location!r}: {e.strerror or e}. "
                "Expected a writable directory."
            ) from None
        atomic.remove_stale_temporaries(self.directory)

    def close(self) -> None:
        self._lock.release()

    def names(self) -> list[str]:
        if not os.path.isdir(self.directory):
            return []
        # Not the lock file, nor temporaries of an unfinished commit.
        return [n for n in os.listdir(self.directory) if not n.startswith(".") and atomic.TMP_MARK not in n]

    def read(self, name: str) -> bytes:
        with open(self._path(name), "rb") as f:
            return f.read()

    def commit(self, name: str, data: bytes) -> None:
        if not name.endswith(SUFFIX):
            raise ValueError(f"Invalid checkpoint name {name!r}: expected a {SUFFIX!r} ending.")
        stem = os.path.join(self.directory, name[: -len(SUFFIX)])

        def write(tmp: str) -> None:
            try:
                with open(tmp, "xb") as f:
                    f.write(data)
            except OSError as e:
                reason = " ".join(str(e.strerror or e).split())[:300]
                raise OSError(
                    e.errno,
                    f"Cannot write a checkpoint to backup_dir={self.location!r}: {reason}. "
                    "Nothing was committed; the checkpoints already there are unchanged.",
                ) from None

        atomic.commit_file(stem, SUFFIX, write, lambda tmp: name)

    def delete(self, name: str) -> None:
        try:
            os.remove(self._path(name))
        except FileNotFoundError:
            pass

    def exists(self, name: str) -> bool:
        return os.path.exists(self._path(name))

    def describe(self, name: str) -> str:
        return os.path.join(self.location, name)

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def remove_all(self) -> None:
        if os.path.exists(self.directory):
            shutil.rmtree(self.directory)
