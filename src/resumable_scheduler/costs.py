"""`rs.goodput`: what interruptions cost a run, read from its checkpoint.

Every checkpoint carries the run's timeline (`resumable_scheduler.timeline`,
one segment per process). `report` turns such a timeline into numbers:
how often the run was interrupted, where, and where its wall time went
(start-up, restarts, productive training, blocked saves, work lost after
the last commit before a kill, downtime). `goodput(path)` reads them from a
checkpoint; `format_report` prints them for `resumable-scheduler inspect`.

The totals are `timeline.account` of the kept segments plus the sums of
the dropped ones (`older`), so they add up to `wall_s`. A checkpoint written
before timelines (format version 1, say) has an empty timeline: zeros and
empty lists, not an error. Pure functions of their input; thread-safe.

>>> from resumable_scheduler.snapshot import Position
>>> from resumable_scheduler.timeline import Segment, Timeline
>>> a = Segment("h", 1, 0.0, Position(0, 0, 0), Position(1, 2, 7), first_batch=2.0,
...             committed=10.0, end="killed", save_blocked_s=1.0, save_interval_s=3.0)
>>> b = Segment("h", 2, 15.0, Position(1, 2, 7), Position(3, 0, 15), first_batch=16.0,
...             ended=30.0, end="finished")
>>> r = report(Timeline([a, b]).to_json())
>>> r["interruptions"]
[{'cause': 'killed', 'epoch': 1, 'batch': 2, 'step': 7, 'host': 'h', 'at': 10.0}]
>>> r["wall_s"], r["productive_steps"], r["lost_work_bound_s"], r["redone_steps"], r["stock_redone_steps"]
(30.0, 15, 3.0, 0, 2)
>>> print(format_report(r))
goodput
wall time                    30.0 s
productive training          21.0 s (70.0%), 15 steps
start-up                     2.0 s
lost to restarts             1.0 s
work lost before kills       <= 3.0 s
blocked in saves             1.0 s
downtime                     2.0 s
interruptions                1 (killed 1, signal 0, exception 0)
  killed     epoch 1, batch 2, step 7
redone steps                 0 (stock Keras would have retrained 2)
>>> print(format_report(report(None)))
goodput                      no timeline recorded (checkpoint written before timelines, or without a resumable fit)
"""

from __future__ import annotations

import os
from typing import Any

from resumable_scheduler.timeline import CAUSES, COUNTS, SECONDS, TIMELINE, Segment, Timeline, account, end_of, split

#: How many interruptions `format_report` lists one per line (the newest).
MAX_LISTED = 50
#: The width of the label column of `format_report`.
_WIDTH = 28


def report(value: Any, where: str | None = None) -> dict[str, Any]:
    """The goodput report of a `timeline` envelope item (`Timeline.to_json()`).

    Keys: the summed seconds `wall_s`, `startup_s`, `restart_s`,
    `productive_s`, `blocked_save_s`, `lost_work_bound_s`, `downtime_s`
    (they add up to `wall_s`); the counts `productive_steps`,
    `redone_steps`, `stock_redone_steps` (what stock Keras would have
    retrained: the batches of each resumed epoch before the resume point)
    and `segments` (processes); `interruptions` (oldest first, each with
    `cause`, the position `epoch`/`batch`/`step` its last commit reached,
    where the next process resumed, `host` and `at`, its last known Unix
    time) and `interruptions_by_cause` (these counted, plus those of dropped
    segments); `resumes` (each resumed segment's `resumed_at` position and
    `at`, when it trained its first batch, else its start); `running` (the
    last segment has not ended: the run is in progress, or was killed and
    not restarted yet); `spans` (per kept segment, its times for a plot:
    `started`, `first_batch`, `end_at`, `blocked_s`, `lost_s`,
    `next_started`, and `end`).

    A segment still `"running"` that is not the last was killed. A last one
    that ended by a signal or an exception is an interruption too (nothing
    resumed from it yet).

    Args:
        value: The `timeline` item of an envelope; `None` (a checkpoint
            written before timelines) is an empty timeline.
        where: str, optional. The file it was read from, for messages.

    Raises:
        ValueError: `value` is not a valid timeline; the message names the
            field and `where`.

    >>> report(None)["interruptions"], report(None)["wall_s"], report(None)["running"]
    ([], 0.0, False)
    >>> report({"segments": [{"started": -1}]}, "x.keras")
    Traceback (most recent call last):
    ...
    ValueError: Invalid value for field `timeline.segments[0].started` in 'x.keras'. Received: started=-1. Expected a finite number of seconds >= 0.
    """
    at = f" in {where!r}" if where is not None else ""
    timeline = Timeline.from_json(value, at)
    segments, older = timeline.segments, timeline.older
    totals = account(segments)
    out: dict[str, Any] = {k: totals[k] + older[k] for k in SECONDS}
    out.update({k: totals[k] + older[k] for k in COUNTS if k not in CAUSES})
    following = [*segments[1:], None]
    interruptions = [_interruption(seg, nxt) for seg, nxt in zip(segments, following)]
    out["interruptions"] = [item for item in interruptions if item is not None]
    out["interruptions_by_cause"] = {
        cause: older[cause] + sum(1 for item in out["interruptions"] if item["cause"] == cause) for cause in CAUSES
    }
    first_kept_resumed = older["segments"] > 0
    out["resumes"] = [
        {**seg.resumed_at.to_json(), "at": seg.first_batch if seg.first_batch is not None else seg.started}
        for i, seg in enumerate(segments)
        if i > 0 or first_kept_resumed or seg.resumed_at.step > 0
    ]
    out["running"] = bool(segments) and segments[-1].end == "running"
    out["spans"] = [_span(seg, nxt) for seg, nxt in zip(segments, following)]
    return out


def _interruption(seg: Segment, nxt: Segment | None) -> dict[str, Any] | None:
    cause = end_of(seg, nxt)
    if cause not in CAUSES:
        return None
    return {"cause": cause, **seg.reached.to_json(), "host": seg.host, "at": seg.last_known()}


def _span(seg: Segment, nxt: Segment | None) -> dict[str, Any]:
    """One segment's times, split as `timeline.account` splits them."""
    part = split(seg, nxt)
    return {
        "host": seg.host,
        "started": seg.started,
        "first_batch": part.first,
        "end_at": part.end,
        "blocked_s": part.blocked_s,
        "lost_s": part.lost_s,
        "next_started": None if nxt is None else max(nxt.started, part.end),
        "end": end_of(seg, nxt),
    }


def goodput(path: str | os.PathLike[str], step: int | None = None) -> dict[str, Any]:
    """The goodput report (see `report`) of the run that wrote a checkpoint.

    Args:
        path: str. A `.keras` file, a `.weights.h5` file, a backup directory
            or an Orbax checkpoint directory.
        step: int, optional. For an Orbax directory, the step to read
            (default: the newest complete one).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: nothing resumable is saved there (a stock Keras file),
            it is invalid (the message names the file and the field), or
            `step` is given for a layout without steps.
    """
    from resumable_scheduler.api import read_envelope

    doc, source = read_envelope(path, step=step)
    return report(doc.get(TIMELINE), source)


def _s(x: float) -> str:
    return f"{x:.1f} s"


def format_report(r: dict[str, Any]) -> str:
    """A short human summary of a report (see the module docstring)."""
    if not r["segments"]:
        return (
            "goodput".ljust(_WIDTH)
            + " no timeline recorded (checkpoint written before timelines, or without a resumable fit)"
        )
    share = f" ({100 * r['productive_s'] / r['wall_s']:.1f}%)" if r["wall_s"] > 0 else ""
    by_cause = r["interruptions_by_cause"]
    rows = [
        ("wall time", _s(r["wall_s"])),
        ("productive training", f"{_s(r['productive_s'])}{share}, {r['productive_steps']} steps"),
        ("start-up", _s(r["startup_s"])),
        ("lost to restarts", _s(r["restart_s"])),
        ("work lost before kills", f"<= {_s(r['lost_work_bound_s'])}"),
        ("blocked in saves", _s(r["blocked_save_s"])),
        ("downtime", _s(r["downtime_s"])),
        (
            "interruptions",
            f"{sum(by_cause.values())} (" + ", ".join(f"{c} {by_cause[c]}" for c in CAUSES) + ")",
        ),
    ]
    lines = ["goodput"] + [f"{k.ljust(_WIDTH)} {v}" for k, v in rows]
    listed = r["interruptions"][-MAX_LISTED:]
    unlisted = sum(by_cause.values()) - len(listed)
    if unlisted:
        lines.append(f"  ... {unlisted} earlier (the newest {len(listed)} follow; --json lists every one kept)")
    lines.extend(f"  {i['cause'].ljust(10)} epoch {i['epoch']}, batch {i['batch']}, step {i['step']}" for i in listed)
    lines.append(
        f"{'redone steps'.ljust(_WIDTH)} {r['redone_steps']} "
        f"(stock Keras would have retrained {r['stock_redone_steps']})"
    )
    if r["running"]:
        lines.append(f"{'last process'.ljust(_WIDTH)} still running, or killed and not restarted yet")
    return "\n".join(lines)
