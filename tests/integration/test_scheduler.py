"""`rs.LearningRateScheduler` on its own: the documented example, drop-in
behaviour, schedule outputs and errors, multi-optimizer models."""

import math
import re

import jax.numpy as jnp
import keras
import numpy as np
import pytest
from keras import ops

import resumable_scheduler as rs
from resumable_scheduler import demo

FINAL_LR = 0.01 * math.exp(-0.5)  # 0.006065...


def documented_schedule(epoch, lr):
    if epoch < 10:
        return lr
    else:
        return lr * ops.exp(-0.1)


def float_schedule(epoch, lr):
    if epoch < 10:
        return lr
    return lr * math.exp(-0.1)


def tiny_model():
    model = keras.models.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(), loss="mse")
    return model


def lr_of(model):
    return float(ops.convert_to_numpy(model.optimizer.learning_rate))


def test_documented_example_with_a_jax_array_schedule_ends_at_0_00607():
    # The docs' example, with (5, 10) targets (FINDINGS row 1) and the docs'
    # own unscaled inputs: the weights diverge, the rate does not care. The
    # schedule returns a 0-d backend tensor (a JAX array on JAX, torch on torch).
    model = tiny_model()
    decayed = documented_schedule(10, 0.01)
    assert keras.ops.is_tensor(decayed) and keras.ops.ndim(decayed) == 0
    if keras.backend.backend() == "jax":
        assert isinstance(decayed, jnp.ndarray)
    callback = rs.LearningRateScheduler(documented_schedule)
    history = model.fit(np.arange(100).reshape(5, 20), np.zeros((5, 10)),
                        epochs=15, callbacks=[callback], verbose=0)
    assert len(history.history["loss"]) == 15
    assert round(lr_of(model), 5) == 0.00607
    assert np.isclose(lr_of(model), FINAL_LR, rtol=1e-6)
    assert callback.state.epoch == 15
    assert np.allclose(callback.state.history[-5:], [0.01 * math.exp(-0.1 * k) for k in range(1, 6)], rtol=1e-6)


def test_stock_callback_still_rejects_the_documented_jax_schedule():
    # FINDINGS row 2: the reason this package exists. If Keras fixes it, the
    # README's table must change.
    model = tiny_model()
    with pytest.raises(ValueError, match=re.escape("The output of the `schedule` function should be a float. Got: 0.00904837")):
        model.fit(np.arange(100).reshape(5, 20), np.zeros((5, 10)), epochs=11,
                  callbacks=[keras.callbacks.LearningRateScheduler(documented_schedule)], verbose=0)


def test_logs_and_verbose_messages_match_the_stock_callback(capsys):
    x, y = demo.data()
    outputs, logs = [], []
    for cb in (keras.callbacks.LearningRateScheduler(float_schedule, verbose=1),
               rs.LearningRateScheduler(float_schedule, verbose=1)):
        model = demo.build_model()
        h = model.fit(x, y, epochs=12, batch_size=5, callbacks=[cb], verbose=0)
        outputs.append(capsys.readouterr().out)
        logs.append(h.history["learning_rate"])
    assert outputs[0] == outputs[1]
    assert "Epoch 12: LearningRateScheduler setting learning rate to 0.00818730" in outputs[1]
    np.testing.assert_array_equal(logs[0], logs[1])
    assert len(logs[1]) == 12


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: 0.005, id="python-float"),
        pytest.param(lambda: 1, id="python-int"),
        pytest.param(lambda: np.float32(0.005), id="numpy-float32"),
        pytest.param(lambda: np.float64(0.005), id="numpy-float64"),
        pytest.param(lambda: np.array(0.005), id="numpy-0d"),
        pytest.param(lambda: jnp.array(0.005), id="jax-0d"),
        pytest.param(lambda: ops.convert_to_tensor(0.005), id="keras-tensor"),
    ],
)
def test_accepts_every_real_scalar(make):
    model = tiny_model()
    value = make()
    x, y = demo.data()
    model.fit(x, y, epochs=1, batch_size=5, verbose=0,
              callbacks=[rs.LearningRateScheduler(lambda epoch, lr: value)])
    assert lr_of(model) == pytest.approx(float(np.asarray(value)), rel=1e-6)


SCALAR = "should be a real scalar (float, NumPy scalar, or 0-d array)"
FINITE = "should be a finite learning rate >= 0"


@pytest.mark.parametrize(
    "value, message",
    [
        pytest.param(float("nan"), f"The output of the `schedule` function at epoch 0 {FINITE}. Got: nan.", id="nan"),
        pytest.param(float("inf"), f"The output of the `schedule` function at epoch 0 {FINITE}. Got: inf.", id="inf"),
        pytest.param(np.float32("nan"), f"The output of the `schedule` function at epoch 0 {FINITE}. Got: nan.", id="numpy-nan"),
        pytest.param(-0.1, f"The output of the `schedule` function at epoch 0 {FINITE}. Got: -0.1.", id="negative"),
        pytest.param([0.1], f"The output of the `schedule` function at epoch 0 {SCALAR}. Got: [0.1] of type list.", id="list"),
        pytest.param("0.1", f"The output of the `schedule` function at epoch 0 {SCALAR}. Got: '0.1' of type str.", id="string"),
        pytest.param(None, f"The output of the `schedule` function at epoch 0 {SCALAR}. Got: None of type NoneType.", id="none"),
        pytest.param(True, f"The output of the `schedule` function at epoch 0 {SCALAR}. Got: True of type bool.", id="bool"),
        pytest.param(np.array([0.1]), f"The output of the `schedule` function at epoch 0 {SCALAR}. Got: array([0.1]) of type ndarray.", id="numpy-1-element"),
        pytest.param(jnp.array([0.1]), f"The output of the `schedule` function at epoch 0 {SCALAR}. Got: Array([0.1], dtype=float32) of type ArrayImpl.", id="jax-1-element"),
        pytest.param(1 + 2j, f"The output of the `schedule` function at epoch 0 {SCALAR}. Got: (1+2j) of type complex.", id="complex"),
    ],
)
def test_bad_schedule_outputs_raise_with_exact_text(value, message):
    model = tiny_model()
    x, y = demo.data()
    with pytest.raises(ValueError) as info:
        model.fit(x, y, epochs=1, batch_size=5, verbose=0,
                  callbacks=[rs.LearningRateScheduler(lambda epoch, lr: value)])
    assert str(info.value) == message
    assert lr_of(model) == pytest.approx(0.01)  # nothing was applied


def test_a_bad_output_names_the_epoch_it_happened_at():
    model = tiny_model()
    x, y = demo.data()
    with pytest.raises(ValueError, match=re.escape("function at epoch 3 should be a finite learning rate >= 0. Got: -1.0.")):
        model.fit(x, y, epochs=5, batch_size=5, verbose=0,
                  callbacks=[rs.LearningRateScheduler(lambda epoch, lr: -1.0 if epoch == 3 else lr)])


def test_a_huge_integer_output_is_a_valueerror():
    model = tiny_model()
    x, y = demo.data()
    with pytest.raises(ValueError, match=re.escape("function at epoch 0 should be a finite learning rate >= 0")):
        model.fit(x, y, epochs=1, batch_size=5, verbose=0,
                  callbacks=[rs.LearningRateScheduler(lambda epoch, lr: 10**400)])


def test_a_non_callable_schedule_is_rejected():
    with pytest.raises(ValueError, match=re.escape("Invalid value for argument `schedule`. Received: schedule=0.1.")):
        rs.LearningRateScheduler(0.1)


def test_typeerror_inside_a_two_argument_schedule_reaches_the_user_unchanged():
    class MyError(TypeError):
        pass

    def schedule(epoch, lr):
        raise MyError("unsupported operand inside my schedule")

    model = tiny_model()
    x, y = demo.data()
    with pytest.raises(MyError, match="^unsupported operand inside my schedule$"):
        model.fit(x, y, epochs=1, batch_size=5, verbose=0, callbacks=[rs.LearningRateScheduler(schedule)])


def test_typeerror_inside_a_legacy_schedule_reaches_the_user_unchanged():
    def schedule(epoch):
        return "a" + epoch  # TypeError raised by the user's own code

    model = tiny_model()
    x, y = demo.data()
    with pytest.raises(TypeError, match=re.escape('can only concatenate str (not "int") to str')):
        model.fit(x, y, epochs=1, batch_size=5, verbose=0, callbacks=[rs.LearningRateScheduler(schedule)])


def test_legacy_one_argument_schedule():
    calls = []

    def schedule(epoch):
        calls.append(epoch)
        return 0.01 * 0.5**epoch

    model = tiny_model()
    x, y = demo.data()
    model.fit(x, y, epochs=4, batch_size=5, verbose=0, callbacks=[rs.LearningRateScheduler(schedule)])
    assert calls == [0, 1, 2, 3]
    assert lr_of(model) == pytest.approx(0.00125)


@pytest.mark.parametrize(
    "schedule, expected",
    [
        pytest.param(lambda epoch, lr=None: 0.003, 0.003, id="default-lr"),
        pytest.param(lambda *args: 0.004, 0.004, id="varargs"),
        pytest.param(lambda epoch, *, lr=0.005: lr, 0.005, id="keyword-only"),
    ],
)
def test_call_form_is_decided_from_the_signature(schedule, expected):
    model = tiny_model()
    x, y = demo.data()
    model.fit(x, y, epochs=1, batch_size=5, verbose=0, callbacks=[rs.LearningRateScheduler(schedule)])
    assert lr_of(model) == pytest.approx(expected)


def test_get_state_set_state_and_state():
    model = demo.build_model()
    x, y = demo.data()
    cb = rs.LearningRateScheduler(demo.schedule)
    model.fit(x, y, epochs=12, batch_size=1, shuffle=False, verbose=0, callbacks=[cb])
    state = cb.get_state()
    assert (state["epoch"], state["batch"], state["step"]) == (12, 0, 60)
    assert state["learning_rate"] == pytest.approx(0.01 * math.exp(-0.2))
    assert cb.state == rs.ScheduleState.from_dict(state)
    assert isinstance(cb, rs.Resumable)

    # A new callback adopting the state continues where this one stopped,
    # even on a freshly compiled optimizer.
    model.compile(keras.optimizers.SGD(), loss="mse")
    cb2 = rs.LearningRateScheduler(demo.schedule)
    cb2.set_state(state)
    model.fit(x, y, epochs=15, initial_epoch=12, batch_size=1, shuffle=False, verbose=0, callbacks=[cb2])
    assert round(lr_of(model), 5) == 0.00607
    assert int(model.optimizer.iterations) == 75
    assert cb2.state.history == pytest.approx(demo_reference_history())


def demo_reference_history():
    return [0.01] * 10 + [0.01 * math.exp(-0.1 * k) for k in range(1, 6)]


def float_schedule(epoch, lr):
    return lr if epoch < 10 else lr * math.exp(-0.1)


@pytest.mark.parametrize("epochs", [12, 15])
def test_a_second_fit_from_epoch_0_starts_the_schedule_afresh_as_stock(epochs):
    # Calling fit twice with the same callback and no checkpoint: Keras
    # restarts the epoch numbers at 0 and calls the schedule again from the
    # optimizer's current rate. So does ours (it used to replay the first
    # fit's rates instead).
    x, y = demo.data()
    final = {}
    for name, make in [("stock", keras.callbacks.LearningRateScheduler), ("ours", rs.LearningRateScheduler)]:
        model = demo.build_model()
        cb = make(float_schedule)
        model.fit(x, y, epochs=epochs, batch_size=5, verbose=0, callbacks=[cb])
        model.fit(x, y, epochs=epochs, batch_size=5, verbose=0, callbacks=[cb])
        final[name] = lr_of(model)
    assert final["ours"] == final["stock"]
    assert final["ours"] == pytest.approx(0.01 * math.exp(-0.2 * (epochs - 10)))


def test_a_second_fit_with_initial_epoch_continues_the_history():
    model = demo.build_model()
    x, y = demo.data()
    cb = rs.LearningRateScheduler(demo.schedule)
    model.fit(x, y, epochs=12, batch_size=5, verbose=0, callbacks=[cb])
    model.fit(x, y, epochs=15, initial_epoch=12, batch_size=5, verbose=0, callbacks=[cb])
    assert lr_of(model) == pytest.approx(0.01 * math.exp(-0.5))
    assert len(cb.state.history) == 15


# -- multi-optimizer models (keras.optimizers.MultiOptimizer, Keras >= 3.13) --


def multi_model():
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(8, name="a"), keras.layers.Dense(10, name="b")])
    opt_map = keras.optimizers.OptimizerMap(default_optimizer=keras.optimizers.SGD(0.01))
    opt_map["(.*/)?a/.*"] = keras.optimizers.SGD(0.02)  # fresh paths are "sequential/a/..."
    model.compile(keras.optimizers.MultiOptimizer(opt_map), loss="mse")
    return model


def test_multi_optimizer_each_rate_follows_the_schedule(capsys, tmp_path):
    model = multi_model()
    x, y = demo.data()
    cb = rs.LearningRateScheduler(demo.schedule, verbose=1)
    h = model.fit(x, y, epochs=15, batch_size=1, shuffle=False, verbose=0, callbacks=[cb])
    a, b = model.optimizer.optimizers
    assert float(a.learning_rate) == pytest.approx(0.02 * math.exp(-0.5))
    assert round(float(b.learning_rate), 5) == 0.00607
    assert f"LearningRateScheduler setting {a.name} learning rate to" in capsys.readouterr().out
    assert h.history[f"learning_rate_{b.name}"][-1] == pytest.approx(0.01 * math.exp(-0.5))
    state = cb.get_state()
    assert state["optimizer_learning_rates"] == pytest.approx([0.02 * math.exp(-0.5), 0.01 * math.exp(-0.5)])
    assert len(state["optimizer_histories"]) == 2 and len(state["optimizer_histories"][0]) == 15


def test_multi_optimizer_resume_from_a_keras_file(tmp_path):
    x, y = demo.data()
    ref = multi_model()
    ref.fit(x, y, epochs=15, batch_size=1, shuffle=False, verbose=0,
            callbacks=[rs.LearningRateScheduler(demo.schedule)])

    model = multi_model()
    model.fit(x, y, epochs=12, batch_size=1, shuffle=False, verbose=0,
              callbacks=[rs.LearningRateScheduler(demo.schedule)])
    path = str(tmp_path / "multi.keras")
    model.save(path)

    loaded = keras.models.load_model(path)
    cb = rs.LearningRateScheduler(demo.schedule)
    initial_epoch = rs.restore(path, cb)
    assert initial_epoch == 12
    loaded.fit(x, y, epochs=15, initial_epoch=initial_epoch, batch_size=1, shuffle=False,
               verbose=0, callbacks=[cb])
    rates = [float(o.learning_rate) for o in loaded.optimizer.optimizers]
    assert rates == pytest.approx([0.02 * math.exp(-0.5), 0.01 * math.exp(-0.5)], rel=1e-6)
    for w_ref, w in zip(ref.get_weights(), loaded.get_weights()):
        assert np.array_equal(w_ref, w)


# -- the stock behaviours the README's feature table quotes ---------------------


def test_stock_callback_applies_a_nan_rate_silently():
    model = tiny_model()
    x, y = demo.data()
    model.fit(x, y, epochs=1, batch_size=5, verbose=0,
              callbacks=[keras.callbacks.LearningRateScheduler(lambda epoch, lr: float("nan"))])
    assert math.isnan(lr_of(model))


def test_stock_callback_masks_a_typeerror_inside_the_schedule():
    def schedule(epoch, lr):
        raise TypeError("the user's real error")

    model = tiny_model()
    x, y = demo.data()
    with pytest.raises(TypeError) as info:
        model.fit(x, y, epochs=1, batch_size=5, verbose=0,
                  callbacks=[keras.callbacks.LearningRateScheduler(schedule)])
    assert "the user's real error" not in str(info.value)
    assert "missing 1 required positional argument: 'lr'" in str(info.value)
