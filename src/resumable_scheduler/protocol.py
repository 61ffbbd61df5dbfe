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
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

ENVELOPE_FORMAT = "resumable_scheduler"
ENVELOPE_VERSION = 1


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


def decode_envelope(data: bytes | str) -> dict[str, Any]:
    """Parses and checks an envelope; raises `ValueError` if it is not one."""
    try:
        doc = json.loads(data, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"Invalid resumable-state envelope: not JSON ({e}).") from None
    if not isinstance(doc, dict):
        raise ValueError(
            f"Invalid resumable-state envelope. Received: {type(doc).__name__}. "
            "Expected a JSON object."
        )
    if doc.get("format") != ENVELOPE_FORMAT:
        raise ValueError(
            "Invalid resumable-state envelope. Received: "
            f"format={doc.get('format')!r}. Expected format={ENVELOPE_FORMAT!r}."
        )
    if doc.get("version") != ENVELOPE_VERSION or isinstance(doc.get("version"), bool):
        raise ValueError(
            "Invalid resumable-state envelope. Received: "
            f"version={doc.get('version')!r}. Expected version={ENVELOPE_VERSION}."
        )
    if not isinstance(doc.get("callbacks"), dict):
        raise ValueError(
            "Invalid resumable-state envelope. Received: "
            f"callbacks={doc.get('callbacks')!r:.100}. Expected a JSON object."
        )
    return doc


def to_python_float(value: Any, what: str) -> float:
    """Converts a real scalar (float, NumPy, 0-d JAX/torch array) to float.

    Raises `ValueError` naming `what` for anything else.

    >>> import numpy as np
    >>> to_python_float(np.float32(0.5), "x")
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
        value = value.detach().cpu().numpy()
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            arr = np.asarray(value)
        except Exception:  # noqa: BLE001 - report below
            arr = None
        if arr is not None and arr.shape == () and arr.dtype.kind in "fiu":
            return float(arr)
    raise ValueError(
        f"{what} must be a real scalar. Received: {value!r} of type {type(value).__name__}."
    )
