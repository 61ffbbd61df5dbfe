"""Inputs at the edges: schedule outputs that overflow the optimizer's dtype,
JAX's half-precision scalars, checkpoint numbers past 99,999,999, and a
backup write that fails on a file-size limit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler.storage import backup_dir as layout

X = np.linspace(0, 1, 32, dtype="float32").reshape(8, 4)
Y = np.linspace(1, 0, 16, dtype="float32").reshape(8, 2)
FLOAT32_MAX = "3.4028235e+38"


def make_model(optimizer=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer or keras.optimizers.SGD(0.01), loss="mse")
    return model


def rate_of(model):
    return rs.lr_access.get_rate(model.optimizer)


# -- schedule outputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("value, shown", [
    pytest.param(1e300, "1e+300", id="1e300"),
    pytest.param(3.5e38, "3.5e+38", id="3.5e38"),
    pytest.param(np.float64(1e300), "1e+300", id="numpy-float64"),
    pytest.param(10**39, "1e+39", id="int"),
])
def test_a_rate_finite_in_float64_but_not_in_float32_is_rejected_like_inf(value, shown):
    model = make_model()
    rates = {1: 3.4e38, 2: value}  # the largest float32 rates pass; beyond is inf there
    with pytest.raises(ValueError) as info:
        model.fit(X, Y, epochs=3, batch_size=4, verbose=0,
                  callbacks=[rs.LearningRateScheduler(lambda epoch, lr: rates.get(epoch, lr))])
    assert str(info.value) == (
        "The output of the `schedule` function at epoch 2 should be a finite learning rate >= 0 "
        f"that the optimizer's float32 learning rate can hold (at most {FLOAT32_MAX}). Got: {shown}."
    )
    assert rate_of(model) == pytest.approx(3.4e38, rel=1e-6)  # epoch 1's; nothing of epoch 2 applied
    assert np.isfinite(float(model.optimizer.learning_rate))


def test_an_overflowing_rate_for_a_step_schedule_is_rejected():
    model = make_model(keras.optimizers.SGD(rs.schedules.warmup_cosine(0.1, 2, 10)))
    with pytest.raises(ValueError, match=(
        r"^The output of the `schedule` function at epoch 0 should be a finite learning rate >= 0 "
        r"that the optimizer's float32 learning rate can hold \(at most 3\.4028235e\+38\)\. Got: 1e\+300\.$"
    )):
        model.fit(X, Y, epochs=1, batch_size=4, verbose=0,
                  callbacks=[rs.LearningRateScheduler(lambda epoch, lr: 1e300)])
    assert rate_of(model) == pytest.approx(0.1)


def test_half_precision_jax_scalars_are_accepted():
    for dtype, value in ((jnp.bfloat16, 0.5), (jnp.float16, 0.25)):
        model = make_model()
        out = jnp.asarray(value, dtype=dtype)
        assert out.shape == ()
        model.fit(X, Y, epochs=1, batch_size=4, verbose=0,
                  callbacks=[rs.LearningRateScheduler(lambda epoch, lr, out=out: out)])
        assert rate_of(model) == value, dtype


@pytest.mark.parametrize("make, message", [
    (lambda: rs.schedules.warmup_cosine(1e300, 2, 10),
     "Invalid value for argument `base_learning_rate`. Received: base_learning_rate=1e+300. "
     f"Expected a finite number >= 0 that float32 can hold (at most {FLOAT32_MAX})."),
    (lambda: rs.schedules.StepSchedule(lambda step: 1.0, base_learning_rate=3.5e38),
     "Invalid value for argument `base_learning_rate`. Received: base_learning_rate=3.5e+38. "
     f"Expected a finite number >= 0 that float32 can hold (at most {FLOAT32_MAX})."),
    (lambda: rs.schedules.piecewise([1], [0.1, 1e39]),
     "Invalid value for argument `values`. Received: values=[0.1, 1e+39]. "
     f"Expected finite numbers >= 0 that float32 can hold (at most {FLOAT32_MAX})."),
])
def test_step_schedules_reject_rates_their_variable_cannot_hold(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message


# -- checkpoint numbers past 99,999,999 -------------------------------------------------------


def fit_with_backup(d, epochs, **kwargs):
    model = make_model()
    model.fit(X, Y, epochs=epochs, batch_size=4, verbose=0,
              callbacks=[rs.LearningRateScheduler(lambda epoch, lr: lr * 0.5),
                         rs.BackupAndRestore(d, delete_checkpoint=False, **kwargs)])
    return model


def renumber(path, seq):
    """Gives a real checkpoint file the number `seq` (its CRC, of the
    content, stays right)."""
    crc = os.path.basename(path).split("-")[2]
    new = os.path.join(os.path.dirname(path), f"ckpt-{seq:08d}-{crc}")
    os.rename(path, new)
    return new


@pytest.mark.parametrize("double_checkpoint", [False, True])
def test_checkpoint_numbers_keep_working_past_99999999(tmp_path, double_checkpoint):
    d = str(tmp_path / "backup")
    fit_with_backup(d, epochs=1, double_checkpoint=double_checkpoint)
    for i, path in enumerate(layout.list_checkpoints(d)):
        renumber(path, 99_999_999 - len(layout.list_checkpoints(d)) + 1 + i)
    assert rs.read_state(d)["epoch"] == 1

    fit_with_backup(d, epochs=3, double_checkpoint=double_checkpoint)  # resumes at 1, commits 2 and 3
    names = sorted(n for n in os.listdir(d) if n.startswith("ckpt-"))
    numbers = sorted(int(n.split("-")[1]) for n in names)
    assert numbers == ([100_000_000, 100_000_001] if double_checkpoint else [100_000_001])
    assert [os.path.basename(p) for p in layout.list_checkpoints(d)] == sorted(
        names, key=lambda n: int(n.split("-")[1]))
    state = rs.read_state(d)
    assert (state["epoch"], state["step"]) == (3, 6)
    assert state["source"].endswith(".weights.h5") and "-100000001-" in state["source"]

    model = fit_with_backup(d, epochs=4, double_checkpoint=double_checkpoint)  # resumes at 3
    assert int(model.optimizer.iterations) == 8
    assert rs.read_state(d)["epoch"] == 4
    assert rate_of(model) == pytest.approx(0.01 * 0.5**4)


def test_names_sort_as_numbers_and_zero_padded_long_names_are_not_checkpoints(tmp_path):
    for name in ("ckpt-99999999-00000000.weights.h5", "ckpt-100000000-00000000.weights.h5",
                 "ckpt-1000000000-00000000.weights.h5", "ckpt-000000001-00000000.weights.h5",
                 "ckpt-1234567-00000000.weights.h5"):
        (tmp_path / name).write_bytes(b"")
    assert [os.path.basename(p) for p in layout.list_checkpoints(str(tmp_path))] == [
        "ckpt-99999999-00000000.weights.h5",
        "ckpt-100000000-00000000.weights.h5",
        "ckpt-1000000000-00000000.weights.h5",
    ]


# -- a write that fails on a file-size limit ---------------------------------------------------

CHILD = textwrap.dedent("""
    import os, resource, signal, sys
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import h5py, keras, numpy as np
    import resumable_scheduler as rs

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256), keras.layers.Dense(4)])
    model.compile(keras.optimizers.Adam(), loss="mse")  # ~200 KB of variables
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
    try:
        model.fit(np.zeros((8, 64)), np.zeros((8, 4)), epochs=2, verbose=0,
                  callbacks=[rs.BackupAndRestore(sys.argv[1], delete_checkpoint=False)])
    except Exception as e:
        print(f"{type(e).__name__}: {e}")
        kinds = h5py.h5f.OBJ_FILE | h5py.h5f.OBJ_DATASET | h5py.h5f.OBJ_GROUP
        print(f"open HDF5 files, groups and datasets: {len(h5py.h5f.get_obj_ids(types=kinds))}")
        sys.exit(3)
    print("no error")
""")


def test_a_save_that_hits_the_file_size_limit_fails_cleanly(tmp_path):
    """Today it ends in a segfault at interpreter exit, in h5py's teardown
    of the half-written file."""
    d = str(tmp_path / "backup")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, d], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        f"OSError: [Errno 27] Cannot write a checkpoint to backup_dir={d!r}: File too large. "
        "Nothing was committed; the checkpoints already there are unchanged."
    )
    assert lines[1] == "open HDF5 files, groups and datasets: 0"
    assert "Traceback" not in proc.stderr and "Can't decrement" not in proc.stderr, proc.stderr[-3000:]
    assert sorted(os.listdir(d)) == [".lock"]  # no checkpoint, no temporary


@pytest.mark.parametrize("change, fragment", [
    ({"step": 2**40}, "step=1099511627776 does not fit the optimizer's `iterations` variable (int"),
    ({"learning_rate": 1e300}, "learning_rate=1e+300 does not fit optimizer"),
])
def test_a_restored_state_that_does_not_fit_the_optimizer_is_refused_before_training(change, fragment):
    from tests.support.resume_helpers import X, Y, make_model

    model = make_model()
    model.fit(X, Y, epochs=1, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    cb = rs.LearningRateScheduler(lambda e, lr: lr)
    state = rs.ScheduleState(epoch=1, step=1, learning_rate=0.01, initial_learning_rate=0.01, history=(0.01,)).to_dict()
    state.update(change)
    cb.set_state(state)
    with pytest.raises(ValueError) as e:
        model.fit(X, Y, epochs=3, initial_epoch=1, verbose=0, callbacks=[cb])
    assert fragment in str(e.value) and "Nothing was changed" in str(e.value)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before))
