"""Crafted checkpoint files: every read path refuses them with a bounded
`ValueError` that names the file and the field, executes nothing, and changes
nothing on disk.

The files are real ones (a real `fit` with `rs.BackupAndRestore`,
`model.save`, `model.save_weights`), then edited with h5py / zipfile the way
an attacker could; a backup file is renamed with its real CRC-32, which only
catches accidents. Read paths: `rs.read_state`, `rs.restore`,
`rs.BackupAndRestore` resuming from the backup_dir (the error comes at `fit`
start) and `resumable-scheduler inspect` (exit 2, one line, no traceback).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import h5py
import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler import cli
from resumable_scheduler.storage import backup_dir as layout

GROUP = "_resumable_scheduler_state/vars"
ENVELOPE = f"{GROUP}/envelope"
X = np.linspace(0, 1, 32, dtype="float32").reshape(8, 4)
Y = np.linspace(1, 0, 16, dtype="float32").reshape(8, 2)
MAX_MESSAGE = 1500  # bounded: a path or two plus ~100-character echoes


def make_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    return model


def scheduler():
    return rs.LearningRateScheduler(lambda epoch, lr: lr)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """Real files: a backup_dir left by a real fit, a .keras and a .weights.h5."""
    d = tmp_path_factory.mktemp("real")
    model = make_model()
    model.fit(X, Y, epochs=2, batch_size=4, verbose=0,
              callbacks=[scheduler(), rs.EarlyStopping(monitor="loss", patience=5),
                         rs.BackupAndRestore(str(d / "backup"), delete_checkpoint=False)])
    model.save(str(d / "model.keras"))
    model.save_weights(str(d / "model.weights.h5"))
    (ckpt,) = layout.list_checkpoints(str(d / "backup"))
    return {"keras": str(d / "model.keras"), "h5": str(d / "model.weights.h5"),
            "backup": str(d / "backup"), "ckpt": ckpt}


# -- crafting ------------------------------------------------------------------------------


def _edit_h5(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)


def _replace_envelope(f, data):
    del f[ENVELOPE]
    f[ENVELOPE] = np.frombuffer(data, dtype=np.uint8)


def _envelope_of(f):
    return json.loads(np.asarray(f[ENVELOPE]).tobytes())


def craft(originals, tmp_path, kind, edit):
    """A copy of the real `kind` file ("h5", "keras" or "backup") with
    `edit(h5py_file)` applied; returns the path to read (the backup_dir for
    "backup", whose one file is renamed with its real CRC)."""
    if kind == "h5":
        path = str(tmp_path / "crafted.weights.h5")
        shutil.copy(originals["h5"], path)
        _edit_h5(path, edit)
        return path
    if kind == "keras":
        path = str(tmp_path / "crafted.keras")
        inner = str(tmp_path / "inner.weights.h5")
        with zipfile.ZipFile(originals["keras"]) as zin:
            entries = {n: zin.read(n) for n in zin.namelist()}
        with open(inner, "wb") as f:
            f.write(entries["model.weights.h5"])
        _edit_h5(inner, edit)
        with open(inner, "rb") as f:
            entries["model.weights.h5"] = f.read()
        os.remove(inner)
        with zipfile.ZipFile(path, "w") as zout:
            for name, data in entries.items():
                zout.writestr(name, data)
        return path
    d = str(tmp_path / "backup")
    shutil.copytree(originals["backup"], d)
    (path,) = layout.list_checkpoints(d)
    _edit_h5(path, edit)
    seq = os.path.basename(path).split("-")[1]
    os.rename(path, os.path.join(d, f"ckpt-{seq}-{layout.crc32(path):08x}.weights.h5"))
    return d


def with_envelope(change):
    """An edit that rewrites the envelope JSON: `change(doc)` returns new bytes or a dict."""
    def edit(f):
        new = change(_envelope_of(f))
        _replace_envelope(f, new if isinstance(new, bytes) else json.dumps(new).encode())
    return edit


def scheduler_field(key, value):
    def change(doc):
        doc["callbacks"]["LearningRateScheduler"][key] = value
        return doc
    return change


def nested(doc):
    raw = json.dumps(doc).encode()
    return raw.replace(b'"callbacks": {', b'"callbacks": {"Deep": ' + b"[" * 100_000 + b"]" * 100_000 + b", ", 1)


def vlen_envelope(f):
    text = json.dumps(_envelope_of(f))
    del f[ENVELOPE]
    f.create_dataset(ENVELOPE, data=text, dtype=h5py.string_dtype())


def petabyte_envelope(f):
    """An envelope whose header claims 2**50 bytes (unallocated chunks read
    as fill value): the file stays small, reading it would not."""
    del f[ENVELOPE]
    f.create_dataset(ENVELOPE, shape=(2**50,), dtype=np.uint8, chunks=(1024,))


def position(**values):
    def change(doc):
        doc["position"] = {"epoch": 0, "batch": 0, "step": 0, **values}
        return doc
    return change


def only_early_stopping_at(epoch):
    def change(doc):
        doc["callbacks"] = {"EarlyStopping": doc["callbacks"]["EarlyStopping"]}
        doc["position"] = {"epoch": epoch, "batch": 0, "step": 0}
        return doc
    return change


def huge_format(doc):
    doc["format"] = "x" * 10_000_000
    return doc


def huge_history(doc):
    doc["callbacks"]["LearningRateScheduler"]["history"] = [0.01] * 2_000_000
    return doc


# (id, kinds, edit, fragments every message must contain)
CASES = [
    ("nested-json", ("h5", "keras", "backup"), with_envelope(nested),
     ["field `callbacks.Deep[0][0]", "nests deeper than 32 levels"]),
    ("vlen-string-envelope", ("h5", "keras", "backup"), vlen_envelope,
     ["Invalid dataset `_resumable_scheduler_state/vars/envelope`", "dtype is object"]),
    ("petabyte-envelope", ("h5", "keras", "backup"), petabyte_envelope,
     ["Invalid dataset `_resumable_scheduler_state/vars/envelope`", "claims 1125899906842624 bytes",
      "more than its file holds"]),
    ("step-10**30", ("h5", "keras", "backup"), with_envelope(scheduler_field("step", 10**30)),
     ["`callbacks.LearningRateScheduler`", "field `step`", "step=1000000000000000000000000000000",
      "<= 9223372036854775807"]),
    ("step-2**64", ("h5", "keras", "backup"), with_envelope(scheduler_field("step", 2**64)),
     ["field `step`", "step=18446744073709551616"]),
    ("position-step-2**64", ("h5", "keras", "backup"), with_envelope(position(step=2**64)),
     ["field `position.step`", "step=18446744073709551616"]),
    ("position-epoch-negative", ("h5", "keras"), with_envelope(position(epoch=-5)),
     ["field `position.epoch`", "epoch=-5", "Expected an integer >= 0"]),
    ("only-early-stopping-position", ("h5", "keras"), with_envelope(only_early_stopping_at(-7)),
     ["field `position.epoch`", "epoch=-7"]),
    ("huge-format", ("h5", "backup"), with_envelope(huge_format),
     ["Invalid resumable-state envelope", "format='xxxx", "Expected format='resumable_scheduler'"]),
    ("huge-history", ("h5",), with_envelope(huge_history),
     ["field `history`", "Expected 2 or 3 entries"]),
]
PARAMS = [pytest.param(kind, edit, fragments, id=f"{name}-{kind}")
          for name, kinds, edit, fragments in CASES for kind in kinds]


def snapshot(root):
    """Every path under `root` with its bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.join(dirpath, name)] = None
        for name in filenames:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[p] = f.read()
    return out


def check_message(message, path, fragments):
    assert path in message or os.path.basename(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message[:2000])
    assert len(message) < MAX_MESSAGE, len(message)


def named_file(kind, path):
    """What the message must name: the file itself, or the backup's one file."""
    return layout.list_checkpoints(path)[0] if kind == "backup" else path


def refused_by_every_reader(path, named, fragments, capsys):
    """`rs.read_state`, `rs.restore` and `inspect` each refuse `path` with
    one bounded message naming `named` and every fragment."""
    with pytest.raises(ValueError) as info:
        rs.read_state(path)
    check_message(str(info.value), named, fragments)
    with pytest.raises(ValueError) as info:
        rs.restore(path, scheduler())
    check_message(str(info.value), named, fragments)
    assert cli.main(["inspect", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    check_message(err, named, fragments)


@pytest.mark.parametrize("kind, edit, fragments", PARAMS)
def test_read_state_refuses_a_crafted_file(originals, tmp_path, kind, edit, fragments):
    path = craft(originals, tmp_path, kind, edit)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError) as info:
        rs.read_state(path)
    check_message(str(info.value), named_file(kind, path), fragments)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind, edit, fragments", PARAMS)
def test_restore_refuses_a_crafted_file_and_changes_nothing(originals, tmp_path, kind, edit, fragments):
    path = craft(originals, tmp_path, kind, edit)
    before = snapshot(tmp_path)
    lrs, es = scheduler(), rs.EarlyStopping(monitor="loss")
    with pytest.raises(ValueError) as info:
        rs.restore(path, lrs, es)
    check_message(str(info.value), named_file(kind, path), fragments)
    assert lrs._state is None and es.get_state()["epoch"] == 0  # nothing adopted
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind, edit, fragments", PARAMS)
def test_inspect_exits_2_with_one_line(originals, tmp_path, kind, edit, fragments, capsys):
    path = craft(originals, tmp_path, kind, edit)
    before = snapshot(tmp_path)
    code = cli.main(["inspect", path])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("resumable-scheduler inspect: error: cannot inspect ")
    assert "Traceback" not in err
    check_message(err, named_file(kind, path), fragments)
    assert snapshot(tmp_path) == before


BACKUP_PARAMS = [p for p in PARAMS if p.id.endswith("-backup")]


@pytest.mark.parametrize("kind, edit, fragments", BACKUP_PARAMS)
def test_backup_and_restore_refuses_a_crafted_backup_at_fit_start(originals, tmp_path, kind, edit, fragments):
    d = craft(originals, tmp_path, kind, edit)
    before = snapshot(tmp_path)
    model = make_model()
    weights = [w.copy() for w in model.get_weights()]
    # rs.BackupAndRestore reports an unusable backup_dir as a ValueError
    # that carries the file's.
    with pytest.raises(ValueError) as info:
        model.fit(X, Y, epochs=4, batch_size=4, verbose=0,
                  callbacks=[scheduler(), rs.BackupAndRestore(d)])
    message = str(info.value)
    assert f"No usable checkpoint in backup_dir={d!r}" in message
    check_message(message, named_file(kind, d), fragments)
    assert snapshot(tmp_path) == before  # delete_checkpoint=True deleted nothing
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights))


# -- crafted arrays: the RNG keys of a backup ------------------------------------------------


def wrong_shape_rng_key(f):
    key = f"{GROUP}/training::rng_numpy_keys"
    del f[key]
    f[key] = np.arange(3, dtype=np.uint32)


def out_of_range_python_rng(f):
    key = f"{GROUP}/training::rng_python_internal"
    words = np.asarray(f[key]).copy()
    words[-1] = 10**6  # the position in the 624-word state
    del f[key]
    f[key] = words


@pytest.mark.parametrize("edit, field, fragment", [
    (wrong_shape_rng_key, "training::rng_numpy_keys", "shape (3,)"),
    (out_of_range_python_rng, "training::rng_python_internal", "position 1000000"),
])
def test_a_crafted_rng_state_is_refused_on_every_read_path(originals, tmp_path, edit, field, fragment, capsys):
    d = craft(originals, tmp_path, "backup", edit)
    (ckpt,) = layout.list_checkpoints(d)
    before = snapshot(tmp_path)
    fragments = [f"field `{field}`", fragment]
    refused_by_every_reader(d, ckpt, fragments, capsys)
    # Today's IndexError / ValueError came from inside fit, after the weights
    # were loaded; now the file is refused before anything is applied.
    model = make_model()
    with pytest.raises(ValueError) as info:
        model.fit(X, Y, epochs=4, batch_size=4, verbose=0, callbacks=[rs.BackupAndRestore(d)])
    check_message(str(info.value), ckpt, fragments)
    assert snapshot(tmp_path) == before


# -- out-of-range counts: they used to pass read_state, then fit overflowed ------------------


@pytest.mark.parametrize("kind", ["h5", "keras"])
@pytest.mark.parametrize("step", [10**30, 2**64])
def test_a_huge_step_is_refused_before_fit(originals, tmp_path, kind, step):
    path = craft(originals, tmp_path, kind, with_envelope(scheduler_field("step", step)))
    lrs = scheduler()
    with pytest.raises(ValueError, match=rf"field `step` of ScheduleState\. Received: step={step}\."):
        rs.restore(path, lrs)
    model = make_model()
    model.fit(X, Y, epochs=1, batch_size=4, verbose=0, callbacks=[lrs])  # no OverflowError
    assert int(model.optimizer.iterations) == 2


@pytest.mark.parametrize("kind", ["h5", "keras"])
def test_restore_never_returns_a_negative_epoch(originals, tmp_path, kind):
    path = craft(originals, tmp_path, kind, with_envelope(position(epoch=-5)))
    with pytest.raises(ValueError, match="field `position.epoch`"):
        rs.restore(path, scheduler())
    (tmp_path / "es").mkdir()
    path = craft(originals, tmp_path / "es", kind, with_envelope(only_early_stopping_at(-7)))
    with pytest.raises(ValueError, match="field `position.epoch`"):
        rs.restore(path, rs.EarlyStopping())


# -- a .keras whose weights are not HDF5 --------------------------------------------------------


def garbage_keras(originals, tmp_path):
    path = str(tmp_path / "garbage.keras")
    with zipfile.ZipFile(originals["keras"]) as zin, zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, b"not HDF5 " * 1000 if name == "model.weights.h5" else zin.read(name))
    return path


def test_garbage_h5_inside_a_valid_keras_zip(originals, tmp_path, capsys):
    path = garbage_keras(originals, tmp_path)
    before = snapshot(tmp_path)
    fragments = ["model.weights.h5", "Cannot read the HDF5 file"]
    refused_by_every_reader(path, path, fragments, capsys)
    assert snapshot(tmp_path) == before


# -- nothing executes ---------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what unpickling would run
        return (open, (self.marker, "w"))


def test_object_and_vlen_datasets_are_refused_unread(originals, tmp_path):
    """A pickled payload stored as a variable-length bytes dataset beside the
    callback arrays (where `rs.EarlyStopping`'s best weights live) is refused
    by its dtype: nothing is unpickled, nothing is created."""
    import pickle

    marker = str(tmp_path / "executed")
    payload = pickle.dumps(_Payload(marker))

    def edit(f):
        ragged = np.empty(1, dtype=object)
        ragged[0] = np.frombuffer(payload, dtype=np.uint8)
        f.create_dataset(f"{GROUP}/arrays::EarlyStopping::w0", data=ragged,
                         dtype=h5py.vlen_dtype(np.dtype("uint8")))
        f.create_dataset(f"{GROUP}/arrays::EarlyStopping::w1",
                         data=pickle.dumps(_Payload(marker), protocol=0).decode("ascii"),
                         dtype=h5py.string_dtype())

    path = craft(originals, tmp_path, "h5", edit)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError) as info:
        rs.restore(path, rs.EarlyStopping(monitor="loss", restore_best_weights=True))
    check_message(str(info.value), path, ["Invalid dataset `_resumable_scheduler_state/vars/arrays::EarlyStopping::w0`",
                                          "Expected a plain numeric dtype"])
    assert not os.path.exists(marker)
    assert snapshot(tmp_path) == before


# -- the command line never prints a traceback ------------------------------------------------


def test_inspect_in_a_child_process_prints_one_line_and_no_traceback(originals, tmp_path):
    path = craft(originals, tmp_path, "h5", with_envelope(nested))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "resumable_scheduler.cli", "inspect", path],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    check_message(proc.stderr, path, ["nests deeper than 32 levels"])
