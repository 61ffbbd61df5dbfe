"""storage.orbax_store.OrbaxStore against real Orbax directories in tmp_path."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resumable_scheduler.protocol import encode_envelope
from resumable_scheduler.storage import orbax_dir, orbax_store
from resumable_scheduler.storage.orbax_store import OrbaxStore


def state(step, epoch=None):
    position = {"epoch": step if epoch is None else epoch, "batch": 0, "step": step}
    return json.loads(encode_envelope({}, {"position": position, "rng": {}}))


ARRAYS = {"training": {"k": np.zeros(1)}}


def tree(value):
    return {"trainable_variables": {"w": jnp.full((4, 3), value, jnp.float32)}}


def abstract():
    return {"trainable_variables": {"w": jax.ShapeDtypeStruct((4, 3), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}}


@pytest.fixture
def store(tmp_path):
    s = OrbaxStore(os.fspath(tmp_path / "ckpt"), max_to_keep=2)
    s.open()
    yield s
    s.close()


@pytest.mark.parametrize("background", [True, False])
def test_save_load_and_prune(store, background):
    for step in (3, 5, 9):
        store.save(step, tree(step), state(step), {"training": {"k": np.arange(step)}},
                   model_config='{"x": 1}', background=background)
    store.wait()
    assert store.steps() == [5, 9] == orbax_dir.complete_steps(store.location)
    assert orbax_dir.saved_items(store.location, 9) >= {"pytree", "resumable_state", "resumable_arrays", "model_config"}
    step, doc = store.newest_usable()
    assert step == 9 and doc["position"]["epoch"] == 9
    loaded, arrays = store.load(9, abstract())
    np.testing.assert_array_equal(loaded["trainable_variables"]["w"], np.full((4, 3), 9.0))
    np.testing.assert_array_equal(arrays["training"]["k"], np.arange(9))


def test_background_save_is_a_snapshot(store):
    """The writer saves the values at the call, even if the caller's arrays
    are deleted (donated) right after it."""
    t = tree(1.0)
    store.save(1, t, state(1), ARRAYS)
    t["trainable_variables"]["w"].delete()  # what a donating train step does
    store.wait()
    loaded, _ = store.load(1, abstract())
    np.testing.assert_array_equal(loaded["trainable_variables"]["w"], np.ones((4, 3)))
    assert set(store.timings[-1]) == {"wait_previous", "copy", "orbax"}


def test_newest_unreadable_falls_back_with_a_warning(store):
    store.save(1, tree(1), state(1), ARRAYS)
    store.save(2, tree(2), state(2), ARRAYS)
    store.wait()
    shutil.rmtree(os.path.join(store.location, "2", "resumable_state"))
    os.makedirs(os.path.join(store.location, "2", "resumable_state"))  # present, unreadable
    with pytest.warns(UserWarning, match=r"The newest checkpoint could not be read .*resuming from step 1"):
        step, _ = store.newest_usable()
    assert step == 1


def test_no_usable_step_is_an_error_that_changes_nothing(store):
    store.save(1, tree(1), state(1), ARRAYS)
    store.wait()
    shutil.rmtree(os.path.join(store.location, "1", "resumable_state"))
    os.makedirs(os.path.join(store.location, "1", "resumable_state"))
    with pytest.raises(ValueError, match="No usable checkpoint in directory=.*Nothing was changed"):
        store.newest_usable()
    assert store.steps() == [1]


def test_a_stock_step_is_refused(store):
    store.save(1, tree(1), state(1), ARRAYS)
    store.wait()
    shutil.rmtree(os.path.join(store.location, "1", "resumable_state"))  # as stock writes it
    with pytest.raises(ValueError, match="written by keras.callbacks.OrbaxCheckpoint"):
        store.newest_usable()


def test_empty_directory_has_no_newest(store):
    assert store.newest_usable() is None and store.steps() == []


def test_a_failed_background_write_is_raised_by_wait(store, monkeypatch):
    def fail(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(store.checkpointer, "save_checkpointables", fail)
    store.save(1, tree(1), state(1), ARRAYS)
    with pytest.raises(OSError, match="disk full"):
        store.wait()
    store.wait()  # reported once


def test_reopening_finishes_the_store_left_open(tmp_path):
    d = os.fspath(tmp_path / "ckpt")
    first = OrbaxStore(d)
    first.open()
    first.save(4, tree(4), state(4), ARRAYS)
    second = OrbaxStore(d)
    second.open()  # closes `first`, waiting for its write
    assert first.checkpointer is None and orbax_store._OPEN[d] is second
    assert second.steps() == [4]
    second.close()
    assert d not in orbax_store._OPEN
    second.close()  # idempotent
