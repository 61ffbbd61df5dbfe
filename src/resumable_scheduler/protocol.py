"""The resumable-callback protocol and the JSON envelope that carries states.

Any callback with a `state_key` and `get_state()` / `set_state()` methods is
*resumable*: its state is saved with every checkpoint of the model it is
attached to and loaded back by `rs.restore` or a backup. The envelope is the
one JSON document every storage back end writes:

>>> doc = encode_envelope({"LearningRateScheduler": {"x": 1}})
>>> decode_envelope(doc)["callbacks"]
{'LearningRateScheduler': {'x': 1}}
>>> decode_envelope(b'{"format": "other"}')
Traceback (most recent call last):
...
ValueError: Invalid resumable-state envelope. Received: format='other'. Expected format='resumable_scheduler'.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

ENVELOPE_FORMAT = "resumable_scheduler"
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


@runtime_checkable
class Resumable(Protocol):
    """Anything whose state decides what training does next.

    `state_key` names the state inside a checkpoint (unique per model);
    `get_state()` returns a JSON-safe dict; `set_state(dict)` validates and
    adopts one (raising `ValueError` on bad input, changing nothing).

    Optionally, state too large for JSON (such as `rs.EarlyStopping`'s best
    weights) goes through `get_arrays() -> dict[str, np.ndarray]` and
    `set_arrays(dict)`, called after `set_state`; checkpoints written by
    Keras's saving carry those arrays beside the JSON state.
    """

    state_key: str

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: Mapping[str, Any]) -> None: ...


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
        "callbacks": {str(k): dict(v) for k, v in callbacks.items()},
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
    if doc.get("version") != ENVELOPE_VERSION or isinstance(doc.get("version"), bool):
        raise ValueError(
            f"Invalid resumable-state envelope{at}. Received: "
            f"version={short(doc.get('version'))}. Expected version={ENVELOPE_VERSION}."
        )
    if not isinstance(doc.get("callbacks"), dict):
        raise ValueError(
            f"Invalid resumable-state envelope{at}. Received: "
            f"callbacks={short(doc.get('callbacks'))}. Expected a JSON object."
        )
    if "position" in doc:
        pos = doc["position"]
        if not isinstance(pos, dict):
            raise ValueError(
                f"Invalid value for field `position`{at}. Received: "
                f"position={short(pos)}. Expected a JSON object."
            )
        for key in ("epoch", "batch", "step"):
            check_count(f"position.{key}", pos.get(key), at, key)
    for key, state in doc["callbacks"].items():
        if isinstance(state, dict) and "epoch" in state:
            check_count(f"callbacks.{short_name(key)}.epoch", state["epoch"], at, "epoch")
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


def to_python_float(value: Any, what: str) -> float:
    """Converts a real scalar (float, NumPy, 0-d JAX/torch array) to float.

    Raises `ValueError` naming `what` for anything else.

    >>> import numpy as np
    >>> to_python_float(np.float32(0.5), "x")
    0.5
    >>> import ml_dtypes
    >>> to_python_float(np.asarray(0.5, dtype=ml_dtypes.bfloat16), "x")  # JAX's bfloat16
    0.5
    >>> to_python_float([1.0], "the rate")
    Traceback (most recent call last):
    ...
    ValueError: the rate must be a real scalar. Received: [1.0] of type list.
    """
    import numpy as np

    if isinstance(value, bool):
        raise ValueError(f"{what} must be a real scalar. Received: {value!r} of type bool.")
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an int beyond float range: report it as inf
            return math.inf if value > 0 else -math.inf
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor
        tensor = value.detach().cpu()
        if str(getattr(tensor, "dtype", "")) == "torch.bfloat16":  # NumPy has no bfloat16
            tensor = tensor.float()
        value = tensor.numpy()
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            arr = np.asarray(value)
        except Exception:  # noqa: BLE001 - report below
            arr = None
        if arr is not None and arr.shape == () and (arr.dtype.kind in "fiu" or _is_ml_float(arr.dtype)):
            return float(arr.astype(np.float64)) if arr.dtype.kind == "V" else float(arr)
    raise ValueError(
        f"{what} must be a real scalar. Received: {value!r} of type {type(value).__name__}."
    )


def _is_ml_float(dtype: Any) -> bool:
    """True for the float types of `ml_dtypes` (bfloat16, float8, ...), which
    JAX uses and NumPy sees as kind 'V'."""
    if dtype.kind != "V" or dtype.names is not None:
        return False
    try:
        import ml_dtypes

        ml_dtypes.finfo(dtype)
    except (ImportError, TypeError, ValueError):
        return False
    return True


def float_max(dtype: Any) -> float | None:
    """The largest finite value of a float dtype (`"float32"`, `"bfloat16"`,
    a NumPy or JAX dtype), or None if it is not a float dtype we know.

    >>> float_max("float32"), float_max("float64") > 1e300, float_max("int32")
    (3.4028234663852886e+38, True, None)
    """
    import numpy as np

    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - Keras depends on it
        return None
    for candidate in (dtype, str(dtype).removeprefix("torch.")):
        try:
            return float(ml_dtypes.finfo(np.dtype(candidate)).max)
        except (TypeError, ValueError):
            continue
    return None
