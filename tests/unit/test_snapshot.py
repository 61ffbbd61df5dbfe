"""resumable_scheduler.snapshot: the checkpoint snapshot's schema and codec."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from resumable_scheduler import snapshot
from resumable_scheduler.snapshot import Position, Snapshot

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "fixtures")


def test_the_snapshot_module_does_not_import_keras():
    code = "import sys, resumable_scheduler.snapshot, resumable_scheduler.protocol; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_snapshot_round_trips_through_its_envelope_and_flat_arrays():
    snap = Snapshot(
        position=Position(epoch=12, batch=3, step=63),
        callbacks={"LearningRateScheduler": {"epoch": 12}, "EarlyStopping": {"epoch": 11}},
        rng={"python": [1], "numpy": {"name": "MT19937"}},
        items={snapshot.RNG_NOW: {"python": [2]}, snapshot.INPUT: {"batch_size": 1}, snapshot.RUN: {"epochs": 15}},
        arrays={"rng_numpy_key": np.arange(4, dtype=np.uint32), "metric_0": np.float32(2.5)},
        callback_arrays={"EarlyStopping": {"best_0": np.ones((2, 2), "float32")}},
    )
    flat = snap.flat_arrays()
    assert sorted(flat) == [
        "arrays::EarlyStopping::best_0", "training::metric_0", "training::rng_numpy_key",
    ]
    back = Snapshot.decode(snap.encode(), arrays=flat, where="x.weights.h5")
    assert back.position == snap.position and back.callbacks == snap.callbacks and back.rng == snap.rng
    assert back.items == snap.items
    assert sorted(back.arrays) == sorted(snap.arrays)
    for name, value in snap.arrays.items():
        assert np.array_equal(back.arrays[name], value) and back.arrays[name].dtype == np.asarray(value).dtype
    assert np.array_equal(back.callback_arrays["EarlyStopping"]["best_0"], np.ones((2, 2), "float32"))
    assert back.resume_epoch() == 12


def test_the_envelope_spells_each_item_by_its_schema_name():
    doc = json.loads(Snapshot(position=Position(1, 0, 5), rng={}, items={snapshot.REPLAY: {"epoch": 0}}).encode())
    assert doc == {
        "format": snapshot.ENVELOPE_FORMAT, "version": snapshot.ENVELOPE_VERSION, "callbacks": {},
        snapshot.POSITION: {"epoch": 1, "batch": 0, "step": 5}, snapshot.RNG: {}, snapshot.REPLAY: {"epoch": 0},
    }


@pytest.mark.parametrize(
    ("callbacks", "epoch"),
    [
        ({"LearningRateScheduler": {"epoch": 7}, "EarlyStopping": {"epoch": 9}}, 7),  # the scheduler's
        ({"EarlyStopping": {"epoch": 9}, "ReduceLROnPlateau": {"epoch": 4}}, 9),  # the most processed
        ({"Other": {"x": 1}}, 0),
    ],
)
def test_the_resume_epoch_of_a_file_without_a_position(callbacks, epoch):
    assert Snapshot(callbacks=callbacks).resume_epoch() == epoch
    assert Snapshot(position=Position(3, 1, 0), callbacks=callbacks).resume_epoch() == 3


def test_a_bad_position_names_the_field_and_the_file():
    data = json.dumps({"format": "resumable_scheduler", "version": 1, "callbacks": {},
                       "position": {"epoch": 1, "batch": True, "step": 0}})
    with pytest.raises(ValueError) as e:
        Snapshot.decode(data, where="ckpt.weights.h5")
    assert str(e.value) == (
        "Invalid value for field `position.batch` in 'ckpt.weights.h5'. "
        "Received: batch=True. Expected an integer >= 0."
    )
    with pytest.raises(ValueError, match=r"^Unreadable checkpoint file 'b': no valid `rng` entry\.$"):
        snapshot.require({"position": {"epoch": 0, "batch": 0, "step": 0}}, "b")


def test_a_newer_version_is_refused_with_the_way_out():
    data = json.dumps({"format": "resumable_scheduler", "version": snapshot.ENVELOPE_VERSION + 1, "callbacks": {}})
    with pytest.raises(ValueError) as e:
        snapshot.decode_envelope(data, where="new.keras")
    assert str(e.value) == (
        f"Invalid resumable-state envelope in 'new.keras'. Received: version={snapshot.ENVELOPE_VERSION + 1} "
        f"(written by a newer resumable_scheduler; upgrade it). Expected version={snapshot.ENVELOPE_VERSION}."
    )


def test_older_versions_are_migrated_one_step_at_a_time(monkeypatch):
    # What the next format version does: a migration from 1 to 2 (here, a
    # made-up item), and version 1 files still decode.
    monkeypatch.setattr(snapshot, "ENVELOPE_VERSION", 2)
    monkeypatch.setitem(snapshot.MIGRATIONS, 1, lambda doc: {**doc, "made_up": []})
    v1 = json.dumps({"format": "resumable_scheduler", "version": 1, "callbacks": {"S": {"epoch": 2}}})
    doc = snapshot.decode_envelope(v1)
    assert doc["version"] == 2 and doc["made_up"] == [] and doc["callbacks"] == {"S": {"epoch": 2}}
    assert json.loads(snapshot.encode_envelope({}))["version"] == 2


@pytest.mark.parametrize("name", ["e12.keras", "e12.weights.h5"])
def test_the_v1_fixtures_decode_into_snapshots(name):
    from resumable_scheduler.storage import find_envelope
    from resumable_scheduler.storage.arrays import read_arrays

    doc, source = find_envelope(os.path.join(FIXTURES, "rs_v1", name))
    assert doc["version"] == 1
    snap = Snapshot.from_document(doc, where=source)
    assert snap.resume_epoch() == 12
    assert snap.callbacks["LearningRateScheduler"]["epoch"] == 12
    assert read_arrays(source) == {}  # the v1 fixtures hold no callback arrays


def test_the_v1_backup_fixture_decodes_into_a_snapshot_with_its_arrays():
    from resumable_scheduler.storage import backup_dir

    folder = os.path.join(FIXTURES, "rs_v1_backup")
    (name,) = os.listdir(folder)
    ckpt = backup_dir.read_checkpoint(os.path.join(folder, name))
    snap = Snapshot.from_document(ckpt.doc, {snapshot.array_name(k): v for k, v in ckpt.arrays.items()}, where=name)
    assert snap.position is not None and snap.position.batch > 0  # a mid-epoch backup
    assert snap.resume_epoch() == snap.position.epoch
    assert snapshot.RNG_NOW in snap.items and any(k.startswith(snapshot.NOW_PREFIX) for k in snap.arrays)
    assert set(snap.arrays) == set(ckpt.arrays)
