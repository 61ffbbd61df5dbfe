"""CPython's private names (pinned by the adapter tests)."""

from __future__ import annotations

import atexit
import threading
from typing import Callable


def register_before_thread_pools_shut_down(fn: Callable[[], None]) -> None:
    """Runs `fn` at interpreter exit *before* `concurrent.futures` thread
    pools shut down (`threading._register_atexit`; plain `atexit` runs after
    them, when writer threads can no longer schedule work)."""
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - every CPython >= 3.9 has it
        atexit.register(fn)
    else:
        register(fn)
