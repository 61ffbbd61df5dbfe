"""A run's timeline: one *segment* per process that trained it.

Every checkpoint we write carries the timeline of the run so far (the
`timeline` item of the snapshot envelope), so that after the fact one can
ask how often a run was interrupted, where, and what that cost (see
`goodput`). A segment records, for one process:

- `host`, `pid` and `started`: the process and when it started (Unix
  seconds, from the OS where it knows, else when this module was imported);
- `first_batch`: when it had trained its first batch (restart cost ends);
- `resumed_at` and `reached`: the position (epoch, batch, optimizer step)
  it started training from, and the one its last checkpoint committed;
- `committed`, `saves`, `save_blocked_s`, `save_wall_s`, `save_interval_s`:
  when its last checkpoint was committed, how many it wrote, the time the
  training thread was blocked by them and their wall time (both counted up
  to the save before the last: a checkpoint cannot hold its own duration),
  and the longest time between two of its commits;
- `end` and `ended`: how it ended (`"finished"`, `"signal"`,
  `"exception"`, or `"killed"`, which is inferred by the next process that
  resumes from it; `"running"` while it runs) and when, if it could say.

The list is bounded: the newest `MAX_SEGMENTS` segments are kept and older
ones are summed into `older` (see `account`). This module imports neither
Keras nor NumPy; it is validated like every other item of the envelope.

>>> seg = Segment(host="h", pid=1, started=10.0, first_batch=12.0,
...               resumed_at=Position(0, 0, 0), reached=Position(1, 0, 5),
...               committed=20.0, end="killed")
>>> back = Timeline.from_json(Timeline([seg]).to_json(), "")
>>> back.segments[0] == seg
True
>>> Timeline.from_json({"segments": [{"end": "vanished"}]}, " in 'x.keras'")
Traceback (most recent call last):
...
ValueError: Invalid value for field `timeline.segments[0].end` in 'x.keras'. Received: end='vanished'. Expected one of 'running', 'finished', 'killed', 'signal', 'exception'.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
from typing import Any

from resumable_scheduler.snapshot import TIMELINE, Position, check_count, short
#: How many segments a timeline keeps; older ones are summed into `older`.
MAX_SEGMENTS = 1000
#: The causes of an interruption, as `goodput` reports them.
CAUSES = ("killed", "signal", "exception")
#: Every value of a segment's `end`.
ENDS = ("running", "finished", *CAUSES)
#: The longest host name kept (longer ones are cut).
MAX_HOST = 255
#: The summed fields of `older` (seconds, then counts).
SECONDS = ("wall_s", "startup_s", "restart_s", "productive_s", "blocked_save_s", "lost_work_bound_s", "downtime_s")
COUNTS = ("segments", "productive_steps", "redone_steps", "stock_redone_steps", *CAUSES)

_IMPORTED = time.time()


def process_start() -> float:
    """When this process started (Unix seconds): from `/proc` on Linux (to
    about 10 ms), else the time this module was imported."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # starttime: field 22, counted from after `comm`
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED
    started = time.time() - max(age, 0.0)
    return min(started, _IMPORTED)


@dataclasses.dataclass
class Segment:
    """One process's part of a run (see the module docstring)."""

    host: str
    pid: int
    started: float
    resumed_at: Position
    reached: Position
    first_batch: float | None = None
    committed: float | None = None
    ended: float | None = None
    end: str = "running"
    saves: int = 0
    save_blocked_s: float = 0.0
    save_wall_s: float = 0.0
    save_interval_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        # Field by field: `dataclasses.asdict` deep-copies, at every commit.
        out = {f: getattr(self, f) for f in _FIELDS}
        out["resumed_at"] = self.resumed_at.to_json()
        out["reached"] = self.reached.to_json()
        return out

    @classmethod
    def from_json(cls, value: Any, field: str, at: str) -> Segment:
        if not isinstance(value, dict):
            raise ValueError(
                f"Invalid value for field `{field}`{at}. Received: {short(value)}. Expected a JSON object."
            )
        host = value.get("host", "")
        if not isinstance(host, str):
            raise ValueError(
                f"Invalid value for field `{field}.host`{at}. Received: host={short(host)}. Expected a string."
            )
        end = value.get("end", "running")
        if end not in ENDS:
            raise ValueError(
                f"Invalid value for field `{field}.end`{at}. Received: end={short(end)}. "
                f"Expected one of {', '.join(repr(e) for e in ENDS)}."
            )
        return cls(
            host=host[:MAX_HOST],
            pid=check_count(f"{field}.pid", value.get("pid", 0), at, "pid"),
            started=_seconds(value.get("started", 0.0), f"{field}.started", at),
            resumed_at=_position(value.get("resumed_at"), f"{field}.resumed_at", at),
            reached=_position(value.get("reached"), f"{field}.reached", at),
            first_batch=_seconds(value.get("first_batch"), f"{field}.first_batch", at, optional=True),
            committed=_seconds(value.get("committed"), f"{field}.committed", at, optional=True),
            ended=_seconds(value.get("ended"), f"{field}.ended", at, optional=True),
            end=end,
            saves=check_count(f"{field}.saves", value.get("saves", 0), at, "saves"),
            save_blocked_s=_seconds(value.get("save_blocked_s", 0.0), f"{field}.save_blocked_s", at),
            save_wall_s=_seconds(value.get("save_wall_s", 0.0), f"{field}.save_wall_s", at),
            save_interval_s=_seconds(value.get("save_interval_s", 0.0), f"{field}.save_interval_s", at),
        )

    # -- what it cost -------------------------------------------------------------

    def last_known(self) -> float:
        """The last instant this segment is known to have been alive."""
        times = [t for t in (self.ended, self.committed, self.first_batch) if t is not None]
        return max(times, default=self.started)


_FIELDS = tuple(f.name for f in dataclasses.fields(Segment))


def _seconds(value: Any, field: str, at: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        name = field.rsplit(".", 1)[-1]
        raise ValueError(
            f"Invalid value for field `{field}`{at}. Received: {name}={short(value)}. "
            f"Expected a finite number of seconds >= 0{' or null' if optional else ''}."
        )
    return float(value)


def _position(value: Any, field: str, at: str) -> Position:
    if value is None:
        return Position(0, 0, 0)
    if not isinstance(value, dict):
        raise ValueError(
            f"Invalid value for field `{field}`{at}. Received: {short(value)}. Expected a JSON object."
        )
    return Position(*(check_count(f"{field}.{k}", value.get(k, 0), at, k) for k in ("epoch", "batch", "step")))


def empty_older() -> dict[str, Any]:
    """The sums of no dropped segments."""
    return {**{k: 0.0 for k in SECONDS}, **{k: 0 for k in COUNTS}}


@dataclasses.dataclass
class Timeline:
    """The segments of a run, oldest first, and the sums of dropped ones."""

    segments: list[Segment] = dataclasses.field(default_factory=list)
    older: dict[str, Any] = dataclasses.field(default_factory=empty_older)

    def to_json(self) -> dict[str, Any]:
        return {"segments": [s.to_json() for s in self.segments], "older": dict(self.older)}

    @classmethod
    def from_json(cls, value: Any, at: str = "") -> Timeline:
        """Validates a `timeline` item (`at`: " in 'file'", for messages).
        `None` (a checkpoint written before timelines) is an empty one."""
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(
                f"Invalid value for field `{TIMELINE}`{at}. Received: {short(value)}. Expected a JSON object."
            )
        segs = value.get("segments", [])
        if not isinstance(segs, list) or len(segs) > MAX_SEGMENTS:
            raise ValueError(
                f"Invalid value for field `{TIMELINE}.segments`{at}. Received: "
                f"{type(segs).__name__} of {len(segs) if isinstance(segs, list) else '?'} items. "
                f"Expected a list of at most {MAX_SEGMENTS} segments."
            )
        segments = [Segment.from_json(s, f"{TIMELINE}.segments[{i}]", at) for i, s in enumerate(segs)]
        raw = value.get("older", {})
        if not isinstance(raw, dict):
            raise ValueError(
                f"Invalid value for field `{TIMELINE}.older`{at}. Received: {short(raw)}. Expected a JSON object."
            )
        older = empty_older()
        for k in SECONDS:
            older[k] = _seconds(raw.get(k, 0.0), f"{TIMELINE}.older.{k}", at)
        for k in COUNTS:
            older[k] = check_count(f"{TIMELINE}.older.{k}", raw.get(k, 0), at, k)
        return cls(segments, older)

    def trimmed(self, most: int = MAX_SEGMENTS) -> Timeline:
        """This timeline with at most `most` segments: the oldest ones
        beyond are summed into `older`.

        >>> seg = Segment("h", 1, 0.0, Position(0, 0, 0), Position(0, 0, 2), end="killed")
        >>> t = Timeline([seg] * 3).trimmed(2)
        >>> len(t.segments), t.older["segments"], t.older["productive_steps"], t.older["killed"]
        (2, 1, 2, 1)
        """
        extra = len(self.segments) - most
        if extra <= 0:
            return self
        older = dict(self.older)
        for key, value in account(self.segments[: extra + 1], limit=extra).items():
            if key in older:
                older[key] += value
        return Timeline(self.segments[extra:], older)


def end_of(seg: Segment, nxt: Segment | None) -> str:
    """How `seg` ended, as far as is known: one still `"running"` that
    another segment (`nxt`) followed was killed.

    >>> seg = Segment("h", 1, 0.0, Position(0, 0, 0), Position(0, 0, 0))
    >>> end_of(seg, None), end_of(seg, seg)
    ('running', 'killed')
    """
    return "killed" if seg.end == "running" and nxt is not None else seg.end


@dataclasses.dataclass(frozen=True)
class Split:
    """One segment's span, split (see `split`): the instants `first` (its
    first trained batch) and `end` (its last commit or clean end), and the
    seconds of each part."""

    first: float
    end: float
    before_first_s: float
    blocked_s: float
    productive_s: float
    lost_s: float
    downtime_s: float


def split(seg: Segment, nxt: Segment | None) -> Split:
    """How `seg` spent its time, up to the start of `nxt` (the next segment,
    if any).

    From process start to its first trained batch: start-up or restart
    (`before_first_s`); then time blocked in saves; the rest until its last
    commit (or clean end) is productive training; then, after a kill, the
    work lost since the last commit, bounded by its longest interval
    between commits, and downtime until `nxt` started. The parts add up to
    the span.

    >>> a = Segment("h", 1, 0.0, Position(0, 0, 0), Position(1, 0, 5), first_batch=2.0,
    ...             committed=10.0, end="killed", save_blocked_s=1.0, save_interval_s=3.0)
    >>> split(a, dataclasses.replace(a, started=15.0))
    Split(first=2.0, end=10.0, before_first_s=2.0, blocked_s=1.0, productive_s=7.0, lost_s=3.0, downtime_s=2.0)
    """
    first = max(seg.first_batch if seg.first_batch is not None else seg.last_known(), seg.started)
    clean = seg.end in ("finished", "signal", "exception") and seg.ended is not None
    end = max(seg.ended if clean else seg.last_known(), first)
    blocked = min(seg.save_blocked_s, end - first)
    gap = lost = 0.0
    if nxt is not None:
        gap = max(nxt.started - end, 0.0)
        if end_of(seg, nxt) == "killed":
            # Killed: from its last commit it trained on, for at most its
            # longest interval between commits, then was gone.
            lost = min(gap, seg.save_interval_s or gap)
    return Split(first, end, first - seg.started, blocked, end - first - blocked, lost, gap - lost)


def account(segments: list[Segment], limit: int | None = None) -> dict[str, Any]:
    """The cost of the first `limit` segments (default: all), in the fields
    of `older`. A segment's downtime needs the next one's start, so pass
    one segment more than `limit` where there is one.

    Each segment's span splits as `split` says; the time before the first
    batch is start-up for the first segment of a run (one that started at
    step 0) and restart for any other. The parts add up to the wall time.

    >>> a = Segment("h", 1, 0.0, Position(0, 0, 0), Position(1, 0, 5), first_batch=2.0,
    ...             committed=10.0, end="killed", save_blocked_s=1.0, save_interval_s=3.0)
    >>> b = Segment("h", 2, 15.0, Position(1, 0, 5), Position(3, 0, 15), first_batch=16.0,
    ...             ended=30.0, end="finished")
    >>> c = account([a, b])
    >>> c["wall_s"], c["startup_s"], c["restart_s"], c["productive_s"], c["lost_work_bound_s"], c["downtime_s"]
    (30.0, 2.0, 1.0, 21.0, 3.0, 2.0)
    >>> c["productive_steps"], c["killed"]
    (15, 1)
    """
    n = len(segments) if limit is None else min(limit, len(segments))
    out = empty_older()
    for i in range(n):
        seg = segments[i]
        nxt = segments[i + 1] if i + 1 < len(segments) else None
        part = split(seg, nxt)
        out["segments"] += 1
        out["startup_s" if i == 0 and seg.resumed_at.step == 0 else "restart_s"] += part.before_first_s
        out["blocked_save_s"] += part.blocked_s
        out["productive_s"] += part.productive_s
        out["productive_steps"] += max(seg.reached.step - seg.resumed_at.step, 0)
        out["lost_work_bound_s"] += part.lost_s
        out["downtime_s"] += part.downtime_s
        if nxt is not None:
            out["redone_steps"] += max(seg.reached.step - nxt.resumed_at.step, 0)
            out["stock_redone_steps"] += nxt.resumed_at.batch
            cause = end_of(seg, nxt)
            if cause in CAUSES:
                out[cause] += 1
        out["wall_s"] += part.before_first_s + part.blocked_s + part.productive_s + part.lost_s + part.downtime_s
    return out


class Recorder:
    """The live timeline of one model in this process: the past segments
    read from the checkpoint it resumed from, and this process's own.

    The model's tracker owns one and passes on what its callbacks report.
    Per batch it does one attribute test until the first batch is done.
    """

    def __init__(self) -> None:
        self.past = Timeline()
        self.current: Segment | None = None
        #: Whether the running fit has trained a batch yet.
        self._training = False
        #: Whether `current` was opened by the running fit (its start
        #: position may still be refined until the first batch).
        self._opened = False
        self._begun = False
        #: `past` and its segments as JSON (they do not change once past).
        self._past_json: tuple[Timeline, list[dict[str, Any]]] | None = None

    # -- what the checkpoint held --------------------------------------------------

    def restore(self, value: Any, run_epochs: int | None = None, at: str = "") -> None:
        """Takes the timeline of a checkpoint being resumed from.

        Segments of this process in it are ours: the live one is kept as
        it is here; one this process ended (an exception: see `end`) takes
        its recorded end; the last one, still running, is continued.
        A last segment of another process still `"running"` was killed,
        unless it had reached the run's `run_epochs`."""
        timeline = Timeline.from_json(value, at)
        segments: list[Segment] = []
        for seg in timeline.segments:
            if _mine(seg):
                if self.current is not None and seg.started == self.current.started:
                    continue  # the live segment: ours is newer
                ended = _ENDED.get(seg.started)
                if ended is not None and seg.end == "running":
                    seg.end, seg.ended = ended
            segments.append(seg)
        if segments and segments[-1].end == "running":
            last = segments[-1]
            if _mine(last) and self.current is None:
                self.current = segments.pop()
                self._opened = False
            else:
                done = run_epochs is not None and last.reached.epoch >= run_epochs and last.reached.batch == 0
                last.end = "finished" if done else "killed"
        self.past = Timeline(segments, timeline.older).trimmed(MAX_SEGMENTS - 1)

    # -- events of this process ------------------------------------------------------

    def begin_fit(self) -> None:
        """A fit starts; its segment opens at its first epoch."""
        self._training = False
        self._begun = False

    def at_position(self, position: Any) -> None:
        """An epoch of the fit begins before any batch of it is trained:
        training starts at `position` (a `Position`, or a callable that
        returns one; called only when needed). The first fit of this
        process, or the first after one ended by an exception, opens a
        segment; later fits continue it."""
        if self._begun and not self._training:
            self._first_done()  # a batch began before this epoch: it is done
        if self._training:
            return
        seg = self.current
        if seg is None or seg.end in CAUSES:
            if seg is not None:
                self.past = Timeline([*self.past.segments, seg], self.past.older).trimmed(MAX_SEGMENTS - 1)
            where = position() if callable(position) else position
            host, pid = _identity()
            # A later segment of this process starts where its last one ended.
            started = max((t for _, t in _ENDED.values()), default=_STARTED)
            self.current = Segment(host, pid, started, where, where)
            self._opened = True
        elif self._opened:
            where = position() if callable(position) else position
            seg.resumed_at = seg.reached = where
        else:
            seg.end, seg.ended = "running", None

    def batch_begun(self) -> None:
        """A batch starts: the second one's start is the first one's end."""
        if self._training:
            return
        if self._begun:
            self._first_done()
        self._begun = True

    def batch_done(self) -> None:
        """A batch has been trained."""
        if not self._training:
            self._first_done()

    def _first_done(self) -> None:
        self._training = True
        self._opened = False
        seg = self.current
        if seg is not None and seg.first_batch is None:
            seg.first_batch = time.time()

    def commit(self, position: Position) -> dict[str, Any]:
        """A checkpoint at `position` is being written: returns the timeline
        it holds."""
        seg = self.current
        if seg is not None:
            now = time.time()
            since = seg.committed if seg.committed is not None else seg.first_batch
            if since is not None:
                seg.save_interval_s = max(seg.save_interval_s, now - since)
            seg.committed, seg.reached = now, position
            seg.saves += 1
            if seg.end != "running":
                seg.ended = now
        return self.to_json()

    def to_json(self) -> dict[str, Any]:
        """`timeline().to_json()`, reusing the JSON of the past segments."""
        if self._past_json is None or self._past_json[0] is not self.past:
            self._past_json = (self.past, [s.to_json() for s in self.past.segments])
        segments = list(self._past_json[1])
        if self.current is not None:
            segments.append(self.current.to_json())
        if len(segments) > MAX_SEGMENTS:
            return self.timeline().to_json()
        return {"segments": segments, "older": dict(self.past.older)}

    def saved(self, blocked_s: float, wall_s: float | None = None) -> None:
        """A save blocked the training thread `blocked_s` seconds and took
        `wall_s` in all (default: `blocked_s`)."""
        seg = self.current
        if seg is not None:
            seg.save_blocked_s += max(blocked_s, 0.0)
            seg.save_wall_s += max(wall_s if wall_s is not None else blocked_s, 0.0)

    def written_in_background(self, wall_s: float) -> None:
        """A background write took `wall_s` seconds (from its writer thread)."""
        seg = self.current
        if seg is not None:
            seg.save_wall_s += max(wall_s, 0.0)

    def end(self, cause: str) -> None:
        """This process's fit ended: `"finished"` (only a running segment
        finishes), `"signal"` or `"exception"`."""
        seg = self.current
        if seg is None or cause not in ENDS or (cause == "finished" and seg.end != "running"):
            return
        seg.end, seg.ended = cause, time.time()
        if cause in CAUSES:
            _ENDED[seg.started] = (cause, seg.ended)

    def timeline(self) -> Timeline:
        """The past segments, then this process's (bounded)."""
        segments = list(self.past.segments)
        if self.current is not None:
            segments.append(dataclasses.replace(self.current))
        return Timeline(segments, dict(self.past.older)).trimmed()


def _identity() -> tuple[str, int]:
    return socket.gethostname()[:MAX_HOST], os.getpid()


def _mine(seg: Segment) -> bool:
    """Whether `seg` is a segment of this process."""
    return (seg.host, seg.pid) == _identity() and seg.started >= _STARTED


#: How the segments of this process that ended by an interruption ended, by
#: start: a later model of this process resuming from a checkpoint written
#: before that end learns it here.
_ENDED: dict[float, tuple[str, float]] = {}

_STARTED = process_start()
