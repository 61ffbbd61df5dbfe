"""`rs.goodput` / `goodput.report`: interruptions and where a run's wall time
went, from synthetic timelines (counts and sums, never measured durations),
a real `.weights.h5` carrying one, and the v1 fixtures (no timeline)."""

from __future__ import annotations

import os
import sys

import h5py
import keras
import numpy as np
import pytest

import resumable_scheduler as rs
from resumable_scheduler.costs import MAX_LISTED, format_report, goodput, report
from resumable_scheduler.snapshot import Position
from resumable_scheduler.timeline import CAUSES, MAX_SEGMENTS, SECONDS, TIMELINE, Segment, Timeline, account
from resumable_scheduler.tracker import tracker_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
V1 = [os.path.join(ROOT, "fixtures", "rs_v1", "e12.keras"),
      os.path.join(ROOT, "fixtures", "rs_v1", "e12.weights.h5"),
      os.path.join(ROOT, "fixtures", "rs_v1_backup")]
STOCK_KERAS = os.path.join(ROOT, "fixtures", "stock_keras_3_15", "e12.keras")
ENVELOPE = "_resumable_scheduler_state/vars/envelope"
PARTS = ("startup_s", "restart_s", "productive_s", "blocked_save_s", "lost_work_bound_s", "downtime_s")


def P(epoch, batch, step):
    return Position(epoch, batch, step)


def interrupted_run():
    """The documented example (5 batches per epoch, 75 steps): SIGKILLed at
    steps 17 and 31 (the second left `"running"`, as a killed process does
    until the next one starts), SIGTERMed at 45, SIGKILLed at 70, finished."""
    return [
        Segment("a", 1, 0.0, P(0, 0, 0), P(3, 2, 17), first_batch=2.0, committed=20.0, end="killed",
                saves=17, save_blocked_s=1.0, save_interval_s=2.0),
        Segment("a", 2, 25.0, P(3, 2, 17), P(6, 1, 31), first_batch=27.0, committed=40.0,
                saves=14, save_blocked_s=0.5, save_interval_s=1.5),
        Segment("b", 3, 45.0, P(6, 1, 31), P(9, 0, 45), first_batch=46.0, committed=60.0, ended=60.5,
                end="signal", saves=14, save_blocked_s=0.5, save_interval_s=1.0),
        Segment("b", 4, 70.0, P(9, 0, 45), P(14, 0, 70), first_batch=71.0, committed=90.0, end="killed",
                saves=25, save_interval_s=2.0),
        Segment("b", 5, 95.0, P(14, 0, 70), P(15, 0, 75), first_batch=96.0, committed=99.0, ended=100.0,
                end="finished", saves=5),
    ]


def uninterrupted_run():
    return [Segment("a", 1, 0.0, P(0, 0, 0), P(15, 0, 75), first_batch=3.0, committed=50.0, ended=50.0,
                    end="finished", saves=75, save_blocked_s=2.0, save_interval_s=1.0)]


def test_three_kills_and_a_signal_are_four_interruptions_with_causes_and_positions():
    r = report(Timeline(interrupted_run()).to_json(), "run.weights.h5")
    assert [(i["cause"], i["epoch"], i["batch"], i["step"]) for i in r["interruptions"]] == [
        ("killed", 3, 2, 17), ("killed", 6, 1, 31), ("signal", 9, 0, 45), ("killed", 14, 0, 70)]
    assert [(i["host"], i["at"]) for i in r["interruptions"]] == [("a", 20.0), ("a", 40.0), ("b", 60.5), ("b", 90.0)]
    assert r["interruptions_by_cause"] == {"killed": 3, "signal": 1, "exception": 0}
    assert r["resumes"] == [
        {"epoch": 3, "batch": 2, "step": 17, "at": 27.0}, {"epoch": 6, "batch": 1, "step": 31, "at": 46.0},
        {"epoch": 9, "batch": 0, "step": 45, "at": 71.0}, {"epoch": 14, "batch": 0, "step": 70, "at": 96.0}]
    assert r["productive_steps"] == 75  # the uninterrupted run's
    assert (r["segments"], r["redone_steps"], r["stock_redone_steps"]) == (5, 0, 3)
    assert r["running"] is False


def test_times_add_up_to_the_wall_time():
    r = report(Timeline(interrupted_run()).to_json())
    assert r["wall_s"] == pytest.approx(100.0)
    assert sum(r[k] for k in PARTS) == pytest.approx(r["wall_s"])
    # Each part, as timeline.account splits it: lost work is each killed
    # segment's longest commit interval, capped by the gap to the next start.
    assert r["startup_s"] == pytest.approx(2.0)
    assert r["restart_s"] == pytest.approx(2 + 1 + 1 + 1)
    assert r["blocked_save_s"] == pytest.approx(2.0)
    assert r["lost_work_bound_s"] == pytest.approx(2.0 + 1.5 + 2.0)
    assert r["downtime_s"] == pytest.approx(3.0 + 3.5 + 9.5 + 3.0)  # after a signal: no lost work
    assert r["productive_s"] == pytest.approx(100 - 2 - 5 - 2 - 5.5 - 19)
    # The per-segment spans (what the plot draws) add up to the same.
    spans = r["spans"]
    assert [s["end"] for s in spans] == ["killed", "killed", "signal", "killed", "finished"]
    total = sum((s["next_started"] if s["next_started"] is not None else s["end_at"]) - s["started"] for s in spans)
    assert total == pytest.approx(r["wall_s"])
    assert sum(s["lost_s"] for s in spans) == pytest.approx(r["lost_work_bound_s"])
    assert sum(s["blocked_s"] for s in spans) == pytest.approx(r["blocked_save_s"])


def test_an_uninterrupted_run_reports_no_interruptions():
    r = report(Timeline(uninterrupted_run()).to_json())
    assert r["interruptions"] == [] and r["resumes"] == []
    assert r["interruptions_by_cause"] == dict.fromkeys(CAUSES, 0)
    assert (r["productive_steps"], r["segments"], r["redone_steps"], r["stock_redone_steps"]) == (75, 1, 0, 0)
    assert (r["wall_s"], r["startup_s"], r["restart_s"], r["blocked_save_s"]) == (50.0, 3.0, 0.0, 2.0)
    assert (r["lost_work_bound_s"], r["downtime_s"]) == (0.0, 0.0)
    text = format_report(r)
    assert "interruptions                0 (killed 0, signal 0, exception 0)" in text.splitlines()
    assert "redone steps                 0 (stock Keras would have retrained 0)" in text.splitlines()


@pytest.mark.parametrize("end, running, causes", [
    ("running", True, []),  # in progress, or killed and not restarted yet: not counted
    ("signal", False, ["signal"]),
    ("exception", False, ["exception"]),
    ("finished", False, []),
])
def test_the_last_segment(end, running, causes):
    segs = uninterrupted_run()
    segs[0].end = end
    r = report(Timeline(segs).to_json())
    assert r["running"] is running
    assert [i["cause"] for i in r["interruptions"]] == causes
    assert sum(r["interruptions_by_cause"].values()) == len(causes)
    assert ("still running, or killed and not restarted yet" in format_report(r)) is running


def test_a_trimmed_timeline_keeps_its_totals():
    segs = [Segment("h", i + 1, 10.0 * i, P(i, 0, 5 * i), P(i + 1, 0, 5 * (i + 1)), first_batch=10.0 * i + 1,
                    committed=10.0 * i + 8, end="killed", save_blocked_s=0.5, save_interval_s=1.0)
            for i in range(MAX_SEGMENTS + 5)]
    segs[-1].end, segs[-1].ended = "finished", segs[-1].committed
    full = account(segs)
    trimmed = Timeline(segs).trimmed()
    assert len(trimmed.segments) == MAX_SEGMENTS
    r = report(trimmed.to_json())
    for k in SECONDS:
        assert r[k] == pytest.approx(full[k]), k
    assert (r["segments"], r["productive_steps"]) == (1005, 5025)
    assert r["interruptions_by_cause"] == {"killed": 1004, "signal": 0, "exception": 0}
    assert len(r["interruptions"]) == MAX_SEGMENTS - 1  # positions of the kept ones only
    assert r["interruptions"][0]["step"] == 5 * 6  # the first kept segment's reach
    assert len(r["resumes"]) == MAX_SEGMENTS  # the first kept one resumed too
    assert sum(r[k] for k in PARTS) == pytest.approx(r["wall_s"])
    lines = format_report(r).splitlines()
    assert "interruptions                1004 (killed 1004, signal 0, exception 0)" in lines
    assert f"  ... {1004 - MAX_LISTED} earlier (the newest {MAX_LISTED} follow; --json lists every one kept)" in lines
    assert sum(line.startswith("  killed     epoch ") for line in lines) == MAX_LISTED


@pytest.mark.parametrize("value, message", [
    ({"segments": [{"end": "vanished"}]},
     "Invalid value for field `timeline.segments[0].end` in 'x.weights.h5'. Received: end='vanished'. "
     "Expected one of 'running', 'finished', 'killed', 'signal', 'exception'."),
    ({"segments": [{}, {"reached": {"epoch": -1}}]},
     "Invalid value for field `timeline.segments[1].reached.epoch` in 'x.weights.h5'. Received: epoch=-1. "
     "Expected an integer >= 0."),
    ({"segments": [{"save_blocked_s": "1"}]},
     "Invalid value for field `timeline.segments[0].save_blocked_s` in 'x.weights.h5'. Received: "
     "save_blocked_s='1'. Expected a finite number of seconds >= 0."),
    ({"segments": [{"first_batch": True}]},
     "Invalid value for field `timeline.segments[0].first_batch` in 'x.weights.h5'. Received: "
     "first_batch=True. Expected a finite number of seconds >= 0 or null."),
    ({"segments": [{"host": 3}]},
     "Invalid value for field `timeline.segments[0].host` in 'x.weights.h5'. Received: host=3. Expected a string."),
    ({"older": {"killed": 1.5}},
     "Invalid value for field `timeline.older.killed` in 'x.weights.h5'. Received: killed=1.5. "
     "Expected an integer >= 0."),
    ([1], "Invalid value for field `timeline` in 'x.weights.h5'. Received: [1]. Expected a JSON object."),
])
def test_a_bad_timeline_names_the_field_and_the_file(value, message):
    with pytest.raises(ValueError) as info:
        report(value, "x.weights.h5")
    assert str(info.value) == message


def test_an_empty_timeline_is_zeros_and_empty_lists():
    for value in (None, {}, Timeline().to_json()):
        r = report(value)
        assert r["interruptions"] == r["resumes"] == r["spans"] == []
        assert all(r[k] == 0 for k in (*SECONDS, "segments", "productive_steps", "redone_steps"))
        assert r["running"] is False
        assert format_report(r) == (
            "goodput                      no timeline recorded (checkpoint written before timelines, "
            "or without a resumable fit)")


@pytest.mark.parametrize("path", V1)
def test_the_v1_fixtures_have_an_empty_timeline(path):
    r = rs.goodput(path)
    assert r == report(None)


def test_goodput_of_a_missing_or_stock_file_fails_like_read_state(tmp_path):
    missing = str(tmp_path / "nope.keras")
    for path in (missing, STOCK_KERAS):
        with pytest.raises((FileNotFoundError, ValueError)) as ours:
            rs.goodput(path)
        with pytest.raises((FileNotFoundError, ValueError)) as theirs:
            rs.read_state(path)
        assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


def test_rs_goodput_is_the_function():
    assert rs.goodput is goodput
    assert rs.goodput(V1[1]) == goodput(V1[1])


# -- a real file ---------------------------------------------------------------------------------


def save_with_timeline(path, timeline_json, epochs=3):
    """A `.weights.h5` of a real fit (5 batches per epoch) whose envelope
    carries `timeline_json`."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    x = np.linspace(0, 1, 40, dtype="float32").reshape(10, 4)
    y = np.linspace(1, 0, 20, dtype="float32").reshape(10, 2)
    model.fit(x, y, epochs=epochs, batch_size=2, shuffle=False, verbose=0,
              callbacks=[rs.LearningRateScheduler(lambda epoch, lr: lr * 0.5)])
    tracker = tracker_for(model)
    tracker.extra = ({TIMELINE: timeline_json}, {})
    try:
        model.save_weights(str(path))
    finally:
        tracker.extra = None
    return str(path)


@pytest.fixture(scope="module")
def real_file(tmp_path_factory):
    return save_with_timeline(tmp_path_factory.mktemp("gp") / "run.weights.h5", Timeline(interrupted_run()).to_json())


def test_goodput_of_a_real_file(real_file):
    r = rs.goodput(real_file)
    assert r == report(Timeline(interrupted_run()).to_json())
    assert [i["cause"] for i in r["interruptions"]] == ["killed", "killed", "signal", "killed"]
    assert r["productive_steps"] == 75


def test_goodput_of_a_file_with_a_crafted_timeline_names_the_file(tmp_path):
    path = save_with_timeline(tmp_path / "bad.weights.h5", {"segments": [{"end": "vanished"}]}, epochs=1)
    with pytest.raises(ValueError) as info:
        rs.goodput(path)
    assert str(info.value) == (
        f"Invalid value for field `timeline.segments[0].end` in {path!r}. Received: end='vanished'. "
        "Expected one of 'running', 'finished', 'killed', 'signal', 'exception'.")
    with h5py.File(path, "r") as f:  # the envelope really is in the file
        assert b'"timeline"' in np.asarray(f[ENVELOPE]).tobytes()
