"""The run's timeline rides in every checkpoint kind (issue 11).

Real `fit` on the JAX backend, real files. Only counts, positions and sums
are asserted, never durations.
"""

from __future__ import annotations

import gc
import os

import keras
import pytest

import resumable_scheduler as rs
from resumable_scheduler import timeline
from resumable_scheduler.snapshot import Position
from resumable_scheduler.storage import find_envelope
from resumable_scheduler.tracker import tracker_for
from tests.support.resume_helpers import (
    InterruptAt,
    assert_same,
    documented_schedule,
    fit,
    make_model,
    outcome,
    run_uninterrupted,
)

PARTS = ("startup_s", "restart_s", "productive_s", "blocked_save_s", "lost_work_bound_s", "downtime_s")


def segments(path, **kw):
    doc, _ = find_envelope(str(path), **kw)
    return timeline.Timeline.from_json(doc.get(timeline.TIMELINE)).segments


def callbacks(backup_dir, *extra, **kw):
    return [rs.BackupAndRestore(str(backup_dir), **kw), rs.LearningRateScheduler(documented_schedule), *extra]


def interrupted(backup_dir, at, **kw):
    """A fit that raises at `at`; the exception is dropped before returning
    (as a retry loop's `except` block does), so the fit is known to have ended."""
    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), callbacks(backup_dir, InterruptAt(*at), **kw))
    gc.collect()


def test_a_backup_checkpoint_holds_the_segment_so_far(tmp_path):
    interrupted(tmp_path / "b", (5, 2), save_freq=1)
    (seg,) = segments(tmp_path / "b")
    assert seg.end == "exception"  # the raised fit amended its newest checkpoint
    # The amended copy (checkpoint 27: 27 batches, numbered from 0) replaced checkpoint 26.
    assert [n[:13] for n in os.listdir(tmp_path / "b") if n.startswith("ckpt-")] == ["ckpt-00000027"]
    assert seg.resumed_at == Position(0, 0, 0)
    assert seg.reached == Position(5, 2, 27)
    assert seg.saves == 27 and seg.first_batch is not None and seg.committed is not None
    assert seg.pid == os.getpid()


def test_an_exception_then_a_resume_is_one_interruption_and_the_final_model_keeps_it(tmp_path):
    interrupted(tmp_path / "b", (5, 2), save_freq=1)
    model = make_model()
    fit(model, callbacks(tmp_path / "b", save_freq=1))
    assert_same(outcome(model), run_uninterrupted())
    assert not os.path.exists(tmp_path / "b") or not os.listdir(tmp_path / "b")  # deleted at the end
    model.save(tmp_path / "final.keras")
    report = rs.goodput(tmp_path / "final.keras")
    assert [(i["cause"], i["epoch"], i["batch"], i["step"]) for i in report["interruptions"]] == [
        ("exception", 5, 2, 27)
    ]
    assert report["productive_steps"] == 75
    assert report["redone_steps"] == 0 and report["stock_redone_steps"] == 2
    assert sum(report[k] for k in PARTS) == pytest.approx(report["wall_s"])
    first, second = segments(tmp_path / "final.keras")
    assert (first.end, second.end) == ("exception", "finished")
    assert second.resumed_at == first.reached == Position(5, 2, 27)
    assert second.reached == Position(15, 0, 75)


def test_an_uninterrupted_run_reports_no_interruption(tmp_path):
    model = make_model()
    fit(model, callbacks(tmp_path / "b", save_freq=3))
    model.save(tmp_path / "final.keras")
    report = rs.goodput(tmp_path / "final.keras")
    assert report["interruptions"] == []
    assert report["productive_steps"] == 75 and report["segments"] == 1
    assert report["running"] is False
    assert sum(report[k] for k in PARTS) == pytest.approx(report["wall_s"])


def test_weights_files_of_keras_modelcheckpoint_carry_the_timeline(tmp_path):
    path = tmp_path / "w.weights.h5"
    model = make_model()
    ckpt = keras.callbacks.ModelCheckpoint(str(path), save_weights_only=True)
    fit(model, [rs.LearningRateScheduler(documented_schedule), ckpt], epochs=4)
    (seg,) = segments(path)
    assert seg.reached == Position(4, 0, 20) and seg.end == "finished"


def test_a_kept_backup_of_a_finished_run_says_finished(tmp_path):
    model = make_model()
    fit(model, callbacks(tmp_path / "b", save_freq="epoch", delete_checkpoint=False))
    (seg,) = segments(tmp_path / "b")
    assert seg.end == "finished" and seg.reached == Position(15, 0, 75)


def test_orbax_steps_carry_the_timeline(tmp_path):
    directory = tmp_path / "orbax"
    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), [rs.OrbaxCheckpoint(str(directory), save_freq=5),
                           rs.LearningRateScheduler(documented_schedule), InterruptAt(7, 1)])
    gc.collect()
    (seg,) = segments(directory)
    assert seg.reached == Position(7, 0, 35)
    model = make_model()
    fit(model, [rs.OrbaxCheckpoint(str(directory), save_freq=5), rs.LearningRateScheduler(documented_schedule)])
    assert_same(outcome(model), run_uninterrupted())
    first, second = segments(directory)
    assert first.end == "exception" and second.resumed_at == Position(7, 0, 35)
    assert second.reached.step == 75


def test_a_crafted_timeline_is_refused_naming_the_field_and_nothing_is_lost(tmp_path):
    model = make_model()
    fit(model, callbacks(tmp_path / "b"), epochs=1)
    tracker = tracker_for(model)
    tracker.extra = ({timeline.TIMELINE: {"segments": [{"started": -1.0}]}}, {})
    try:
        model.save_weights(tmp_path / "bad.weights.h5")
    finally:
        tracker.extra = None
    with pytest.raises(ValueError, match=r"field `timeline.segments\[0\].started` in '.*bad.weights.h5'. "
                       r"Received: started=-1.0. Expected a finite number of seconds >= 0."):
        rs.read_state(tmp_path / "bad.weights.h5")


def test_one_batch_epochs_reported_at_batch_begin_only_keep_the_start_position(tmp_path):
    # rs.LearningRateScheduler alone reports batch *begins*: the first batch
    # is done when the next epoch begins, and the segment's start stays at step 0.
    path = tmp_path / "e{epoch:02d}.keras"
    model = make_model()
    fit(model, [keras.callbacks.ModelCheckpoint(str(path)), rs.LearningRateScheduler(documented_schedule)],
        batch_size=5, epochs=12)
    (seg,) = segments(tmp_path / "e12.keras")
    assert seg.resumed_at == Position(0, 0, 0) and seg.reached == Position(12, 0, 12)
    assert rs.goodput(tmp_path / "e12.keras")["productive_steps"] == 12
