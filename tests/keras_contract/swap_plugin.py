"""pytest plugin for the child process that runs Keras's own callback tests
(from the installed wheel) against resumable_scheduler's classes.

Loaded with `-p tests.keras_contract.swap_plugin` by
`tests/keras_contract/test_keras_contract.py`; importing this module has no
side effect (the normal suite's doctest collection imports it).

What it does, in the child only (`pytest_configure`):

- swaps `keras.src.callbacks.<Name>` (what the test files call:
  `from keras.src import callbacks` then `callbacks.X`) for `rs.<Name>`, and,
  before each test, the name `OrbaxCheckpoint` in the test module's globals
  (`from keras.src.callbacks.orbax_checkpoint import OrbaxCheckpoint`);
- in `model_checkpoint_test.py`, makes our callbacks ride along in every
  `fit`: an `rs.LearningRateScheduler` that keeps the rate and an
  `rs.EarlyStopping` that never stops, placed before the test's callbacks;
- counts, per test, the instances of our classes and of the stock classes
  constructed, and the fits with and without the ride-alongs. A test that
  constructed a stock instance of a swapped class fails here; the counts go
  into the JUnit XML (`rs_counts`) and the parent checks them too.

`RS_CONTRACT_SWAP=0` disables the swap and the ride-alongs (the counting
stays): the parent uses it to prove that a run testing stock Keras is caught.
"""

from __future__ import annotations

import functools
import importlib
import json
import os

import pytest

#: The swapped names, each tested by its own Keras test file.
SWAPPED = ("LearningRateScheduler", "BackupAndRestore", "ReduceLROnPlateau", "EarlyStopping", "OrbaxCheckpoint")
#: The callbacks riding along in every fit of model_checkpoint_test.py.
RIDE_ALONG = ("LearningRateScheduler", "EarlyStopping")
RIDE_FILE = "model_checkpoint_test.py"
#: The module defining each stock class.
STOCK_MODULES = {
    "LearningRateScheduler": "keras.src.callbacks.learning_rate_scheduler",
    "BackupAndRestore": "keras.src.callbacks.backup_and_restore",
    "ReduceLROnPlateau": "keras.src.callbacks.reduce_lr_on_plateau",
    "EarlyStopping": "keras.src.callbacks.early_stopping",
    "OrbaxCheckpoint": "keras.src.callbacks.orbax_checkpoint",
}
PROPERTY = "rs_counts"
NEEDS_TF = ("orbax_checkpoint_test.py", "test_checkpoint_with_assets")
NEEDS_TF_REASON = (
    "needs TensorFlow (layers.StringLookup); not importable here, and this test "
    "fails with stock Keras too without it"
)

_counts: dict[str, dict[str, int]] = {}
_active = {"swap": False}


def _reset() -> None:
    _counts.clear()
    _counts.update(ours={}, stock={}, fits={"with_ride_along": 0, "without": 0})


def _bump(kind: str, name: str) -> None:
    _counts[kind][name] = _counts[kind].get(name, 0) + 1


def _count_ours(cls: type, name: str) -> None:
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):  # noqa: N807
        if type(self) is cls:
            _bump("ours", name)
        init(self, *args, **kwargs)

    cls.__init__ = __init__


def _count_stock(cls: type, name: str, ours: type) -> None:
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):  # noqa: N807
        if not isinstance(self, ours):
            _bump("stock", name)
        init(self, *args, **kwargs)

    cls.__init__ = __init__


def _ride_along(model_cls: type) -> None:
    import resumable_scheduler as rs

    fit = model_cls.fit

    @functools.wraps(fit)
    def riding_fit(self, *args, **kwargs):
        if not _active.get("ride"):
            _counts["fits"]["without"] += 1
            return fit(self, *args, **kwargs)
        if len(args) > 5:  # callbacks given positionally (x, y, batch_size, epochs, verbose, callbacks)
            args = list(args)
            args[5] = [*_riders(rs), *(args[5] or [])]
        else:
            kwargs["callbacks"] = [*_riders(rs), *(kwargs.get("callbacks") or [])]
        _counts["fits"]["with_ride_along"] += 1
        return fit(self, *args, **kwargs)

    model_cls.fit = riding_fit


def _riders(rs) -> list:
    # Neither changes anything: the rate is kept, and training never stops.
    return [
        rs.LearningRateScheduler(lambda epoch, lr: lr),
        rs.EarlyStopping(monitor="loss", patience=10**9),
    ]


def pytest_configure(config):
    import keras.src.callbacks as kc
    from keras.src.models.model import Model

    import resumable_scheduler as rs

    _reset()
    swap = os.environ.get("RS_CONTRACT_SWAP", "1") != "0"
    _active["swap"] = swap
    for name in SWAPPED:
        ours = getattr(rs, name)
        stock = getattr(importlib.import_module(STOCK_MODULES[name]), name)
        assert ours is not stock and issubclass(ours, keras_callback()), name
        _count_ours(ours, name)
        _count_stock(stock, name, ours)
        if swap:
            setattr(kc, name, ours)
    _ride_along(Model)


def keras_callback() -> type:
    from keras.src.callbacks.callback import Callback

    return Callback


def pytest_collection_modifyitems(config, items):
    if _tensorflow_importable():
        return
    for item in items:
        if item.path.name == NEEDS_TF[0] and item.name.startswith(NEEDS_TF[1]):
            item.add_marker(pytest.mark.skip(reason=NEEDS_TF_REASON))


def _tensorflow_importable() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    # A test skipped before its call (a skip mark) still shows the plugin ran.
    _reset()
    _record(item)
    return (yield)


def _record(item) -> dict:
    counts = json.loads(json.dumps(_counts))
    item.user_properties[:] = [p for p in item.user_properties if p[0] != PROPERTY]
    item.user_properties.append((PROPERTY, json.dumps(counts, sort_keys=True)))
    return counts


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    import resumable_scheduler as rs

    _reset()
    if _active["swap"]:
        for name in SWAPPED:
            stock = getattr(importlib.import_module(STOCK_MODULES[name]), name)
            if getattr(item.module, name, None) is stock:
                setattr(item.module, name, getattr(rs, name))
    _active["ride"] = _active["swap"] and item.path.name == RIDE_FILE
    try:
        result = yield
    finally:
        _active["ride"] = False
        counts = _record(item)
    if counts["stock"]:
        raise AssertionError(
            f"keras-contract: this test constructed stock Keras callbacks {counts['stock']}: "
            "it did not test resumable_scheduler's classes"
        )
    return result
