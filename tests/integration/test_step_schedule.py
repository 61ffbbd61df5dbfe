"""rs.StepSchedule: per-step rates computed inside the compiled train step,
scaled by epoch-level callbacks without a recompile, resumed exactly
mid-epoch, and saved in every checkpoint."""

from __future__ import annotations

import math
import os

import jax
import keras
import numpy as np
import pytest
from keras import ops

import resumable_scheduler as rs
from resumable_scheduler import lr_access
from resumable_scheduler.schedules import Piecewise, StepSchedule, WarmupCosine
from tests.support import monitor_helpers as mh
from tests.support.resume_helpers import InterruptAt, X, Y


# -- the functions of the step, against NumPy -------------------------------------


def np_warmup_cosine(step, base, warmup, decay, alpha=0.0, init=0.0):
    step = np.float64(step)
    if step < warmup:
        return base * (init + (1 - init) * step / max(warmup, 1))
    p = min(max((step - warmup) / decay, 0.0), 1.0)
    return base * (alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * p)))


WC_PARAMS = [(0.1, 10, 100, 0.0, 0.0), (3e-4, 0, 50, 0.1, 0.0), (1.0, 7, 1, 0.5, 0.2), (0.5, 1000, 100000, 0.01, 0.1)]
STEPS = [0, 1, 6, 7, 8, 9, 10, 11, 50, 99, 110, 1000, 1099, 1100, 10**5, 2**24 + 1, 2**31 - 1]


@pytest.mark.parametrize("params", WC_PARAMS)
def test_warmup_cosine_matches_numpy(params):
    sched = WarmupCosine(*params)
    for step in STEPS:
        want = np_warmup_cosine(step, *params)
        got = float(sched(step))
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9, err_msg=f"step={step}")


def test_warmup_cosine_matches_keras_cosine_decay():
    ours = WarmupCosine(0.1, warmup_steps=10, decay_steps=100, alpha=0.05)
    stock = keras.optimizers.schedules.CosineDecay(0.0, 100, alpha=0.05, warmup_target=0.1, warmup_steps=10)
    for step in [0, 3, 9, 10, 11, 60, 109, 110, 500]:
        np.testing.assert_allclose(float(ours(step)), float(stock(step)), rtol=1e-6, atol=1e-9)


def test_piecewise_matches_numpy_and_keras():
    bounds, values = [3, 10, 2**30], [1.0, 0.5, 0.1, 0.0]
    ours = Piecewise(bounds, values, base_learning_rate=0.2)
    stock = keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [0.2 * v for v in values])
    for step in [0, 2, 3, 4, 10, 11, 2**30, 2**30 + 1, 2**31 - 1]:
        want = 0.2 * values[int(np.searchsorted(bounds, step, side="left"))]
        assert float(ours(step)) == pytest.approx(want, rel=1e-6, abs=0)
        assert float(ours(step)) == pytest.approx(float(stock(step)), rel=1e-6, abs=0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: WarmupCosine(-1.0, 1, 1), "Invalid value for argument `base_learning_rate`. Received: base_learning_rate=-1.0."),
        (lambda: WarmupCosine(float("nan"), 1, 1), "Invalid value for argument `base_learning_rate`. Received: base_learning_rate=nan."),
        (lambda: WarmupCosine(0.1, -1, 1), "Invalid value for argument `warmup_steps`. Received: warmup_steps=-1."),
        (lambda: WarmupCosine(0.1, 1, 0), "Invalid value for argument `decay_steps`. Received: decay_steps=0. Expected an integer >= 1."),
        (lambda: WarmupCosine(0.1, 1, 1, alpha=2), "Invalid value for argument `alpha`. Received: alpha=2."),
        (lambda: Piecewise([5, 3], [1, 2, 3]), "Invalid value for argument `boundaries`. Received: boundaries=[5, 3]. Expected strictly increasing integers."),
        (lambda: Piecewise([5], [1.0]), "Invalid value for argument `values`. Received: values=[1.0]. Expected 2 entries"),
        (lambda: StepSchedule(None), "Invalid value for argument `fn`. Received: fn=None."),
        (lambda: StepSchedule(3), "Invalid value for argument `fn`. Received: fn=3."),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value).startswith(message)


# -- lr_access: what stock refuses, ours composes ---------------------------------------


def test_stock_refuses_to_set_a_scheduled_rate_lr_access_composes():
    opt = keras.optimizers.SGD(WarmupCosine(0.1, 0, 10))
    with pytest.raises(TypeError, match="created with a `LearningRateSchedule`"):
        opt.learning_rate = 0.05  # stock Keras
    lr_access.set_rate(opt, 0.05)
    assert lr_access.get_rate(opt) == pytest.approx(0.05) and lr_access.current_rate(opt) == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"Received: value=nan\. Expected a finite learning rate >= 0\."):
        lr_access.set_rate(opt, float("nan"))
    plain = keras.optimizers.SGD(0.3)
    lr_access.set_rate(plain, 0.1)
    assert lr_access.get_rate(plain) == pytest.approx(0.1)
    stock = keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.1, 10))
    with pytest.raises(TypeError, match="holds a CosineDecay learning-rate schedule, whose rate cannot be set"):
        lr_access.set_rate(stock, 0.1)


def test_takes_the_slot_of_a_float_rate_in_checkpoints(tmp_path):
    """Same optimizer variable layout as a float rate: a checkpoint of one
    loads into the other, and the float rate becomes the base rate."""
    model = mh.make_model(lr=0.07)
    model.fit(mh.X, mh.Y, epochs=1, batch_size=16, verbose=0)
    model.save_weights(str(tmp_path / "float.weights.h5"))
    sched = WarmupCosine(0.2, 0, 100)
    other = mh.make_model(optimizer=keras.optimizers.SGD(sched))
    other.optimizer.build(other.trainable_variables)
    assert len(other.optimizer.variables) == len(model.optimizer.variables)
    other.load_weights(str(tmp_path / "float.weights.h5"))
    assert sched.base_learning_rate == pytest.approx(0.07)
    assert int(other.optimizer.iterations) == 4


# -- compiled, no recompile when the base changes ------------------------------------------

TRACED: list[int] = []


@keras.saving.register_keras_serializable(package="tests")
def inverse_sqrt(step):
    if isinstance(step, jax.core.Tracer) or isinstance(getattr(step, "value", None), jax.core.Tracer):
        TRACED.append(1)  # counted only while JAX traces the train step
    return ops.rsqrt(ops.cast(step, "float32") + 1.0)


class StepRates(keras.callbacks.Callback):
    """{iteration: rate used by that step}. Reads `self.model` (a sync per
    batch): fine in a test, and exactly the cost the schedule avoids."""

    def __init__(self):
        super().__init__()
        self.rates = {}

    def on_train_batch_begin(self, batch, logs=None):
        opt = self.model.optimizer
        self.rates[int(opt.iterations)] = float(opt.learning_rate)


def test_traced_once_and_the_base_set_each_epoch_takes_effect():
    TRACED.clear()
    sched = StepSchedule(inverse_sqrt, base_learning_rate=0.1)
    model = mh.make_model(optimizer=keras.optimizers.SGD(sched))
    rates = StepRates()
    lrs = rs.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5**epoch)
    model.fit(mh.X, mh.Y, epochs=4, batch_size=16, callbacks=[lrs, rates], verbose=0)
    if keras.backend.backend() == "jax":
        assert len(TRACED) == 1  # one compiled step for 4 epochs of changing base rates
    assert sorted(rates.rates) == list(range(16))
    for k, got in rates.rates.items():
        assert got == pytest.approx(0.1 * 0.5 ** (k // 4) / math.sqrt(k + 1), rel=1e-6)


# -- mid-epoch exact resume ---------------------------------------------------------------

EPOCHS = 8  # 5 steps an epoch (batch_size=1): 40 steps, warmup over the first 7


def run_steps(tmp_path, make_callbacks, at=None, save_freq=1):
    """Per-step rates and the outcome; interrupted at (epoch, batch) and
    resumed through rs.BackupAndRestore(save_freq) when `at` is given."""

    def make():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
        model.compile(keras.optimizers.SGD(WarmupCosine(0.05, warmup_steps=7, decay_steps=30), momentum=0.9), loss="mse")
        return model

    rates = StepRates()
    d = os.fspath(tmp_path / "backup")
    model = make()
    if at is not None:
        with pytest.raises(KeyboardInterrupt):
            model.fit(X, Y, epochs=EPOCHS, batch_size=1, verbose=0,
                      callbacks=[rs.BackupAndRestore(d, save_freq=save_freq), *make_callbacks(), rates, InterruptAt(*at)])
        model = make()
        np.random.seed(999)
    cbs = [*make_callbacks(), rates] + ([rs.BackupAndRestore(d, save_freq=save_freq)] if at is not None else [])
    h = model.fit(X, Y, epochs=EPOCHS, batch_size=1, verbose=0, callbacks=cbs)
    return rates.rates, model, h


@pytest.fixture(scope="module")
def step_reference(tmp_path_factory):
    return run_steps(tmp_path_factory.mktemp("ref"), lambda: [])


@pytest.mark.parametrize("at, save_freq", [((1, 3), 1), ((3, 0), 1), ((5, 2), 2), ((7, 4), 3)])
def test_warmup_cosine_resumes_exactly_mid_epoch(tmp_path, step_reference, at, save_freq):
    ref_rates, ref_model, _ = step_reference
    assert sorted(ref_rates) == list(range(EPOCHS * 5))
    for k, r in ref_rates.items():
        assert r == pytest.approx(np_warmup_cosine(k, 0.05, 7, 30), rel=1e-6, abs=1e-9)
    rates, model, _ = run_steps(tmp_path, lambda: [], at, save_freq)
    assert rates == ref_rates
    assert int(model.optimizer.iterations) == EPOCHS * 5
    mh.assert_same_weights(model, ref_model)


def halve_at_2_and_5(epoch, lr):
    return lr * 0.5 if epoch in (2, 5) else lr


def test_epoch_level_scheduler_on_a_step_schedule_resumes_exactly(tmp_path):
    lrs = lambda: [rs.LearningRateScheduler(halve_at_2_and_5)]  # noqa: E731
    ref_rates, ref_model, ref_h = run_steps(tmp_path / "ref", lrs)
    for k, r in ref_rates.items():
        base = 0.05 * (0.5 if k >= 10 else 1) * (0.5 if k >= 25 else 1)
        assert r == pytest.approx(base * np_warmup_cosine(k, 1.0, 7, 30), rel=1e-6, abs=1e-9)
    rates, model, h = run_steps(tmp_path, lrs, at=(4, 2), save_freq=1)
    assert rates == ref_rates
    assert h.history["learning_rate"] == ref_h.history["learning_rate"][4:]
    mh.assert_same_weights(model, ref_model)


# -- ReduceLROnPlateau scaling a step schedule -------------------------------------------------

PLATEAU = dict(monitor="loss", factor=0.5, patience=2, min_delta=5e-3, cooldown=1)


def plateau_model():
    return mh.make_model(optimizer=keras.optimizers.SGD(WarmupCosine(0.2, warmup_steps=8, decay_steps=200)))


def test_stock_plateau_cannot_scale_a_schedule():
    model = plateau_model()
    with pytest.raises(TypeError, match="created with a `LearningRateSchedule`"):
        model.fit(mh.X, mh.Y, epochs=16, batch_size=16, shuffle=False, verbose=0,
                  callbacks=[keras.callbacks.ReduceLROnPlateau(**PLATEAU)])


@pytest.fixture(scope="module")
def plateau_reference():
    rates = StepRates()
    logs, model, (cb, _) = mh.run(lambda: [rs.ReduceLROnPlateau(**PLATEAU), rates], make=plateau_model)
    return logs, model, cb, rates.rates


def test_plateau_scales_the_step_schedule(plateau_reference):
    logs, _, cb, rates = plateau_reference
    bases = [0.2 * 0.5**i for i in range(6)]
    assert cb.state.learning_rates[0] == pytest.approx(bases[-1])  # reduced 5 times
    for k, r in rates.items():
        base = r / np_warmup_cosine(k, 1.0, 8, 200) if k else None
        assert base is None or any(base == pytest.approx(b, rel=1e-5) for b in bases)
    assert logs["learning_rate"][-1] < 0.011


@pytest.mark.parametrize("mechanism, at", [("keras_file", 11), ("weights_file", 13), ("stock_backup", 9), ("stock_backup", 12)])
def test_plateau_on_step_schedule_resumes_exactly(tmp_path, plateau_reference, mechanism, at):
    """Epoch-boundary resumes (unshuffled). The step schedule continues from
    the restored `iterations`, the base rate from the optimizer variables.
    (A freshly compiled optimizer would restart `iterations` at 0, and a
    per-step schedule with it: keep the optimizer's state when resuming.)"""
    ref_logs, ref_model, _, ref_rates = plateau_reference
    rates = StepRates()
    logs, model, _ = mh.run(lambda: [rs.ReduceLROnPlateau(**PLATEAU), rates], tmp_path, mechanism, at,
                            make=plateau_model)
    assert logs["learning_rate"] == ref_logs["learning_rate"]
    assert rates.rates == ref_rates
    mh.assert_same_weights(model, ref_model)


def test_plateau_on_step_schedule_resumes_exactly_mid_epoch(tmp_path):
    """rs.BackupAndRestore(save_freq=3) interrupted inside epoch 9 (shuffled)."""

    def go(at=None):
        rates = StepRates()
        d = os.fspath(tmp_path / f"b{at}")
        model = plateau_model()
        cbs = lambda: [rs.BackupAndRestore(d, save_freq=3), rs.ReduceLROnPlateau(**PLATEAU), rates]  # noqa: E731
        if at is not None:
            with pytest.raises(KeyboardInterrupt):
                model.fit(mh.X, mh.Y, epochs=16, batch_size=16, verbose=0, callbacks=cbs() + [InterruptAt(*at)])
            model = plateau_model()
        h = model.fit(mh.X, mh.Y, epochs=16, batch_size=16, verbose=0, callbacks=cbs())
        return rates.rates, model, h.history["learning_rate"]

    ref_rates, ref_model, ref_lr = go()
    rates, model, lr = go((9, 2))
    assert rates == ref_rates
    assert lr == ref_lr[9:]
    mh.assert_same_weights(model, ref_model)


# -- saved with the model ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: WarmupCosine(0.2, 3, 40, alpha=0.1, initial_multiplier=0.05),
        lambda: Piecewise([5, 20], [1.0, 0.3, 0.1], base_learning_rate=0.4),
        lambda: StepSchedule(inverse_sqrt, base_learning_rate=0.3),
    ],
)
def test_keras_file_round_trip(tmp_path, make):
    sched = make()
    model = mh.make_model(optimizer=keras.optimizers.SGD(sched))
    model.fit(mh.X, mh.Y, epochs=2, batch_size=16, verbose=0)
    lr_access.set_rate(model.optimizer, 0.123)  # as a callback would
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    got = lr_access.step_schedule_of(loaded.optimizer)
    assert type(got) is type(sched) and got is loaded.optimizer.variables[1]
    assert got.get_config() == sched.get_config()
    assert got.base_learning_rate == pytest.approx(0.123)
    for step in (0, 3, 8, 30, 100):
        assert float(got(step)) == float(sched(step))
    assert int(loaded.optimizer.iterations) == 8
