"""The checkpoint snapshot: its schema and its codec, in one module.

Everything besides the model variables that decides what training does next
is one *snapshot*: the position (epoch, batch, optimizer step), the host
RNGs, Keras's seed generators, the metric accumulators of an epoch in
progress, and the state (JSON) and arrays of every resumable callback.
Every storage back end stores the same two parts of it:

- the *envelope*: one JSON document (`encode_envelope` / `decode_envelope`),
  versioned (`ENVELOPE_VERSION`, older versions migrated by `MIGRATIONS`),
  validated on read as untrusted input (bounded depth, integers within
  int64, bounded echo in messages);
- the *arrays*: a flat `name -> ndarray` mapping, with the names given by
  `array_name` (`training::<name>` for the training state,
  `arrays::<state_key>::<name>` for a callback's), stored as HDF5 datasets
  in `.weights.h5`/`.keras` files and backups, and as an Orbax item in
  Orbax steps.

This module does not import Keras (`capture` in `training_state` builds a
`Snapshot` from a live model). The names of the envelope's items are the
constants below; nothing else spells them.

>>> snap = Snapshot(position=Position(epoch=3, batch=2, step=14),
...                 callbacks={"LearningRateScheduler": {"epoch": 3}},
...                 rng={"python": [3]})
>>> back = Snapshot.decode(snap.encode())
>>> back.position, back.resume_epoch()
(Position(epoch=3, batch=2, step=14), 3)
>>> decode_envelope(b'{"format": "other"}')
Traceback (most recent call last):
...
ValueError: Invalid resumable-state envelope. Received: format='other'. Expected format='resumable_scheduler'.
"""

from __future__ import annotations

import dataclasses
import json
import re
import reprlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# -- the envelope's items -------------------------------------------------------

#: Where training stands: `{"epoch", "batch", "step"}` (see `Position`).
POSITION = "position"
#: Host RNG scalars at the start of the position's epoch (re-creates its
#: batch order); their arrays are `training::<name>`.
RNG = "rng"
#: Host RNG scalars at a mid-epoch position itself (arrays `training::now_*`).
RNG_NOW = "rng_now"
#: What a mid-epoch position depends on (batch size, samples, steps; see
#: `data.input_record`).
INPUT = "input"
#: Facts about the run (`{"epochs": N}`).
RUN = "run"
#: An epoch-end checkpoint's logs, for callbacks whose `on_epoch_end` a
#: resumed run replays.
REPLAY = "replay"
#: Every resumable callback's JSON state, by `state_key`.
CALLBACKS = "callbacks"
#: Multi-process Orbax steps: each process's host RNGs.
RNG_BY_PROCESS = "rng_by_process"
#: Multi-process backups: how many processes wrote it, and each one's own
#: part (host RNGs, input record; see `processes.encode_part`).
PROCESSES = "processes"
PER_PROCESS = "per_process"
#: Orbax steps: the variable paths saved, by group.
VARIABLES = "variables"
#: The run's timeline: a segment per process that trained it (see
#: `timeline.py`; absent in checkpoints written before it: empty).
TIMELINE = "timeline"
#: The state key of `rs.LearningRateScheduler` (its `epoch` is the fallback
#: resume epoch of a file without a position).
SCHEDULER_KEY = "LearningRateScheduler"
#: The items a snapshot holds beside the callbacks, in envelope order.
ITEMS = (POSITION, RNG, RNG_NOW, INPUT, RUN, REPLAY, RNG_BY_PROCESS, PROCESSES, PER_PROCESS, VARIABLES, TIMELINE)

#: Array names: the training state's arrays, and a callback's.
TRAINING_PREFIX = "training::"
ARRAY_PREFIX = "arrays::"
#: The prefix of the mid-epoch host RNG arrays (`rng_now`) among the training arrays.
NOW_PREFIX = "now_"

#: The `format` item of every envelope.
ENVELOPE_FORMAT = "resumable_scheduler"
#: The version this library writes. Every older version is read through
#: `MIGRATIONS`, one step at a time, so a checkpoint once written stays
#: loadable (the v1 fixtures in fixtures/ are read by the tests forever).
#: A new item that older readers can ignore (`TIMELINE`, say: absent means
#: empty) does not change it, so that older versions still read the files.
ENVELOPE_VERSION = 1
#: The largest count (epoch, batch, step) a state may hold: what an int64,
#: the widest `optimizer.iterations`, can hold. A crafted `10**30` would pass
#: as a Python int and fail later, inside `fit`, as an `OverflowError`.
MAX_INT = 2**63 - 1
#: The deepest nesting of JSON arrays and objects an envelope may have (ours
#: nest 4 levels deep). Deeper documents are refused before anything walks them.
MAX_DEPTH = 32
#: Values echoed back in error messages are cut to this many characters: a
#: crafted file may hold megabytes in one field.
ECHO_LIMIT = 100

_REPR = reprlib.Repr()
_REPR.maxlevel = 4
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 12
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = ECHO_LIMIT


def short(value: Any, limit: int = ECHO_LIMIT) -> str:
    """`repr(value)`, cut to about `limit` characters, without ever building
    the whole repr of a huge value.

    >>> short(0.5), short([1, 2])
    ('0.5', '[1, 2]')
    >>> len(short("x" * 10_000_000)) <= 110
    True
    """
    try:
        text = repr(value) if isinstance(value, (float, type(None))) else _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails must not hide the real error
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def short_name(name: Any, limit: int = ECHO_LIMIT) -> str:
    """A field or key name for a message, cut to about `limit` characters."""
    text = str(name)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"Invalid number {name} in resumable state JSON")


def encode_envelope(
    callbacks: Mapping[str, Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """Serializes callback states (and extra top-level items) to JSON bytes."""
    doc: dict[str, Any] = {
        "format": ENVELOPE_FORMAT,
        "version": ENVELOPE_VERSION,
        CALLBACKS: {str(k): dict(v) for k, v in callbacks.items()},
    }
    if extra:
        doc.update(extra)
    return json.dumps(doc, allow_nan=False, sort_keys=True).encode("utf-8")


def decode_envelope(data: bytes | str, where: str | None = None) -> dict[str, Any]:
    """Parses and checks an envelope; raises `ValueError` if it is not one.

    Besides the format and version it checks what the readers act on: the
    nesting depth (at most `MAX_DEPTH`), the `position` (when present: a
    JSON object of integers from 0 to `MAX_INT`), and the `epoch` of every
    callback state that has one. Messages name `where` (the file read) and
    the field, and echo at most `ECHO_LIMIT` characters of a value.
    """
    at = f" in {where!r}" if where is not None else ""
    try:
        doc = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        path = _deep_path(data)
        raise ValueError(
            f"Invalid resumable-state envelope{at}: "
            + (f"field `{path}` nests" if path is not None else "its JSON nests")
            + f" deeper than {MAX_DEPTH} levels."
        ) from None
    except UnicodeDecodeError as e:
        raise ValueError(f"Invalid resumable-state envelope{at}: not JSON ({e.reason}).") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"Invalid resumable-state envelope{at}: not JSON ({e}).") from None
    except ValueError as e:  # a non-finite constant, an integer of over 4300 digits
        raise ValueError(f"Invalid resumable-state envelope{at}: {short_name(e, 300)}") from None
    if not isinstance(doc, dict):
        raise ValueError(
            f"Invalid resumable-state envelope{at}. Received: {type(doc).__name__}. "
            "Expected a JSON object."
        )
    _check_depth(doc, at)
    if doc.get("format") != ENVELOPE_FORMAT:
        raise ValueError(
            f"Invalid resumable-state envelope{at}. Received: "
            f"format={short(doc.get('format'))}. Expected format={ENVELOPE_FORMAT!r}."
        )
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= ENVELOPE_VERSION:
        expected = f"version={ENVELOPE_VERSION}" if ENVELOPE_VERSION == 1 else f"a version from 1 to {ENVELOPE_VERSION}"
        newer = " (written by a newer resumable_scheduler; upgrade it)" if isinstance(version, int) and not isinstance(version, bool) and version > ENVELOPE_VERSION else ""
        raise ValueError(
            f"Invalid resumable-state envelope{at}. Received: "
            f"version={short(version)}{newer}. Expected {expected}."
        )
    doc = migrate(doc)
    if not isinstance(doc.get(CALLBACKS), dict):
        raise ValueError(
            f"Invalid resumable-state envelope{at}. Received: "
            f"callbacks={short(doc.get('callbacks'))}. Expected a JSON object."
        )
    if POSITION in doc:
        Position.from_json(doc[POSITION], at)
    for key, state in doc[CALLBACKS].items():
        if isinstance(state, dict) and "epoch" in state:
            check_count(f"callbacks.{short_name(key)}.epoch", state["epoch"], at, "epoch")
    if TIMELINE in doc:
        from resumable_scheduler.timeline import Timeline

        Timeline.from_json(doc[TIMELINE], at)
    return doc


def check_count(field: str, value: Any, at: str = "", name: str | None = None) -> int:
    """Returns `value` if it is an int from 0 to `MAX_INT` (not a bool);
    raises `ValueError` naming `field` otherwise (`at`: " in 'file'").

    >>> check_count("position.step", 2**64, " in 'x.keras'", "step")
    Traceback (most recent call last):
    ...
    ValueError: Invalid value for field `position.step` in 'x.keras'. Received: step=18446744073709551616. Expected an integer >= 0 and <= 9223372036854775807 (int64).
    """
    name = name or field
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        expected = "an integer >= 0"
    elif value > MAX_INT:
        expected = f"an integer >= 0 and <= {MAX_INT} (int64)"
    else:
        return value
    raise ValueError(
        f"Invalid value for field `{field}`{at}. Received: {name}={short(value)}. "
        f"Expected {expected}."
    )


def _check_depth(doc: Any, at: str) -> None:
    """Refuses JSON nested deeper than `MAX_DEPTH`, naming the deepest path."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(doc, ())]
    while stack:
        value, path = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            if isinstance(child, (dict, list)):
                if len(path) + 1 >= MAX_DEPTH:
                    raise ValueError(
                        f"Invalid resumable-state envelope{at}: field "
                        f"`{_path_name(path + (key,))}` nests deeper than {MAX_DEPTH} levels."
                    )
                stack.append((child, path + (key,)))


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]')


def _deep_path(data: bytes | str) -> str | None:
    """The path of the first container nested deeper than `MAX_DEPTH` in a
    JSON text too deep for `json.loads`, found without recursion (strings
    and structural characters only; it stops there)."""
    text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else data
    stack: list[list[Any]] = []  # [opening character, key or index]
    last = '""'
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok[0] == '"':
            last = tok
        elif tok in "[{":
            if len(stack) >= MAX_DEPTH:
                return _path_name(tuple(k for _, k in stack))
            stack.append([tok, 0 if tok == "[" else ""])
        elif tok in "]}":
            if stack:
                stack.pop()
        elif tok == ":" and stack and stack[-1][0] == "{":
            try:
                stack[-1][1] = json.loads(last)
            except ValueError:
                stack[-1][1] = last[1:-1]
        elif tok == "," and stack and stack[-1][0] == "[":
            stack[-1][1] += 1
    return None


def _path_name(path: tuple[Any, ...]) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{short_name(key, 40)}" if text else short_name(key, 40))
        if len(text) > ECHO_LIMIT:
            return text[:ECHO_LIMIT] + "..."
    return text




# -- versions -------------------------------------------------------------------

#: `MIGRATIONS[v]` turns a version-`v` envelope into a version `v + 1` one.
#: Version 1 is the first; a new version adds its step here, and the fixtures
#: of every older version (fixtures/rs_v1*) keep loading through it.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def migrate(doc: dict[str, Any]) -> dict[str, Any]:
    """Brings an envelope of any supported version to `ENVELOPE_VERSION`.

    >>> migrate({"format": ENVELOPE_FORMAT, "version": 1, "callbacks": {}})["version"]
    1
    """
    version = doc["version"]
    while version < ENVELOPE_VERSION:
        doc = MIGRATIONS[version](dict(doc))
        version += 1
        doc["version"] = version
    return doc


# -- the typed snapshot ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training stands: the next batch to train is `batch` of `epoch`,
    and the optimizer has taken `step` steps.

    >>> Position.from_json({"epoch": 1, "batch": 0, "step": -1}, " in 'x'")
    Traceback (most recent call last):
    ...
    ValueError: Invalid value for field `position.step` in 'x'. Received: step=-1. Expected an integer >= 0.
    """

    epoch: int
    batch: int
    step: int

    def to_json(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step}

    @classmethod
    def from_json(cls, value: Any, at: str = "") -> Position:
        """Validates a `position` item (`at`: " in 'file'", for messages)."""
        if not isinstance(value, dict):
            raise ValueError(
                f"Invalid value for field `{POSITION}`{at}. Received: "
                f"position={short(value)}. Expected a JSON object."
            )
        counts = [check_count(f"{POSITION}.{key}", value.get(key), at, key) for key in ("epoch", "batch", "step")]
        return cls(*counts)


@dataclasses.dataclass
class Snapshot:
    """One checkpoint's training state besides the variables (see the module
    docstring). `items` holds the envelope's other items (`RNG`, `RNG_NOW`,
    `INPUT`, ...) as JSON values; `arrays` the training arrays (names
    without `TRAINING_PREFIX`); `callback_arrays` each callback's arrays."""

    position: Position | None = None
    callbacks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    rng: dict[str, Any] | None = None
    items: dict[str, Any] = dataclasses.field(default_factory=dict)
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    callback_arrays: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)

    # -- the envelope ----------------------------------------------------------

    def document(self, include_callbacks: bool = True) -> dict[str, Any]:
        """The envelope's items as a dict (without `format`/`version`)."""
        doc: dict[str, Any] = {}
        if self.position is not None:
            doc[POSITION] = self.position.to_json()
        if self.rng is not None:
            doc[RNG] = self.rng
        doc.update({k: v for k, v in self.items.items() if v is not None})
        if include_callbacks:
            doc[CALLBACKS] = self.callbacks
        return doc

    def encode(self) -> bytes:
        """The envelope as JSON bytes."""
        doc = self.document(include_callbacks=False)
        return encode_envelope(self.callbacks, doc)

    @classmethod
    def from_document(
        cls,
        doc: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray] | None = None,
        where: str | None = None,
    ) -> Snapshot:
        """A snapshot from a decoded envelope (and the flat arrays stored
        beside it, if any)."""
        at = f" in {where!r}" if where is not None else ""
        position = Position.from_json(doc[POSITION], at) if POSITION in doc else None
        items = {k: doc[k] for k in ITEMS if k in doc and k not in (POSITION, RNG)}
        training, per_callback = split_arrays(arrays or {})
        return cls(position, dict(doc.get(CALLBACKS, {})), doc.get(RNG), items, training, per_callback)

    @classmethod
    def decode(
        cls, data: bytes | str, arrays: Mapping[str, np.ndarray] | None = None, where: str | None = None
    ) -> Snapshot:
        """Decodes and validates an envelope (migrating older versions)."""
        return cls.from_document(decode_envelope(data, where), arrays, where)

    # -- the arrays ------------------------------------------------------------

    def flat_arrays(self) -> dict[str, np.ndarray]:
        """Every array under its stored name (see `array_name`)."""
        out = {array_name(name): np.asarray(v) for name, v in self.arrays.items()}
        for key, arrays in self.callback_arrays.items():
            out.update({array_name(name, key): np.asarray(v) for name, v in arrays.items()})
        return out

    # -- what readers ask ------------------------------------------------------

    def resume_epoch(self) -> int:
        """The epoch to pass to `fit(initial_epoch=...)`.

        The position's epoch; a file without one (our states saved by
        Keras's own `ModelCheckpoint`, which knows nothing of positions)
        falls back to the scheduler's epoch, then to the most epochs any
        callback has processed.

        >>> Snapshot(callbacks={"EarlyStopping": {"epoch": 4}, "X": {}}).resume_epoch()
        4
        """
        if self.position is not None:
            return self.position.epoch
        scheduler = self.callbacks.get(SCHEDULER_KEY)
        if isinstance(scheduler, dict) and type(scheduler.get("epoch")) is int:
            return int(scheduler["epoch"])
        epochs = [st["epoch"] for st in self.callbacks.values() if isinstance(st, dict) and type(st.get("epoch")) is int]
        return max(epochs, default=0)


def array_name(name: str, state_key: str | None = None) -> str:
    """The stored name of a training array, or of a callback's array.

    >>> array_name("python_state"), array_name("best_0", "EarlyStopping")
    ('training::python_state', 'arrays::EarlyStopping::best_0')
    """
    return f"{TRAINING_PREFIX}{name}" if state_key is None else f"{ARRAY_PREFIX}{state_key}::{name}"


def split_arrays(
    flat: Mapping[str, Any],
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Splits stored names back into (training arrays, callback arrays by
    key); other names are ignored.

    >>> split_arrays({"training::a": 1, "arrays::K::b": 2, "other": 3})
    ({'a': array(1)}, {'K': {'b': array(2)}})
    """
    training: dict[str, np.ndarray] = {}
    per_callback: dict[str, dict[str, np.ndarray]] = {}
    for full in flat.keys():
        if full.startswith(TRAINING_PREFIX):
            training[full[len(TRAINING_PREFIX):]] = np.asarray(flat[full])
        elif full.startswith(ARRAY_PREFIX) and "::" in full[len(ARRAY_PREFIX):]:
            key, name = full[len(ARRAY_PREFIX):].split("::", 1)
            per_callback.setdefault(key, {})[name] = np.asarray(flat[full])
    return training, per_callback


def require(doc: Mapping[str, Any], where: str, what: str = "Unreadable checkpoint file") -> Position:
    """The training state a backup or Orbax step must hold: a `position`
    and an `rng` item; raises `ValueError` naming `where` otherwise."""
    for key in (POSITION, RNG):
        if not isinstance(doc.get(key), dict):
            raise ValueError(f"{what} {where!r}: no valid `{key}` entry.")
    return Position.from_json(doc[POSITION], f" in {where!r}")
