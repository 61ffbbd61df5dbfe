"""The resumable-callback protocol, and the checks of numbers it relies on.

Any callback with a `state_key` and `get_state()` / `set_state()` methods is
*resumable*: its state is saved with every checkpoint of the model it is
attached to and loaded back by `rs.restore` or a backup. The envelope that
carries the states (its schema, codec and versions) is `snapshot`'s;
its functions are re-exported here:

>>> doc = encode_envelope({"LearningRateScheduler": {"x": 1}})
>>> decode_envelope(doc)["callbacks"]
{'LearningRateScheduler': {'x': 1}}
>>> decode_envelope(b'{"format": "other"}')
Traceback (most recent call last):
...
ValueError: Invalid resumable-state envelope. Received: format='other'. Expected format='resumable_scheduler'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from resumable_scheduler.snapshot import (  # noqa: F401 - re-exported
    ECHO_LIMIT,
    ENVELOPE_FORMAT,
    ENVELOPE_VERSION,
    MAX_DEPTH,
    MAX_INT,
    check_count,
    decode_envelope,
    encode_envelope,
    short,
    short_name,
)

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
