"""`rs.OrbaxCheckpoint` around the edges of `fit`: `_save_checkpoint(step)`
after `set_model` (as Keras's own tests call it), and a `fit` that raises
while a background save runs."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np

import resumable_scheduler as rs


def named_model():
    inputs = keras.Input((3,), name="x")
    outputs = keras.layers.Dense(2, name="out")(keras.layers.Dense(4, name="hidden")(inputs))
    model = keras.Model(inputs, outputs, name="named")
    model.compile(keras.optimizers.Adam(), loss="mse")
    return model


def test_save_checkpoint_after_set_model_writes_a_loadable_step(tmp_path):
    model = named_model()
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), verbose=0)
    cb = rs.OrbaxCheckpoint(tmp_path, save_on_background=True)
    cb.set_model(model)
    cb._save_checkpoint(step=7)
    cb.checkpointer.close()
    assert sorted(os.listdir(tmp_path)) == ["7"]
    loaded = keras.saving.load_model(str(tmp_path))
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert rs.read_state(tmp_path)["epoch"] == 0


CHILD = textwrap.dedent(
    """
    import os, sys
    os.environ["KERAS_BACKEND"] = "jax"
    import numpy as np, keras
    import resumable_scheduler as rs

    directory, mode = sys.argv[1], sys.argv[2]

    class Boom(keras.callbacks.Callback):
        # Batch *begin* runs on the main thread, in order (Keras may run
        # batch-end hooks in a thread pool): the save after batch 2 is in
        # flight when this raises.
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 3:
                if mode == "write_fails":  # the write in flight fails
                    finish = type(ckpt.checkpointer).close
                    def close(self):
                        finish(self)
                        raise OSError("No space left on device (simulated)")
                    type(ckpt.checkpointer).close = close
                raise RuntimeError("user error at batch 2")

    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(), loss="mse")
    ckpt = rs.OrbaxCheckpoint(directory, save_freq=1, save_on_background=True)
    model.fit(np.ones((50, 20)), np.zeros((50, 10)), epochs=2, batch_size=5,
              callbacks=[ckpt, Boom()], verbose=0)
    """
)


def run_child(tmp_path, mode):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    directory = tmp_path / "ckpt"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(script), str(directory), mode],
                          capture_output=True, text=True, timeout=300, env=env)
    return proc, directory


def test_a_fit_raising_during_a_background_save_prints_one_error(tmp_path):
    proc, directory = run_child(tmp_path, "raise")
    err = proc.stderr
    assert proc.returncode == 1
    assert err.count("Traceback") == 1, err[-5000:]
    assert "RuntimeError: user error at batch 2" in err
    assert "cannot schedule new futures" not in err and "_SignalingThread" not in err, err[-5000:]
    # The save that was running finished: every step is complete.
    assert not [n for n in os.listdir(directory) if "tmp" in n]
    assert rs.read_state(directory)["batch"] == 3


def test_a_background_save_failing_at_exit_is_one_line(tmp_path):
    proc, _ = run_child(tmp_path, "write_fails")
    err = proc.stderr
    assert err.count("Traceback") == 1, err[-5000:]
    assert "RuntimeError: user error at batch 2" in err
    lines = [line for line in err.splitlines() if line.startswith("rs.OrbaxCheckpoint:")]
    assert len(lines) == 1 and "OSError: No space left on device (simulated)" in lines[0], err[-3000:]


def test_an_invalid_save_freq_starts_with_keras_own_sentence(tmp_path):
    import pytest

    with pytest.raises(ValueError) as stock:
        keras.callbacks.OrbaxCheckpoint(str(tmp_path / "stock"), save_freq="invalid")
    keras_sentence = str(stock.value)
    assert keras_sentence == "Unrecognized save_freq: invalid. Expected save_freq are 'epoch' or integer values"
    for bad in ("invalid", 0, 2.5):  # stock accepts 0; we need at least one batch
        with pytest.raises(ValueError) as ours:
            rs.OrbaxCheckpoint(tmp_path / "ours", save_freq=bad)
        assert str(ours.value).startswith(keras_sentence.replace("invalid", str(bad)) + ". Received: "), str(ours.value)
        assert f"Received: save_freq={bad!r}. Expected either 'epoch' or an integer value >= 1" in str(ours.value)
