"""What the adapter pin tests (tests/unit/test_adapters*.py) share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import pytest


@contextlib.contextmanager
def internal(what: str, adapter: str, versions: str = "") -> Iterator[None]:
    """Turns any failure into one loud message naming the internal `what`,
    the versions, and the adapter module to update (`adapter`: a file name
    under src/resumable_scheduler/_adapters/)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - reported below
        pytest.fail(
            f"Keras internal changed: {what} (keras {keras.__version__}{versions}). "
            f"Update src/resumable_scheduler/_adapters/{adapter}. Cause: {type(e).__name__}: {e}",
            pytrace=False,
        )
