"""Atomic commit of a checkpoint file, and the one-writer lock.

A checkpoint is written as `<stem>.tmp-XXXXXXXX<suffix>`, flushed and
fsynced, then renamed onto its final name (atomic on POSIX) and the parent
directory is fsynced. A kill at any instant leaves either no new checkpoint
(plus a temporary that the next start removes) or a whole one. A finished
checkpoint is never modified in place.

Concurrency contract: one writer per directory, enforced by `DirLock`
(an `fcntl.flock` lock, released by the kernel when its process dies, so a
dead process never blocks). Not thread-safe.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import warnings
from collections.abc import Callable

TMP_MARK = ".tmp-"
_HELD: dict[str, int] = {}


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(
    stem: str,
    suffix: str,
    write: Callable[[str], None],
    final_name: Callable[[str], str],
) -> str:
    """Runs `write(tmp_path)`, fsyncs, then renames it atomically into place.

    The temporary is `<stem>.tmp-XXXXXXXX<suffix>` (Keras insists on the
    `.weights.h5` ending); the final name is `final_name(tmp_path)` in the same
    directory (it may carry a checksum of the written file). Returns the
    final path. Raises `FileExistsError` rather than overwrite a checkpoint.
    """
    parent = os.path.dirname(os.path.abspath(stem))
    tmp = f"{stem}{TMP_MARK}{secrets.token_hex(4)}{suffix}"
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        final = os.path.join(parent, final_name(tmp))
        if os.path.exists(final):
            raise FileExistsError(f"Refusing to overwrite the finished checkpoint {final!r}.")
        os.rename(tmp, final)
        fsync_dir(parent)
    except BaseException:
        # The temporary goes on every error path; failing to remove it (the
        # next start removes it) must not hide the error that got us here.
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        except OSError as e:
            warnings.warn(f"Could not remove the unfinished checkpoint {tmp!r}: {e}.", UserWarning, stacklevel=2)
        raise
    return final


def remove_stale_temporaries(directory: str) -> list[str]:
    """Deletes leftover `*.tmp-*` entries (an interrupted commit), with a warning."""
    removed = []
    for name in sorted(os.listdir(directory)):
        if TMP_MARK in name:
            path = os.path.join(directory, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(name)
    if removed:
        warnings.warn(
            f"Removed {len(removed)} unfinished checkpoint temporaries from "
            f"{directory!r} (left by an interrupted write): {', '.join(removed)}.",
            UserWarning,
            stacklevel=2,
        )
    return removed


class DirLock:
    """Exclusive, process-level lock on a directory (`<dir>/.lock`).

    A second process gets `RuntimeError`; a lock whose process died is free
    again. Within one process the lock is re-entrant (a rerun of `fit` after
    an exception may take it over).
    """

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, ".lock")

    def acquire(self) -> None:
        if self.path in _HELD:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = ""
            try:
                owner = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            except OSError:
                pass
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RuntimeError(
                    f"Another process is training with backup_dir={self.directory!r} "
                    f"(lock held by {owner or 'an unknown process'}). Two runs cannot "
                    "share one backup_dir: give this run its own directory, or stop "
                    "the other one first."
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        _HELD[self.path] = fd

    def release(self) -> None:
        fd = _HELD.pop(self.path, None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
