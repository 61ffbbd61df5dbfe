"""rs.OrbaxCheckpoint: resumes by itself, exactly; reading Orbax directories.

The stock behaviour these tests pin the fix for is FINDINGS.md row 6: stock
`keras.callbacks.OrbaxCheckpoint` records no position, never restores, crashes
with StepAlreadyExistsError on a rerun and rejects relative paths.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler import cli, harness
from resumable_scheduler.storage import orbax_dir
from tests.support.resume_helpers import (
    FINAL_LR, X, Y, BatchLog, InterruptAt, assert_same, documented_schedule, fit, make_model,
    outcome, run_uninterrupted,
)

CHILD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support", "multiprocess_child.py")


@pytest.fixture(scope="module")
def reference():
    return {s: run_uninterrupted(shuffle=s) for s in (True, False)}


def callbacks(d, save_freq, *extra, **kw):
    return [rs.LearningRateScheduler(documented_schedule), rs.OrbaxCheckpoint(d, save_freq=save_freq, **kw), *extra]


def interrupted_run(d, at, save_freq, shuffle=True, log=None, **kw):
    model = make_model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, callbacks(d, save_freq, InterruptAt(*at), **kw), shuffle=shuffle)
    # What a rerun of the script does: build everything again, call fit.
    model = make_model()
    np.random.seed(12345)  # whatever the RNG is now, the checkpoint decides
    fit(model, callbacks(d, save_freq, *([log] if log else []), **kw), shuffle=shuffle)
    return outcome(model)


@pytest.mark.parametrize(
    "save_freq, at, shuffle",
    [("epoch", (5, 0), True), ("epoch", (12, 0), True), (2, (12, 3), True), (3, (7, 1), False), (1, (3, 2), True)],
)
def test_interrupted_run_resumes_by_itself_exactly(tmp_path, reference, save_freq, at, shuffle):
    got = interrupted_run(os.fspath(tmp_path / "ckpt"), at, save_freq, shuffle)
    assert got["iterations"] == 75
    assert round(got["lr"], 5) == 0.00607 and np.isclose(got["lr"], FINAL_LR)
    assert_same(got, reference[shuffle])


def test_mid_epoch_resume_trains_every_batch_once(tmp_path):
    log = BatchLog()
    interrupted_run(os.fspath(tmp_path / "ckpt"), (6, 3), 3, log=log)  # saved at batch 33
    # The rerun starts at the first batch not yet trained: (6, 3).
    assert log.rows == [(6, b) for b in range(3, 5)] + [(e, b) for e in range(7, 15) for b in range(5)]


def test_rerun_after_interrupts_and_after_the_end_just_continues(tmp_path, reference):
    d = os.fspath(tmp_path / "ckpt")
    for at in [(2, 1), (2, 4), (9, 0)]:  # three interruptions, same directory
        model = make_model()
        with pytest.raises(KeyboardInterrupt):
            fit(model, callbacks(d, 2, InterruptAt(*at)))
    model = make_model()
    fit(model, callbacks(d, 2))
    assert_same(outcome(model), reference[True])
    # Running the finished script once more: no StepAlreadyExistsError, and
    # nothing is trained twice (at most the tail after the last save again).
    steps_before = orbax_dir.complete_steps(d)
    model = make_model()
    fit(model, callbacks(d, 2))
    assert_same(outcome(model), reference[True])
    assert orbax_dir.complete_steps(d)[-1] >= steps_before[-1]


def test_epoch_mode_rerun_after_the_end_trains_nothing(tmp_path, reference):
    d = os.fspath(tmp_path / "ckpt")
    model = make_model()
    fit(model, callbacks(d, "epoch"))
    assert orbax_dir.complete_steps(d) == [75]  # named by global batch, not epoch
    assert rs.read_state(d)["epoch"] == 15
    log = BatchLog()
    model = make_model()
    fit(model, callbacks(d, "epoch", log))
    assert log.rows == []
    assert_same(outcome(model), reference[True])


def test_steps_are_complete_when_fit_returns_and_max_to_keep_holds(tmp_path):
    d = os.fspath(tmp_path / "ckpt")
    model = make_model()
    fit(model, callbacks(d, 5, max_to_keep=3))  # one step per epoch
    assert sorted(os.listdir(d)) == ["65", "70", "75"]  # no temporaries left
    assert [rs.read_state(d, step=s)["epoch"] for s in (65, 70, 75)] == [13, 14, 15]


def test_relative_directory_is_made_absolute(tmp_path, monkeypatch, reference):
    monkeypatch.chdir(tmp_path)
    cb = rs.OrbaxCheckpoint("rel/ckpt")
    assert cb.directory == os.fspath(tmp_path / "rel" / "ckpt")
    model = make_model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, [rs.LearningRateScheduler(documented_schedule), cb, InterruptAt(8, 0)])
    monkeypatch.chdir(tmp_path / "rel")  # the callback keeps its absolute path
    model = make_model()
    fit(model, [rs.LearningRateScheduler(documented_schedule), cb])
    assert_same(outcome(model), reference[True])
    assert rs.read_state(os.fspath(tmp_path / "rel" / "ckpt"))["epoch"] == 15


def test_dropout_and_seed_generators_resume_exactly(tmp_path):
    ref = run_uninterrupted(dropout=True)
    d = os.fspath(tmp_path / "ckpt")
    model = make_model(dropout=True)
    with pytest.raises(KeyboardInterrupt):
        fit(model, callbacks(d, 3, InterruptAt(11, 2)))
    model = make_model(dropout=True)
    fit(model, callbacks(d, 3))
    assert_same(outcome(model), ref)


def test_synchronous_saves_resume_exactly(tmp_path, reference):
    got = interrupted_run(os.fspath(tmp_path / "ckpt"), (10, 2), 4, save_on_background=False)
    assert_same(got, reference[True])


# -- kill during an async save ----------------------------------------------


def _env():
    return {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _command(d, out, *extra):
    return [sys.executable, CHILD, os.fspath(d), os.fspath(out), "--big", "--samples", "8", *extra]


def _run_to_end(d, out, *extra):
    harness.run_until_done(_command(d, out, *extra), env=_env(), timeout=240, name="The Orbax child")


def _child_result(out):
    with open(os.path.join(out, "result-0.json")) as f:
        res = json.load(f)
    with np.load(os.path.join(out, "weights-0.npz"), allow_pickle=False) as z:
        res["weights"] = [z[f"arr_{k}"] for k in range(len(z.files))]
    return res


def _temporaries(d):
    return [n for n in os.listdir(d) if ".orbax-checkpoint-tmp" in n] if os.path.isdir(d) else []


def _new_temporaries(d):
    """Temporaries of a step past the newest complete one: a save in flight."""
    newest = max(orbax_dir.complete_steps(d), default=-1)
    return [n for n in _temporaries(d) if int(n.split(".")[0]) > newest]


def test_sigkill_during_async_save_resumes_from_previous_complete_step(tmp_path):
    ref_out, out, d = tmp_path / "ref", tmp_path / "out", tmp_path / "ckpt"
    _run_to_end(tmp_path / "unused", ref_out, "--no-ckpt")
    ref = _child_result(ref_out)

    # ~17 MB written per epoch: SIGKILL as soon as a step's temporary appears,
    # while Orbax is still writing it in the background.
    hit = None
    for _attempt in range(6):
        with harness.Child(_command(d, out, "--save-freq", "epoch"), env=_env()) as child:
            tmp = child.wait_until(lambda: _new_temporaries(d), timeout=240, interval=0.0005)
            child.stop(signal.SIGKILL)
        killed_step = int(tmp[0].split(".")[0]) if tmp else None
        if killed_step is not None and killed_step not in orbax_dir.complete_steps(d):
            hit = killed_step
            break
    assert hit is not None, "no SIGKILL landed inside an async save in 6 tries"
    complete = orbax_dir.complete_steps(d)
    assert all(s < hit for s in complete)
    if complete:  # the previous complete step is whole and readable
        state = rs.read_state(os.fspath(d))
        assert state["step"] == complete[-1] and state["batch"] == 0

    _run_to_end(d, out, "--save-freq", "epoch")
    got = _child_result(out)
    assert got["lr"] == ref["lr"] and got["iterations"] == ref["iterations"] == 120
    for a, b in zip(got["weights"], ref["weights"]):
        assert np.array_equal(a, b)
    assert not _temporaries(d)


# -- reading Orbax directories ------------------------------------------------


@pytest.fixture(scope="module")
def orbax_run(tmp_path_factory):
    d = os.fspath(tmp_path_factory.mktemp("orbax") / "ckpt")
    model = make_model()
    fit(model, callbacks(d, 7, max_to_keep=3))  # steps 56, 63, 70
    return d


def test_read_state_newest_and_named_step(orbax_run):
    newest = rs.read_state(orbax_run)
    assert newest["source"] == os.path.join(orbax_run, "70")
    assert (newest["epoch"], newest["batch"], newest["step"]) == (14, 0, 70)
    # Committed at the end of epoch 13: epoch 14's rate is not decided yet.
    assert np.isclose(newest["learning_rate"], 0.01 * np.exp(-0.4))
    assert len(newest["history"]) == 14
    mid = rs.read_state(orbax_run, step=63)
    assert (mid["epoch"], mid["batch"], mid["step"]) == (12, 3, 63)
    assert len(mid["history"]) == 13


def test_read_state_of_a_step_folder(orbax_run):
    state = rs.read_state(os.path.join(orbax_run, "63"))
    assert (state["epoch"], state["batch"], state["step"]) == (12, 3, 63)
    with pytest.raises(ValueError, match="is the folder of step 63"):
        rs.read_state(os.path.join(orbax_run, "63"), step=70)


def test_missing_step_is_a_clear_error(orbax_run):
    with pytest.raises(ValueError, match=r"no complete checkpoint step 5 in .* Expected one of: 56, 63, 70"):
        rs.read_state(orbax_run, step=5)


def test_restore_into_callbacks_from_an_orbax_step(orbax_run):
    sched = rs.LearningRateScheduler(documented_schedule)
    assert rs.restore(orbax_run, sched, step=56) == 11
    assert sched.get_state()["epoch"] == 11


def test_inspect_orbax_directory(orbax_run, capsys):
    assert cli.main(["inspect", orbax_run, "--step", "63", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["epoch"], data["batch"], data["step"]) == (12, 3, 63)
    assert cli.main(["inspect", orbax_run, "--step", "64"]) == 2
    assert "no complete checkpoint step 64" in capsys.readouterr().err


def test_inspect_in_a_fresh_process_imports_orbax_only_for_orbax(orbax_run):
    code = (
        "import sys, resumable_scheduler.storage.orbax_dir as o;"
        "assert 'orbax' not in sys.modules, 'imported eagerly';"
        f"print(o.read_envelope({orbax_run!r})[0]['position']['step'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "70"


def test_missing_orbax_gives_an_import_error_that_says_what_to_install(orbax_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install orbax-checkpoint"):
        rs.read_state(orbax_run)
    with pytest.raises(ImportError, match="pip install orbax-checkpoint"):
        rs.OrbaxCheckpoint("x")


# -- stock directories and keras.models.load_model ------------------------------


def _functional():
    keras.utils.set_random_seed(0)
    i = keras.Input((20,))
    model = keras.Model(i, keras.layers.Dense(10)(i))
    model.compile(keras.optimizers.SGD(), loss="mse")
    return model


@pytest.mark.parametrize("writer", ["stock", "rs"])
def test_load_model_reads_stock_and_our_directories(tmp_path, writer):
    d = os.fspath(tmp_path / "ckpt")
    cls = keras.callbacks.OrbaxCheckpoint if writer == "stock" else rs.OrbaxCheckpoint
    model = _functional()
    model.fit(X, Y, epochs=3, batch_size=1, callbacks=[cls(d)], verbose=0)
    loaded = keras.models.load_model(d)
    assert int(loaded.optimizer.iterations) == 15
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        assert np.array_equal(a, b)


@pytest.mark.xfail(strict=True, reason=(
    "Keras 3.15: load_model(orbax dir) matches variables by path; a Sequential "
    "saves 'sequential/dense/kernel' but the rebuilt one has 'dense/kernel', so "
    "its weights silently keep their initial values (true of stock and of our "
    "directories). rs.OrbaxCheckpoint's own restore matches by position."))
def test_load_model_restores_a_sequential_from_a_stock_directory(tmp_path):
    d = os.fspath(tmp_path / "ckpt")
    model = make_model()
    model.fit(X, Y, epochs=2, batch_size=1, callbacks=[keras.callbacks.OrbaxCheckpoint(d)], verbose=0)
    loaded = keras.models.load_model(d)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        assert np.array_equal(a, b)


def test_stock_directory_has_no_state_and_is_not_resumed_silently(tmp_path):
    d = os.fspath(tmp_path / "ckpt")
    model = make_model()
    model.fit(X, Y, epochs=2, batch_size=1, callbacks=[keras.callbacks.OrbaxCheckpoint(d)], verbose=0)
    with pytest.raises(ValueError, match="No resumable_scheduler state"):
        rs.read_state(d)
    model = make_model()
    with pytest.raises(ValueError, match="written by keras.callbacks.OrbaxCheckpoint"):
        fit(model, callbacks(d, "epoch"))


# -- arguments and save_best_only ---------------------------------------------


def test_same_arguments_as_stock():
    import inspect

    stock = inspect.signature(keras.callbacks.OrbaxCheckpoint).parameters
    ours = inspect.signature(rs.OrbaxCheckpoint).parameters
    for name, p in stock.items():
        assert name in ours and ours[name].default == p.default, name
    assert isinstance(rs.OrbaxCheckpoint("x"), keras.callbacks.OrbaxCheckpoint)


@pytest.mark.parametrize("kw, msg", [
    ({"save_freq": 3.5}, "Unrecognized save_freq: 3.5. Expected save_freq are 'epoch' or integer values. Received: save_freq=3.5. Expected either 'epoch' or an integer value >= 1"),
    ({"save_freq": 0}, "Unrecognized save_freq: 0. Expected save_freq are 'epoch' or integer values. Received: save_freq=0."),
    ({"max_to_keep": 0}, "Received: max_to_keep=0."),
    ({"directory": ""}, "Invalid value for argument `directory`"),
])
def test_invalid_arguments(kw, msg):
    kw = {"directory": "x", **kw}
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        rs.OrbaxCheckpoint(**kw)


def test_save_best_only_keeps_its_best_across_a_resume(tmp_path):
    d = os.fspath(tmp_path / "ckpt")

    def run(*extra):
        model = make_model()
        cb = rs.OrbaxCheckpoint(d, monitor="loss", save_best_only=True, max_to_keep=None)
        fit(model, [rs.LearningRateScheduler(documented_schedule), cb, *extra], epochs=6)
        return cb

    with pytest.raises(KeyboardInterrupt):
        run(InterruptAt(4, 0))
    saved = rs.read_state(d)["callbacks"]["OrbaxCheckpoint"]["best"]
    cb = run()
    assert 1 <= len(orbax_dir.complete_steps(d)) <= 6
    assert cb.best <= saved
    assert rs.read_state(d)["callbacks"]["OrbaxCheckpoint"]["best"] == cb.best


def test_an_s3_directory_is_refused_with_the_way_out():
    with pytest.raises(ValueError) as e:
        rs.OrbaxCheckpoint("s3://bucket/run")
    msg = str(e.value)
    assert msg.startswith("Invalid value for argument `directory`. Received: directory='s3://bucket/run'.")
    assert "s3:// object storage has no folders or renames, so Orbax cannot write there" in msg
    assert "Use rs.BackupAndRestore(backup_dir='s3://bucket/run')" in msg
    assert rs.OrbaxCheckpoint("gs://bucket/run").directory == "gs://bucket/run"  # Orbax's own
