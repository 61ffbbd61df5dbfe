"""Background checkpoint writes: one writer thread per location at a time.

A background save has two halves. In the training thread, the state is
copied to host memory once (a `HostCopier` copies every value Keras's
saving would write, the envelope and training arrays included, into the
arrays of the previous snapshot); training then goes on while a `Writer`
thread serializes those copies and commits them through the location's
`Store`. The next save of the same location waits for the previous write
first, so at most one write (one extra host copy of the state) is in
flight per location.

`_PENDING` maps each location (a local directory's absolute path, or a
URL) to its newest `Writer`, across all callbacks of the process: a new
callback on the same location waits for it before it reads (a `fit` ended
by an error of the model or the data leaves its last write running; a
rerun must see it committed).
Writer threads are not daemons, so the interpreter finishes them before it
exits; a failure nobody collected is then printed to stderr.

>>> w = submit("/tmp/example", lambda: None)
>>> w.wait() is None and wait_for("/tmp/example") is None
True
"""

from __future__ import annotations

import atexit
import sys
import threading
from typing import Any, Callable

import keras
import numpy as np

#: Location -> its newest writer (finished or not).
_PENDING: dict[str, "Writer"] = {}
#: Re-entrant: a garbage-collection finalizer (a dropped fit's clean-up)
#: may wait for a write while this thread holds it.
_GUARD = threading.RLock()
_EXIT_HOOK: list[bool] = []


def host_copy(value: Any) -> np.ndarray:
    """A host NumPy copy of `value` (a Keras variable, a backend tensor or a
    NumPy array) that nothing else refers to, so training can change the
    original right away. One copy: a fresh array from the backend's
    conversion (JAX's `np.array`) is kept as is; a view of the backend's
    memory (a PyTorch CPU tensor's `.numpy()`, JAX's zero-copy `np.asarray`)
    and any NumPy array handed in are copied."""
    if isinstance(value, np.ndarray):
        return np.array(value, copy=True)
    arr = keras.ops.convert_to_numpy(value)
    if not isinstance(arr, np.ndarray):
        return np.array(arr, copy=True)
    if arr.base is not None or not arr.flags.owndata or not arr.flags.writeable:
        arr = np.array(arr, copy=True)
    return arr


class HostCopier:
    """The `copy` function of one snapshot (see `_adapters.keras.record_weights`).

    Each value is copied into the array at the same place of the previous
    snapshot (`spare`, whose write has finished) when its shape and dtype
    match, else into a new array: a save after the first allocates nothing,
    and the process holds one host copy of the state between saves, not a
    new one per save. `arrays` lists this snapshot's arrays, in order, to be
    handed on as the next one's `spare` once its write is done.
    """

    def __init__(self, spare: list[np.ndarray] | None = None) -> None:
        self._spare = list(spare or ())
        self.arrays: list[np.ndarray] = []

    def __call__(self, value: Any) -> np.ndarray:
        i = len(self.arrays)
        spare = self._spare[i] if i < len(self._spare) else None
        out = self._copy(value, spare)
        self.arrays.append(out)
        return out

    @staticmethod
    def _copy(value: Any, spare: np.ndarray | None) -> np.ndarray:
        src: np.ndarray | None = None
        if isinstance(value, np.ndarray):
            src = value
        else:
            tensor = getattr(value, "value", value)  # a Keras variable's backend tensor
            try:
                # A view where the backend allows one (JAX and PyTorch on CPU),
                # else the device-to-host transfer itself.
                src = np.asarray(tensor)
            except Exception:  # noqa: BLE001 - e.g. a PyTorch tensor that requires grad
                src = None
            if src is None or src.dtype == object:
                return host_copy(value)
        if spare is not None and spare.shape == src.shape and spare.dtype == src.dtype:
            np.copyto(spare, src)
            return spare
        return np.array(src, copy=True)


class Writer:
    """One background write: `job()` runs on its own (non-daemon) thread."""

    def __init__(self, key: str, job: Callable[[], None]) -> None:
        self.key = key
        self._job: Callable[[], None] | None = job
        self._error: BaseException | None = None
        self._collected = False
        #: The host arrays the write serializes (the writer's owner hands
        #: them to the next snapshot once the write is done).
        self.arrays: list[np.ndarray] = []
        self._thread = threading.Thread(target=self._run, name=f"rs-backup-writer {key}", daemon=False)

    def _run(self) -> None:
        try:
            job, self._job = self._job, None
            job()  # type: ignore[misc]
        except BaseException as e:  # noqa: BLE001 - handed to the training thread
            self._error = e
        finally:
            job = None  # frees the host copy before the next save is taken

    def start(self) -> None:
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> BaseException | None:
        """Waits for the write; returns its error the first time it is asked
        (None if it succeeded, or once its error was returned)."""
        self.join()
        with _GUARD:
            if _PENDING.get(self.key) is self:
                del _PENDING[self.key]
            if self._collected or self._error is None:
                return None
            self._collected = True
            return self._error

    def join(self) -> None:
        """Waits for the write without collecting its error."""
        if self._thread is not threading.current_thread() and self._thread.ident is not None:
            self._thread.join()


def submit(key: str, job: Callable[[], None]) -> Writer:
    """Starts `job` as the write of location `key` (wait for the previous
    write of `key` first: one at a time per location)."""
    _register_exit_hook()
    writer = Writer(key, job)
    with _GUARD:
        _PENDING[key] = writer
    writer.start()
    return writer


def wait_for(key: str) -> BaseException | None:
    """Waits for the newest write of location `key`, from any callback of
    this process; returns its error if nobody collected it yet."""
    with _GUARD:
        writer = _PENDING.get(key)
    if writer is None:
        return None
    return writer.wait()


def join_for(key: str) -> None:
    """Waits for the newest write of location `key`, leaving its error to
    be collected."""
    with _GUARD:
        writer = _PENDING.get(key)
    if writer is not None:
        writer.join()


def _register_exit_hook() -> None:
    if not _EXIT_HOOK:
        _EXIT_HOOK.append(True)
        # atexit functions run after the interpreter has joined the
        # (non-daemon) writer threads: every write is finished by then.
        atexit.register(_report_at_exit)


def _report_at_exit() -> None:
    for key in list(_PENDING):
        error = wait_for(key)
        if error is not None:
            print(
                f"rs.BackupAndRestore: a background save to {key!r} failed after its "
                f"fit ended: {type(error).__name__}: {str(error)[:500].rstrip('.')}. The newest "
                "checkpoint before it is intact.",
                file=sys.stderr,
            )
