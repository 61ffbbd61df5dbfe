"""`OrbaxStore`: one Orbax checkpoint directory, as `rs.OrbaxCheckpoint` uses it.

Every Orbax call of the callback goes through here: opening the Orbax
`Checkpointer`, the newest usable step (with fallback to an older one, written
once), restoring a step's model state tree and our `resumable_arrays`,
saving a step (in the background or not), waiting, pruning (Orbax's
`LatestN` preservation policy) and closing. The callback only decides
*when* to save and *what* (the model state and its resumable state).
The layout of a step is `storage.orbax_dir`'s.

Saving in the background, on one JAX process (the common case), blocks the
training loop only for a host copy of the state: the Orbax save itself
(Orbax's own fixed per-save cost: handler set-up, its threads and asyncio
loops, the OCDBT merge, finalization, deleting the step that `max_to_keep`
drops) runs on a writer thread of this store, one save at a time. A save
that comes while the previous one is still being written waits for it, as
Orbax does. Several JAX processes save as Orbax's own asynchronous save
does (arrays there may live on other processes, and every process must
make the same Orbax calls): from the calling thread, each save waiting for
the previous one.

A background write still running when the program exits (a `fit` that
raised) is finished before the interpreter's thread pools shut down; a
failure is then reported in one line.

>>> import json, tempfile, numpy as np
>>> from resumable_scheduler.protocol import encode_envelope
>>> def state(step):
...     position = {"epoch": step, "batch": 0, "step": step}
...     return json.loads(encode_envelope({}, {"position": position, "rng": {}}))
>>> d = tempfile.mkdtemp()
>>> store = OrbaxStore(d, max_to_keep=2)
>>> store.open()
>>> for step in (1, 2, 3):
...     store.save(step, {"w": np.full(3, step, np.float32)}, state(step), {"a": np.arange(2)})
>>> store.wait(); store.steps()
[2, 3]
>>> step, doc = store.newest_usable(); step, doc["position"]["epoch"]
(3, 3)
>>> tree, arrays = store.load(3, {"w": np.zeros(3, np.float32)})
>>> tree["w"].tolist(), arrays["a"].tolist()
([3.0, 3.0, 3.0], [0, 1])
>>> store.close()
"""

from __future__ import annotations

import queue
import sys
import threading
import warnings
from typing import Any

import numpy as np

from resumable_scheduler._adapters import runtime
from resumable_scheduler.storage import orbax_dir as layout

#: The store each directory has open in this process. A `fit` that ended by
#: an exception never closed its store: its background write must finish
#: before a new store cleans up temporaries in the same directory, and
#: before the program exits (`_finish_at_exit`).
_OPEN: dict[str, "OrbaxStore"] = {}
_EXIT_HOOK: list[bool] = []  # registered once
_EXITING: list[bool] = []  # the program is ending: _finish_at_exit has run


def exiting() -> bool:
    """True once the program's exit has closed every open store."""
    return bool(_EXITING)


class OrbaxStore:
    """The step folders of one directory, read and written through Orbax.

    Args:
        directory: An absolute path or a `gs://` URL.
        max_to_keep: Number of newest steps kept (None: all).

    Not thread-safe: call it from one thread (the writer thread is its own).
    """

    def __init__(self, directory: str, max_to_keep: int | None = None) -> None:
        self.location = directory
        self.max_to_keep = max_to_keep
        #: The Orbax `Checkpointer` while open (None when closed).
        self.checkpointer: Any = None
        self.ctx: Any = None
        self.futures: list[Any] = []  # Orbax's responses of saves in flight
        self.writer: threading.Thread | None = None  # started at the first background save
        self.jobs: Any = None  # its queue of (step, payload); None stops it
        self.idle = threading.Event()  # set when no save is handed to the writer
        self.idle.set()
        self.write_error: BaseException | None = None
        #: Seconds the caller was blocked in each `save`, split by phase
        #: (`copy`, `wait_previous`, `orbax`), newest last (the benchmark reads it).
        self.timings: list[dict[str, float]] = []

    # -- open / close ---------------------------------------------------------

    def open(self) -> None:
        """Opens the directory: finishes and closes a store this process left
        open on it (a failure of its last write is a warning), makes the
        directory if needed and removes unfinished step folders."""
        self.close()
        previous = _OPEN.pop(self.location, None)
        if previous is not None:
            try:
                previous.close()  # waits for its writes
            except Exception as e:  # noqa: BLE001 - the old run already failed
                warnings.warn(f"An earlier write to {self.location!r} failed: {e}", UserWarning, stacklevel=4)
        ocp = layout.import_orbax().v1
        policy = None
        if self.max_to_keep is not None:
            policy = ocp.training.preservation_policies.LatestN(self.max_to_keep)
        self.ctx = layout.context()
        self.checkpointer = ocp.training.Checkpointer(
            self.location,
            context=self.ctx,
            preservation_policy=policy,
            cleanup_tmp_directories=True,
        )
        _OPEN[self.location] = self
        _register_exit_hook()

    def close(self) -> None:
        """Waits for the writes in flight and closes (idempotent). Raises the
        error of a write that failed."""
        ckptr = self.checkpointer
        if ckptr is None:
            return
        try:
            self._join_writer(stop=True)
        finally:
            self.checkpointer = None
            self.futures = []
            if _OPEN.get(self.location) is self:
                del _OPEN[self.location]
            ckptr.close()

    # -- reading --------------------------------------------------------------

    def steps(self) -> list[int]:
        """The complete steps, oldest first."""
        return sorted(c.step for c in self.checkpointer.checkpoints)

    def newest_usable(self) -> tuple[int, dict[str, Any]] | None:
        """The newest step whose resumable state reads, and that state.

        A newer step whose state does not read is skipped, with a warning
        naming it. None when the directory has no step.

        Raises:
            ValueError: the newest step was written by stock
                `keras.callbacks.OrbaxCheckpoint` (no resumable state), or no
                step's state reads.
        """
        errors: list[str] = []
        for step in reversed(self.steps()):
            try:
                doc = layout.read_state_item(self.location, step)
            except ValueError as e:
                errors.append(str(e))
                continue
            if doc is None:
                raise ValueError(
                    f"The newest step ({step}) in directory={self.location!r} has no "
                    "resumable state: it was written by keras.callbacks.OrbaxCheckpoint. "
                    "rs.OrbaxCheckpoint cannot tell where to resume from it; use a new "
                    "directory (keras.models.load_model can still read this one)."
                )
            if errors:
                warnings.warn(
                    f"The newest checkpoint could not be read ({errors[0]}); resuming "
                    f"from step {step}.",
                    UserWarning,
                    stacklevel=4,
                )
            return step, doc
        if errors:
            raise ValueError(
                f"No usable checkpoint in directory={self.location!r}: " + "; ".join(errors)
                + ". Nothing was changed. To start training over from scratch, delete "
                f"{self.location!r} (or its step folders)."
            )
        return None

    def load(self, step: int, abstract_tree: Any) -> tuple[Any, dict[str, Any]]:
        """The model state tree of `step` (as `abstract_tree` describes it:
        shapes, dtypes, shardings) and its `resumable_arrays` item (a dict)."""
        with self.ctx:
            loaded = self.checkpointer.load_checkpointables(step, {layout.PYTREE: abstract_tree, layout.ARRAYS: None})
        return loaded[layout.PYTREE], loaded[layout.ARRAYS] or {}

    # -- writing --------------------------------------------------------------

    def save(
        self,
        step: int,
        tree: Any,
        state: dict[str, Any],
        arrays: dict[str, Any],
        model_config: str | None = None,
        assets: Any = None,
        background: bool = True,
        writer_thread: bool = True,
    ) -> None:
        """Saves step `step`: the model state `tree` (`pytree`, as stock),
        the JSON `state` (`resumable_state`), the `arrays`
        (`resumable_arrays`), and the `model_config` JSON and `assets` that
        `keras.models.load_model` reads (when not None).

        With `background`, returns once the arrays are copied (see the
        module doc); the write's error, if any, is raised by the next
        `save`, `wait` or `close`. `writer_thread=False` leaves a background
        save to Orbax itself (closing `checkpointer` then finishes it). Steps
        beyond `max_to_keep` are deleted once the step is complete.
        """
        payload: dict[str, Any] = {layout.PYTREE: tree, layout.STATE: state, layout.ARRAYS: arrays}
        if model_config is not None:
            payload[layout.MODEL_CONFIG] = {"config": model_config}
        if assets is not None:
            payload[layout.ASSETS] = assets
        times: dict[str, float] = {}
        clock = _Clock(times)
        if background and writer_thread and _single_jax_process():
            with clock("wait_previous"):
                self._join_writer()
            with clock("copy"):
                payload = _snapshot(payload)
            with clock("orbax"):
                self._submit(step, payload)
        else:
            with clock("orbax"), self.ctx:
                if background:
                    future = self.checkpointer.save_checkpointables_async(step, payload, force=True)
                    if future is not None:
                        self.futures.append(future)
                else:
                    self.checkpointer.save_checkpointables(step, payload, force=True)
        self.timings.append(times)
        del self.timings[:-100]

    def wait(self) -> None:
        """Blocks until every write in flight has finished (on every process);
        raises the error of one that failed."""
        self._join_writer()
        futures, self.futures = self.futures, []
        for f in futures:
            f.result()
        if self.checkpointer is not None:
            self.checkpointer.wait()

    def _submit(self, step: int, payload: dict[str, Any]) -> None:
        """Hands one save to the writer thread (started at the first)."""
        if self.writer is None:
            self.jobs = queue.SimpleQueue()
            self.writer = threading.Thread(target=self._write_loop, args=(self.jobs,), name="rs-orbax-writer", daemon=True)
            self.writer.start()
        self.idle.clear()
        self.jobs.put((step, payload))

    def _write_loop(self, jobs: "queue.SimpleQueue[Any]") -> None:
        """The writer thread: whole Orbax saves (finalized and pruned), one at a time."""
        ctx = layout.context()  # its own: a context is entered per thread
        while (job := jobs.get()) is not None:
            step, payload = job
            try:
                with ctx:
                    self.checkpointer.save_checkpointables(step, payload, force=True)
            except BaseException as e:  # noqa: BLE001 - raised on the caller's thread
                self.write_error = e
            finally:
                del job, payload
                self.idle.set()

    def _join_writer(self, stop: bool = False) -> None:
        """Waits for the save handed to the writer thread, if any (and with
        `stop`, ends the thread); raises its error."""
        self.idle.wait()
        if stop and self.writer is not None:
            writer, self.writer = self.writer, None
            self.jobs.put(None)
            writer.join()
        error, self.write_error = self.write_error, None
        if error is not None:
            raise error


class _Clock:
    """`with clock(name):` adds the seconds spent to `times[name]`."""

    def __init__(self, times: dict[str, float]) -> None:
        self.times = times

    def __call__(self, name: str) -> "_Phase":
        return _Phase(self.times, name)


class _Phase:
    def __init__(self, times: dict[str, float], name: str) -> None:
        self.times, self.name = times, name

    def __enter__(self) -> None:
        import time

        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        import time

        self.times[self.name] = self.times.get(self.name, 0.0) + time.perf_counter() - self.start


def _single_jax_process() -> bool:
    """True on the JAX backend with one process: arrays are all on this host."""
    if "jax" not in sys.modules:
        return False
    import keras

    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.process_count() == 1


def _snapshot(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with every JAX array replaced by a copy that the training
    step that follows cannot change (it donates, that is reuses, the
    variables' buffers), for the writer thread to save later.

    The copy is made on the arrays' own devices (dispatched asynchronously,
    so the caller barely waits; the writer thread then saves it as stock
    saves the variables) when every device has room for twice the state;
    otherwise the arrays are copied to host memory (what Orbax's own
    asynchronous save does before returning).
    """
    import jax

    leaves = [x for x in jax.tree_util.tree_leaves(payload) if isinstance(x, jax.Array)]
    if _room_on_devices(leaves):
        return jax.tree_util.tree_map(lambda x: x.copy() if isinstance(x, jax.Array) else x, payload)
    host = jax.device_get(payload)  # starts every transfer before waiting for one

    def own(x: Any) -> Any:
        if isinstance(x, np.ndarray) and not x.flags.owndata:
            return np.array(x, copy=True)
        return x

    return jax.tree_util.tree_map(own, host)


def _room_on_devices(leaves: list[Any]) -> bool:
    """True if each device the arrays live on has free memory for two more
    copies of all of them (devices that report no memory statistics, such
    as the CPU, share the host's memory: always true)."""
    total = sum(int(x.nbytes) for x in leaves)
    devices = {d for x in leaves for d in x.sharding.device_set}
    for device in devices:
        try:
            stats = device.memory_stats()
        except Exception:  # noqa: BLE001 - a platform without statistics
            stats = None
        if not stats or "bytes_limit" not in stats:
            continue
        if stats["bytes_limit"] - stats.get("bytes_in_use", 0) < 2 * total:
            return False
    return True


def _register_exit_hook() -> None:
    """Makes the program finish every background write before it exits.

    A `fit` that raises skips `on_train_end`, so a background save may still
    be running when the exception ends the program. Orbax's writer threads
    then fail one by one ("cannot schedule new futures after interpreter
    shutdown"), each with a page of traceback, and the step is left
    unfinished. `_adapters.runtime` runs `_finish_at_exit` before the
    thread pools shut down (`atexit` would run after them).
    """
    if _EXIT_HOOK:
        return
    _EXIT_HOOK.append(True)
    runtime.register_before_thread_pools_shut_down(_finish_at_exit)


def _finish_at_exit() -> None:
    """Waits for the writes of every store still open; a write that failed is
    reported in one line, without the writer threads' tracebacks."""
    _EXITING.append(True)
    for directory, store in list(_OPEN.items()):
        _OPEN.pop(directory, None)
        try:
            store.close()
        except BaseException as e:  # noqa: BLE001 - reported in one line at exit
            print(
                f"rs.OrbaxCheckpoint: a background save to {directory!r} was still "
                f"running when the program ended, and failed: {type(e).__name__}: "
                f"{str(e)[:500]}. The newest complete step before it is intact.",
                file=sys.stderr,
            )
