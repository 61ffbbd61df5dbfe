"""Data resumption: starting an epoch at batch `k` instead of 0.

Keras 3's `fit` always starts an epoch at batch 0. `skip_batches(k)` arranges
for the *next* training epoch that Keras starts to consume its first `k`
steps of data without training on them, keeping Keras's own step numbering
(callbacks see batches `k, k+1, ...`). With the host RNG restored to its
state at the start of the interrupted epoch, arrays (shuffled or not) and
`keras.utils.PyDataset` then yield exactly the batches the interrupted run
would have trained next.

A position "batch `k` of epoch `e`" only means something for the input it was
counted on: a mid-epoch checkpoint records that input (`input_record`: batch
size, number of samples or `len()`, steps per epoch), and a resumed `fit`
whose input differs is refused before any batch is trained
(`check_resumed_input`), instead of crashing inside Keras or silently training
the wrong samples.

Inputs with a *positioner* (a module listed in `POSITIONERS`) are started at
batch `k` without reading the batches before it (see `Positioner`); the
others are positioned by consuming those batches.

Inputs whose position cannot be rebuilt this way (a plain Python generator,
`tf.data`, a torch `DataLoader`) get one warning, and the interrupted epoch
runs again from its first batch, as with stock Keras; everything else
(weights, optimizer, learning rates, RNG) is still restored exactly.

A `steps_per_epoch` smaller than one pass over the data makes Keras carry its
data iterator over from one epoch to the next (40 samples, batch 4,
steps_per_epoch=6 gives epochs of 6, 4, 6, 4... batches). `begin_epoch`
tracks, for each epoch, where it starts in the pass (`pass_offset`) and the
host RNG at the start of that pass (which drew its shuffled order); a
checkpoint records both (`input_record`, `boundary_record`), and a resume
re-draws that pass's order with that RNG and starts at `pass_offset + batch`
(for arrays and a `PyDataset` without workers; a grain `MapDataset`, whose
order does not depend on the RNG, is sliced there). A grain `IterDataset`,
whose pass length nobody knows, restarts from its iterator's state, saved
also at an epoch end that the next epoch continues (see
`resumable_scheduler.data.grain`); its epoch that ends where the pass runs
out has no known length (`input_ran_out`). For other inputs it is not exact
(`warn_partial_epochs`).
"""

from __future__ import annotations

import base64
import itertools
import warnings
import weakref
from typing import Any, Callable, Protocol

import numpy as np

from resumable_scheduler import rng, snapshot
from resumable_scheduler._adapters import keras as ki
from resumable_scheduler._adapters import keras_pydataset as kp


_ACTIVE: "_SkipPatch | None" = None

# -- positioners: starting an input at batch k without reading batches 0..k-1 --

#: Modules that position one kind of input in O(1). Each defines the
#: functions of `Positioner`; `positioner_for` returns the first that
#: matches a data adapter.
POSITIONERS: tuple[str, ...] = (
    "resumable_scheduler.data.pydataset",
    "resumable_scheduler.data.grain",
    "resumable_scheduler.data.torch_loader",
)


class Positioner(Protocol):
    """How one kind of input (a module in `POSITIONERS`) is positioned.

    - `matches(adapter)`: True for the Keras data adapters it handles.
    - `start_at(adapter, batch, state)`: arranges for the *next* data
      iterator `adapter` makes (the next training epoch's) to yield batch
      `batch` first, without reading the batches before it. `state` is what
      `capture` returned for the checkpoint being resumed (None if it
      recorded nothing).
    - `capture(adapter, batch)`: JSON-safe state a mid-epoch checkpoint at
      batch `batch` of the running epoch needs to position this input again
      (a sampler's generator state, a grain iterator state), or None.
      Stored as `input["reader"]` (see `input_record`). At an epoch-end
      checkpoint it is called with `batch=0`: the state the *next* epoch
      starts from, or None if a fresh epoch needs none (`boundary_record`);
      a resume at batch 0 then calls `start_at(adapter, 0, state)`.
    """

    def matches(self, adapter: Any) -> bool: ...

    def start_at(self, adapter: Any, batch: int, state: Any) -> None: ...

    def capture(self, adapter: Any, batch: int) -> Any: ...


def positioner_for(adapter: Any) -> Positioner | None:
    """The positioner of `adapter`'s kind of input, or None."""
    import importlib

    for name in POSITIONERS:
        module = importlib.import_module(name)
        if module.matches(adapter):
            return module  # type: ignore[return-value]
    return None


def is_resumable(adapter: Any) -> bool:
    """True when a resumed epoch can start exactly at its batch: a positioner
    handles `adapter`, or its batch order is a function of the host RNG
    (arrays, `PyDataset`), so consuming the first batches lands there."""
    return positioner_for(adapter) is not None or isinstance(adapter, ki.resumable_adapter_classes())


class _SkipPatch:
    """One-shot patch of `EpochIterator._enumerate_iterator` (class level).

    Only the training epoch iterator of the `fit` of `model` whose callbacks
    include `owner` (the callback that made the skip) is affected, on its
    first epoch after `install`; the patch then removes itself. Iterators that
    `evaluate` or `predict` run inside that fit (from a callback) pass through
    untouched and leave the skip for the training epoch. A patch left behind
    by a `fit` that raised before its epoch started is dropped by the next
    `install`, or by the first iterator enumerated outside that fit, and never
    acts there.
    """

    def __init__(self, steps: int, on_unsupported: Callable[[Any], None],
                 after_skip: Callable[[], None] | None = None, model: Any = None,
                 owner: Any = None, reader_state: Any = None, carried: "_Pass | None" = None) -> None:
        self.carried = carried
        self.model = model
        self.owner = owner
        self.steps = steps
        self.reader_state = reader_state
        self.after_skip = after_skip
        self.on_unsupported = on_unsupported
        self.cls = ki.epoch_iterator_class()
        self.original: Any = None
        self.active = False

    def _mine(self, it: Any) -> bool | None:
        """True: `it` is the training iterator the skip was made for. False:
        an evaluate/predict iterator inside that fit (leave the skip in
        place). None: not that fit at all (the patch is stale)."""
        if self.model is None:
            return True
        if self.owner is not None:
            if not ki.in_fit_with(self.model, self.owner):
                return None
        elif not ki.in_fit_of(self.model):
            return None
        running = ki.running_epoch_iterator(self.model)
        # (None: a fit that keeps its iterator elsewhere; skip as before.)
        return running is None or it is running

    def install(self) -> None:
        global _ACTIVE
        if _ACTIVE is not None:
            _ACTIVE.uninstall()
        _ACTIVE = self
        patch = self
        # Read after dropping a stale patch, so this is Keras's own method.
        self.original = self.cls.__dict__["_enumerate_iterator"]

        def _enumerate_iterator(it: Any):
            mine = patch._mine(it)
            if mine is None:
                patch.uninstall()  # a stale patch: not the fit it was made for
            if not mine:
                yield from patch.original(it)
                return
            patch.uninstall()
            positioner = positioner_for(it.data_adapter)
            if positioner is None and not isinstance(it.data_adapter, ki.resumable_adapter_classes()):
                patch.on_unsupported(it.data_adapter)
                yield from patch.original(it)
                return
            if patch.carried is not None and _partial(it):
                # The epoch continues a pass that earlier epochs began.
                _rebuild_pass(it, positioner, patch.carried, patch.steps, patch.reader_state)
            elif positioner is not None:
                # Before the epoch makes its data iterator: it starts there.
                positioner.start_at(it.data_adapter, patch.steps, patch.reader_state)
            inner = patch.original(it)
            skipping = True
            for begin, end, iterator in inner:
                if begin < patch.steps:
                    if positioner is None:  # consume what the position skips
                        for _ in range(begin, end + 1):
                            next(iterator)
                    continue
                if skipping and patch.after_skip is not None:
                    patch.after_skip()
                skipping = False
                yield begin, end, iterator

        self.cls._enumerate_iterator = _enumerate_iterator
        self.active = True

    def uninstall(self) -> None:
        global _ACTIVE
        if self.active:
            self.cls._enumerate_iterator = self.original
            self.active = False
        if _ACTIVE is self:
            _ACTIVE = None


def _rebuild_pass(it: Any, positioner: Any, carried: "_Pass", steps: int, reader_state: Any) -> None:
    """Makes the epoch iterator `it` (about to start its epoch) continue the
    pass `carried` began: its order drawn with the host RNG of that pass's
    start, `carried.offset` batches of it consumed by earlier epochs, and the
    epoch's first `steps` batches to skip (a positioner starts the pass at
    `offset + steps` now; otherwise the skip consumes them). The host RNG is
    left as it was."""
    saved = rng.capture_host_rng()
    rng.restore_host_rng(*carried.rng)
    try:
        if positioner is not None:
            positioner.start_at(it.data_adapter, carried.offset + steps, reader_state)
            data_it = kp.new_data_iterator(it)
        else:
            data_it = kp.new_data_iterator(it)
            first = next(data_it)  # draws the pass's order (lazily, as Keras does)
            data_it = itertools.chain([first], data_it)
            for _ in range(carried.offset):
                next(data_it)
    finally:
        rng.restore_host_rng(*saved)
    kp.carry(it, data_it, carried.offset)


def skip_batches(
    steps: int,
    after_skip: Callable[[], None] | None = None,
    model: Any = None,
    owner: Any = None,
    reader_state: Any = None,
    record: dict[str, Any] | None = None,
    epoch: int | None = None,
) -> _SkipPatch:
    """Makes the next training epoch start at batch `steps` (see module doc).

    `after_skip` runs once the skipped batches are consumed, right before the
    first batch is trained (to put back RNG state that training consumes).
    With `model`, only the training epoch of that model's `fit` is affected,
    and with `owner` too, only of a `fit` whose callbacks include `owner`.
    `reader_state` is the checkpoint's `input["reader"]` (see `Positioner`).
    `record` is the checkpoint's `input` and `epoch` the resumed epoch: when
    that epoch continues a pass over the data begun by earlier epochs
    (`carried`), the pass is rebuilt (`steps` may then be 0).
    """
    carried = carried_pass(record, epoch)
    if carried is not None and model is not None:
        it = ki.running_epoch_iterator(model)
        if it is not None:
            _PASSES[it] = carried

    def warn(adapter: Any) -> None:
        warnings.warn(
            f"The training input ({type(adapter).__name__}) cannot be positioned "
            f"at batch {steps}: a Python generator or streaming input has no "
            "restorable position. The interrupted epoch runs again from its first "
            "batch (as with stock Keras); weights, optimizer, learning rates and "
            "RNG are still restored.",
            UserWarning,
            stacklevel=2,
        )

    patch = _SkipPatch(steps, warn, after_skip, model, owner, reader_state, carried)
    patch.install()
    return patch


# -- passes carried over from one epoch to the next ---------------------------


class _Pass:
    """Where epoch `epoch` starts in the pass over the data it belongs to
    (`offset` batches of it consumed by earlier epochs) and the host RNG
    `(meta, arrays)` at the start of that pass (None when unknown)."""

    __slots__ = ("epoch", "offset", "rng")

    def __init__(self, epoch: int | None, offset: int, state: Any) -> None:
        self.epoch = epoch
        self.offset = offset
        self.rng = state


#: The pass of the running epoch, per training `EpochIterator`.
_PASSES: "weakref.WeakKeyDictionary[Any, _Pass]" = weakref.WeakKeyDictionary()


def _pass_batches(it: Any) -> int | None:
    """Batches in one pass over the data of an `EpochIterator`: its
    adapter's `num_batches`, or, when Keras leaves that unknown, what the
    input's positioner reports (its optional `batches(adapter)`)."""
    batches = it.data_adapter.num_batches
    if batches is None:
        positioner = positioner_for(it.data_adapter)
        count = getattr(positioner, "batches", None)
        batches = count(it.data_adapter) if callable(count) else None
    return batches


def _partial(it: Any) -> bool:
    """True when `steps_per_epoch` is less than one pass over the data."""
    spe, batches = it.steps_per_epoch, _pass_batches(it)
    return bool(spe) and bool(batches) and spe < batches


def _exact_carry(adapter: Any) -> bool:
    """Inputs whose carried-over pass a resume re-creates exactly: arrays,
    a `PyDataset` read without workers (with workers, Keras's enqueuer
    itself re-shuffles and drops prefetched batches at each epoch end), and
    an input whose positioner knows its pass length (a grain `MapDataset`)."""
    if isinstance(adapter, ki.resumable_adapter_classes()):
        return not kp.uses_enqueuer(adapter)
    count = getattr(positioner_for(adapter), "batches", None)
    return callable(count) and count(adapter) is not None


def _encode_rng(state: Any) -> dict[str, Any]:
    meta, arrays = state
    return {
        "meta": meta,
        "arrays": {
            k: {"dtype": str(v.dtype), "shape": list(v.shape),
                "b64": base64.b64encode(np.ascontiguousarray(v).tobytes()).decode("ascii")}
            for k, v in arrays.items()
        },
    }


def _decode_rng(doc: Any) -> Any:
    try:
        arrays = {
            str(k): np.frombuffer(base64.b64decode(v["b64"], validate=True), dtype=np.dtype(v["dtype"])).reshape(
                [int(n) for n in v["shape"]])
            for k, v in doc["arrays"].items()
        }
        meta = doc["meta"]
        if not isinstance(meta, dict):
            raise TypeError("meta is not an object")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"Invalid saved pass RNG state (input.pass_rng): {e!r}.") from None
    # As every host RNG state read from a file: checked before it is used.
    rng.check_host_rng(meta, arrays, where="input.pass_rng")
    return meta, arrays


def carried_pass(record: Any, epoch: int | None = None) -> "_Pass | None":
    """The pass a checkpoint's `input` record says its epoch continues
    (`pass_offset` > 0, with the RNG of that pass's start), or None."""
    if not isinstance(record, dict):
        return None
    offset = record.get("pass_offset")
    if type(offset) is not int or offset <= 0 or not isinstance(record.get("pass_rng"), dict):
        return None
    return _Pass(epoch, offset, _decode_rng(record["pass_rng"]))


def begin_epoch(owner: Any, epoch: int) -> None:
    """At the start of each epoch of `owner`'s fit (after a resume set it
    up): notes where the epoch starts in its pass over the data and the host
    RNG of that pass's start, when `steps_per_epoch` is less than one pass
    (see module doc); then `warn_partial_epochs`."""
    model = ki.model_of(owner)
    it = ki.running_epoch_iterator(model) if model is not None else None
    if it is None:
        return
    # Before the epoch makes its data iterator: a positioner that records
    # where each epoch starts (a torch sampler's generator) sees this one.
    positioner_for(it.data_adapter)
    if not _partial(it):
        _PASSES.pop(it, None)
        return
    noted = _PASSES.get(it)
    if noted is None or noted.epoch != epoch:
        offset = kp.pass_offset(it)
        if offset == 0:  # a fresh pass: its order is drawn from the RNG as it is now
            state = rng.capture_host_rng()
        else:
            state = noted.rng if noted is not None else None
        _PASSES[it] = _Pass(epoch, offset, state)
    warn_partial_epochs(owner)


def _pass_items(it: Any, offset: int, state: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"pass_offset": int(offset)}
    shuffle = kp.adapter_shuffle(it.data_adapter)
    if shuffle is not None:
        out["shuffle"] = shuffle
    if offset and state is not None:
        out["pass_rng"] = _encode_rng(state)
    return out


# -- what a position depends on ----------------------------------------------


def input_record(model: Any, batch: int | None = None) -> dict[str, Any] | None:
    """What the batch positions of the running `model.fit` depend on (JSON),
    for a mid-epoch checkpoint, or None outside a fit.

    Keys: `adapter` (the Keras data adapter's class name), `steps` (batches
    per epoch, Keras's `params["steps"]`), `steps_per_epoch` (the `fit`
    argument, or None), `steps_per_execution`, `batches` (batches in one pass
    over the data: for a `PyDataset`, its `len()`), and for arrays `samples`
    and `batch_size`. With `batch` (the checkpoint's position in the running
    epoch), `reader` holds what the input's positioner needs (see
    `Positioner.capture`). When `steps_per_epoch` is less than one pass,
    `pass_offset` is where the running epoch started in its pass, `shuffle`
    the input's shuffle setting, and `pass_rng` (if the offset is not 0) the
    host RNG of the pass's start (see `begin_epoch`).
    """
    it = ki.running_epoch_iterator(model)
    if it is None:
        return None
    record = ki.epoch_input(it)
    noted = _PASSES.get(it)
    if noted is not None and _partial(it):
        record.update(_pass_items(it, noted.offset, noted.rng))
    positioner = positioner_for(it.data_adapter)
    if positioner is not None and batch is not None:
        reader = positioner.capture(it.data_adapter, batch)
        if reader is not None:
            record["reader"] = reader
    return record


def boundary_record(model: Any) -> dict[str, Any] | None:
    """For an epoch-end checkpoint of the running `model.fit`: the input
    record (as `input_record`) when the next epoch continues the running
    pass over the data (`pass_offset` > 0), or when the input's positioner
    records what the next epoch starts from (`capture(adapter, 0)`, as
    `reader`); else None (a fresh epoch does not depend on the input)."""
    it = ki.running_epoch_iterator(model)
    if it is None:
        return None
    # An input whose positioner keeps state across epochs (a torch sampler's
    # generator) records what the next epoch starts from.
    positioner = positioner_for(it.data_adapter)
    reader = positioner.capture(it.data_adapter, 0) if positioner is not None else None
    record = None
    if _partial(it):
        offset = kp.pass_offset(it)
        noted = _PASSES.get(it)
        if offset and noted is not None and noted.rng is not None:
            record = ki.epoch_input(it)
            record.update(_pass_items(it, offset, noted.rng))
    if reader is not None:
        record = record if record is not None else ki.epoch_input(it)
        record["reader"] = reader
    return record


def _location(owner: Any) -> tuple[str, str | None]:
    for attr in ("backup_dir", "directory"):
        path = getattr(owner, attr, None)
        if isinstance(path, str):
            return f"{attr}={path!r}", path
    return "the checkpoint", None


def _kind(record: dict[str, Any]) -> str:
    name = record.get("adapter")
    if name == "ArrayDataAdapter":
        return "arrays"
    if name == "PyDatasetAdapter":
        return "a PyDataset"
    return str(name)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str]]:
    """(what changed, how to get the old value back) for each input property
    that a position depends on and that differs."""
    out: list[tuple[str, str]] = []

    def both(key: str) -> bool:
        return old.get(key) is not None and new.get(key) is not None and old[key] != new[key]

    if old.get("adapter") != new.get("adapter") and old.get("adapter") and new.get("adapter"):
        out.append((f"input {_kind(old)} then, {_kind(new)} now", f"the same input ({_kind(old)})"))
    if both("shuffle"):
        out.append((f"shuffle={old['shuffle']!r} then, {new['shuffle']!r} now", f"shuffle={old['shuffle']!r}"))
    if both("batch_size"):
        out.append((f"batch_size={old['batch_size']} then, {new['batch_size']} now",
                    f"batch_size={old['batch_size']}"))
    if both("samples"):
        out.append((f"{old['samples']} samples then, {new['samples']} now",
                    f"the same {old['samples']} samples"))
    elif both("batches") and old.get("adapter") == "PyDatasetAdapter" == new.get("adapter"):
        out.append((f"len(PyDataset)={old['batches']} then, {new['batches']} now",
                    f"a PyDataset of length {old['batches']}"))
    if "steps_per_epoch" in old and old.get("steps_per_epoch") != new.get("steps_per_epoch"):
        def spe(v: Any) -> str:
            return "no steps_per_epoch" if v is None else f"steps_per_epoch={v}"

        then, now = old.get("steps_per_epoch"), new.get("steps_per_epoch")
        out.append((f"{spe(then)} then, {'none' if now is None else now} now", spe(then)))
    spe = new.get("steps_per_execution") or 1
    if old.get("steps_per_execution") not in (None, spe) and old.get("batch", 0) % spe:
        out.append((f"steps_per_execution={old['steps_per_execution']} then, {spe} now",
                    f"steps_per_execution={old['steps_per_execution']}"))
    if not out and both("steps"):
        out.append((f"{old['steps']} steps per epoch then, {new['steps']} now",
                    f"{old['steps']} steps per epoch"))
    return out


def check_resumed_input(owner: Any, doc: dict[str, Any]) -> None:
    """Raises ValueError if the running `fit` cannot continue the mid-epoch
    checkpoint `doc` exactly: its input is not the one the position was
    counted on (batch size, number of samples or `len()`, steps per epoch),
    or its epochs are too short for the position. Call before anything of
    the resumed epoch is trained; `owner` is the resuming callback (its
    directory is named in the message)."""
    position = doc.get(snapshot.POSITION) or {}
    batch = position.get("batch") or 0
    old = doc.get(snapshot.INPUT)
    carried = isinstance(old, dict) and type(old.get("pass_offset")) is int and old["pass_offset"] > 0
    if not batch and not carried:
        return  # an epoch boundary does not depend on the input, unless it continues a pass
    model = ki.model_of(owner)
    it = ki.running_epoch_iterator(model) if model is not None else None
    if it is None or not is_resumable(it.data_adapter):
        return  # no position to rebuild: the epoch reruns (see skip_batches)
    new = ki.epoch_input(it)
    shuffle = kp.adapter_shuffle(it.data_adapter)
    if shuffle is not None:
        new["shuffle"] = shuffle
    params = getattr(owner, "params", None) or {}
    if params.get("steps") is not None:
        new["steps"] = params["steps"]
    where, path = _location(owner)
    epoch = position.get("epoch")
    kind = "mid-epoch checkpoint" if batch else "checkpoint"
    start = f"Cannot resume from the {kind} in {where} (epoch {epoch}, batch {batch})"
    delete = f"delete {path!r}" if path else "delete it"
    if isinstance(old, dict):
        diffs = _differences({**old, "batch": batch}, new)
        if diffs:
            raise ValueError(
                f"{start}: the training input is not the one it was written with: "
                + "; ".join(d for d, _ in diffs)
                + ". Its position counts batches of that input, so this fit would "
                "train the wrong samples. Rerun with "
                + ", ".join(w for _, w in diffs)
                + f" as when the checkpoint was written, or {delete} to start over. "
                "Nothing was changed."
            )
    if not batch:
        return
    # Also for checkpoints that predate the record: a position past the end
    # of this fit's epochs cannot be right.
    steps = [s for s in (new.get("steps"), new.get("batches")) if isinstance(s, int)]
    spe, batches = new.get("steps_per_epoch"), new.get("batches")
    if (isinstance(old, dict) and spe and batches and spe > batches and batch >= batches):
        # Same input; Keras ends such epochs after one pass, and a checkpoint
        # written before the epoch-length fix (`steps_in_epoch`) sits there.
        raise ValueError(
            f"{start}: steps_per_epoch={spe} is more than one pass over the "
            f"training data ({batches} batches), so Keras ends each epoch after "
            f"{batches} batches and that position is the end of an epoch whose "
            f"epoch-end hooks never ran. Delete {path!r} to start over, and use "
            f"steps_per_epoch={batches} (or none). Nothing was changed."
            if path else
            f"{start}: steps_per_epoch={spe} is more than one pass over the "
            f"training data ({batches} batches); that position is the end of an "
            "epoch. Delete the checkpoint to start over. Nothing was changed."
        )
    if steps and batch >= min(steps):
        raise ValueError(
            f"{start}: this fit's epochs have only {min(steps)} batches, so the "
            "training input is not the one the checkpoint was written with (batch "
            "size, number of samples or steps_per_epoch changed). Rerun with the "
            f"input of the interrupted run, or {delete} to start over. "
            "Nothing was changed."
        )


def steps_in_epoch(owner: Any) -> int | None:
    """The number of batches the running epoch of `owner`'s fit trains:
    `params["steps"]`, except when `steps_per_epoch` is more than one pass
    over the data, where Keras ends each epoch after one pass (and warns that
    the input ran out of data). None when unknown.

    When `steps_per_epoch` is set but the pass length is not known (a grain
    `IterDataset`), an epoch may end earlier, where the pass runs out (see
    `input_ran_out`)."""
    params = getattr(owner, "params", None) or {}
    steps = params.get("steps")
    model = ki.model_of(owner)
    it = ki.running_epoch_iterator(model) if model is not None else None
    if it is None:
        return steps
    record = ki.epoch_input(it)
    spe, batches = record.get("steps_per_epoch"), _pass_batches(it)
    if spe and batches and spe > batches:
        return batches if steps is None else min(steps, batches)
    noted = _PASSES.get(it)
    if noted is not None and _partial(it):
        # A carried-over pass: the epoch ends where the pass does.
        left = batches - noted.offset
        return left if steps is None else min(steps, left)
    return steps


def input_ran_out(owner: Any) -> bool:
    """Whether the epoch of `owner`'s fit that just ended was cut short by
    its input running out: `steps_per_epoch` set over a pass of unknown
    length (a grain `IterDataset` carried across epochs). Its last batch
    could not know it was the last, so its end is an epoch end of unknown
    length, which the callbacks commit as the boundary it is. (Call at the
    epoch's end.)"""
    model = ki.model_of(owner)
    it = ki.running_epoch_iterator(model) if model is not None else None
    if it is None or not it.steps_per_epoch or _pass_batches(it) is not None:
        return False
    from resumable_scheduler._adapters import keras_grain as kg

    return kg.input_ran_out(it)


def epoch_steps(owner: Any) -> int | None:
    """The length of the running epoch as `steps_in_epoch` found it when the
    epoch began (stored by `ResumeMixin.on_epoch_begin`), else
    `params["steps"]`: what "the last batch of the epoch" means."""
    steps = getattr(owner, "_epoch_steps", None)
    if steps is not None:
        return steps
    params = getattr(owner, "params", None) or {}
    return params.get("steps")


_WARNED: "weakref.WeakSet[Any]" = weakref.WeakSet()


def warn_partial_epochs(owner: Any) -> None:
    """Warns once per `fit` when its `steps_per_epoch` is smaller than one
    pass over the data and its input is one whose carried-over pass a resume
    cannot re-create (see `_exact_carry`: a `PyDataset` with workers, whose
    enqueuer Keras restarts with a fresh order at every epoch end): Keras
    then continues each epoch where the previous one stopped in the data (40
    samples, batch 4, steps_per_epoch=6 gives epochs of 6, 4, 6, 4...
    batches), and a resume, at an epoch boundary or mid-epoch, starts a fresh
    pass instead. Arrays and a `PyDataset` without workers resume exactly
    and do not warn."""
    model = ki.model_of(owner)
    it = ki.running_epoch_iterator(model) if model is not None else None
    if it is None or it in _WARNED or _exact_carry(it.data_adapter):
        return
    record = ki.epoch_input(it)
    spe, batches = record.get("steps_per_epoch"), _pass_batches(it)
    if not spe or not batches or spe >= batches:
        return
    _WARNED.add(it)
    warnings.warn(
        f"steps_per_epoch={spe} is less than one pass over the training data "
        f"({batches} batches): Keras then starts each epoch where the previous "
        "one stopped in the data, and a resumed run starts a fresh pass instead, "
        "so after an interruption it trains other batches than an uninterrupted "
        f"run would. For an exact resume, use steps_per_epoch={batches} (or "
        "none), or make the data one epoch long.",
        UserWarning,
        stacklevel=3,
    )
