r"""One kill-and-restart harness: start a child, kill it, restart it until done.

The demo (`resumable-scheduler demo`), the soak tests and benchmark, the
SIGTERM test and the GPU check all do the same thing: start a training
script in a child process, watch the progress it prints, kill it (SIGKILL,
or SIGTERM for a clean preemption) at chosen or random points, start it
again, and let the last run finish. This module is that loop, once. It
imports neither Keras nor JAX (a command line can still choose the backend
after importing it).

The child speaks a line protocol on its stdout (anything else is kept as
output):

- ``start``: training has begun (the clock of ``Kill(after_seconds=...)``);
- ``batch E B``: batch ``B`` of epoch ``E`` is done (both from 0);
- ``epoch E``: epoch ``E`` (from 0) is done;
- ``result JSON``: the child's result; the finishing run's last one is
  returned as `RunRecord.result`.

`run_until_done` runs the child until one run exits 0, with one `Kill` per
run until the plan is used up, and returns a `RunRecord`. A run that exits
nonzero when no kill was sent raises `ChildFailed`; running past a timeout
kills the child and raises `ChildTimeout`. `Child` is one run of the child,
for tests that need to act while it is alive (wait for a position, a line or
a condition, then signal it); `ChildGroup` is the processes of one
multi-process run, started together and stopped together.

Example: a child that waits for a line on stdin after each batch (so the
kill lands exactly there), killed once after its second batch:

>>> import sys
>>> script = (
...     "import sys\nprint('start', flush=True)\n"
...     "for b in range(3):\n"
...     "    print('batch 0', b, flush=True); sys.stdin.readline()\n"
...     "print('result', '{\"batches\": 3}')\n")
>>> record = run_until_done([sys.executable, "-c", script], [Kill(at_batch=2)],
...                         batches_per_epoch=3, answer="go")
>>> record.runs, record.result
(2, {'batches': 3})
>>> kill = record.kills[0]
>>> kill.progress, kill.batches_done, kill.exit_code == -signal.SIGKILL
(Progress(epoch=0, batch=1), 2, True)
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

T = TypeVar("T")

#: Seconds a killed child gets to exit before it is SIGKILLed (a SIGTERMed
#: child writes its checkpoint first).
DEFAULT_GRACE_S = 60.0
#: Characters of a failed child's stderr quoted in the error.
STDERR_TAIL = 3000


# -- the line protocol ---------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """A position the child reported: `batch E B` (`batch` set) or `epoch E`
    (`batch` None: the whole epoch is done)."""

    epoch: int
    batch: int | None = None

    def batches_done(self, batches_per_epoch: int) -> int:
        """Batches done in all at this position.

        >>> Progress(2, 0).batches_done(5), Progress(2).batches_done(5)
        (11, 15)
        """
        if self.batch is None:
            return (self.epoch + 1) * batches_per_epoch
        return self.epoch * batches_per_epoch + self.batch + 1


def parse_progress(line: str) -> Progress | None:
    """The `Progress` a stdout line reports, or None for any other line.

    >>> parse_progress("batch 3 1"), parse_progress("epoch 4"), parse_progress("loss 0.1")
    (Progress(epoch=3, batch=1), Progress(epoch=4, batch=None), None)
    """
    words = line.split()
    try:
        if len(words) == 3 and words[0] == "batch":
            return Progress(int(words[1]), int(words[2]))
        if len(words) == 2 and words[0] == "epoch":
            return Progress(int(words[1]))
    except ValueError:
        return None
    return None


# -- what to do to each run ----------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """When and how to stop one run of the child. Give exactly one trigger.

    Attributes:
        at_batch: int. Once the child reports a position with at least this
            many batches done in all (counted with `batches_per_epoch`, so
            it holds across restarts that resume).
        after_lines: int. Once this run has printed this many progress lines.
        after_seconds: float. This long after this run printed `start`.
        delay: float. Seconds to wait after the trigger before the signal
            (so a kill lands at any instant of what follows).
        signal: int. The signal (default SIGKILL).
        grace: float. Seconds the child gets to exit after the signal before
            it is SIGKILLed (what a SIGTERMed child gets to save).

    >>> Kill(at_batch=3, after_lines=2)
    Traceback (most recent call last):
    ...
    ValueError: A Kill takes exactly one of at_batch, after_lines, after_seconds. Received: at_batch=3, after_lines=2, after_seconds=None.
    """

    at_batch: int | None = None
    after_lines: int | None = None
    after_seconds: float | None = None
    delay: float = 0.0
    signal: int = signal.SIGKILL
    grace: float = DEFAULT_GRACE_S

    def __post_init__(self) -> None:
        given = [x for x in (self.at_batch, self.after_lines, self.after_seconds) if x is not None]
        if len(given) != 1:
            raise ValueError(
                "A Kill takes exactly one of at_batch, after_lines, after_seconds. Received: "
                f"at_batch={self.at_batch}, after_lines={self.after_lines}, "
                f"after_seconds={self.after_seconds}."
            )
        if self.delay < 0 or self.grace < 0:
            raise ValueError(f"A Kill's delay and grace must be >= 0. Received: {self}.")

    def fires(self, progress: Progress | None, lines: int, batches_per_epoch: int | None) -> bool:
        """Whether a run that reported `progress` (its `lines`-th progress
        line) is due for this kill (time triggers are checked separately)."""
        if self.after_lines is not None:
            return lines >= self.after_lines
        if self.at_batch is not None and progress is not None and batches_per_epoch:
            return progress.batches_done(batches_per_epoch) >= self.at_batch
        return False


def random_kills(
    n: int,
    seed: int | random.Random | None = None,
    *,
    at_batches: Sequence[int] | None = None,
    after_lines: tuple[int, int] | None = None,
    after_seconds: tuple[float, float] | None = None,
    jitter: float = 0.0,
    sig: int = signal.SIGKILL,
) -> list[Kill]:
    """`n` kills at random points, from a seeded RNG (give one range).

    Args:
        n: int. How many kills.
        seed: int, `random.Random` or None. An int or None seeds a new
            `random.Random`; a `random.Random` is drawn from as it is.
        at_batches: a sequence of batch counts: `n` distinct ones are drawn
            (`rng.sample`) and sorted.
        after_lines: `(lo, hi)`: for each kill, `rng.randint(lo, hi)`
            progress lines into its run.
        after_seconds: `(lo, hi)`: for each kill, `rng.uniform(lo, hi)`
            seconds after its run's `start`.
        jitter: float. Each kill's `delay` is drawn from `[0, jitter)` (after
            its point; no draw when 0).
        sig: int. The signal of every kill.

    >>> [k.at_batch for k in random_kills(3, 2, at_batches=range(1, 75))]
    [8, 11, 12]
    >>> random_kills(2, 0, after_lines=(2, 40)) == random_kills(2, 0, after_lines=(2, 40))
    True
    """
    if sum(x is not None for x in (at_batches, after_lines, after_seconds)) != 1:
        raise ValueError("random_kills takes exactly one of at_batches, after_lines, after_seconds.")
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    if at_batches is not None:
        points: list[dict[str, Any]] = [{"at_batch": p} for p in sorted(rng.sample(list(at_batches), n))]
        delays = [rng.uniform(0, jitter) if jitter > 0 else 0.0 for _ in points]
        return [Kill(**p, delay=d, signal=sig) for p, d in zip(points, delays)]
    kills = []
    for _ in range(n):
        if after_lines is not None:
            point: dict[str, Any] = {"after_lines": rng.randint(*after_lines)}
        else:
            assert after_seconds is not None
            point = {"after_seconds": rng.uniform(*after_seconds)}
        delay = rng.uniform(0, jitter) if jitter > 0 else 0.0
        kills.append(Kill(**point, delay=delay, signal=sig))
    return kills


# -- records -------------------------------------------------------------------------


@dataclass
class KillRecord:
    """One run the harness stopped.

    Attributes:
        run: int. Which run (from 1).
        signal: int. The signal sent.
        progress: the last position the run reported before the signal.
        batches_done: `progress.batches_done(batches_per_epoch)`, when known.
        lines: int. Progress lines the run printed before the signal.
        delay: float. Seconds waited between the trigger and the signal.
        exit_code: int. The run's exit status (`-9` for SIGKILL; a SIGTERMed
            child's own status, e.g. `rs.PREEMPTED_EXIT_CODE`).
        exit_seconds: float. From the signal to the exit.
        escalated: bool. The child outlived `grace` and was SIGKILLed.
        info: dict. Free for `after_kill` to fill (e.g. where the backup is).
    """

    run: int
    signal: int
    progress: Progress | None
    batches_done: int | None
    lines: int
    delay: float
    exit_code: int
    exit_seconds: float
    escalated: bool = False
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    """What `run_until_done` did.

    Attributes:
        command: the first run's command line.
        kills: one `KillRecord` per run stopped, in order.
        runs: int. Runs started (the last one finished).
        result: the finishing run's last `result` JSON, or None.
        output: the finishing run's stdout lines that are not protocol.
        progress: the finishing run's last reported position.
        finished_before_kill: bool. The finishing run was due for a kill but
            had already exited 0 when the signal would have landed.
        unused_kills: int. Planned kills never used (the child finished first).
        seconds: float. Wall time of the whole loop.
    """

    command: list[str]
    kills: list[KillRecord]
    runs: int
    result: Any
    output: list[str]
    progress: Progress | None
    finished_before_kill: bool
    unused_kills: int
    seconds: float

    @property
    def restarts(self) -> int:
        """Runs started after the first."""
        return self.runs - 1


class ChildFailed(RuntimeError):
    """A run exited nonzero though the harness sent it no signal."""

    def __init__(self, message: str, run: int, exit_code: int, stderr: str) -> None:
        super().__init__(message)
        self.run = run
        self.exit_code = exit_code
        self.stderr = stderr


class ChildTimeout(TimeoutError):
    """A run outlived its timeout; the harness SIGKILLed it."""

    def __init__(self, message: str, run: int, stderr: str) -> None:
        super().__init__(message)
        self.run = run
        self.stderr = stderr


# -- one run ---------------------------------------------------------------------------


class Child:
    """One run of a child command whose stdout is read by a thread.

    Use it as a context manager: on exit a child still alive is SIGKILLed.

    >>> import sys
    >>> with Child([sys.executable, "-c", "print('batch 0 0'); print('batch 0 1')"]) as c:
    ...     c.wait_for(lambda p: p.batch == 1, timeout=60)
    ...     c.wait(timeout=60)
    Progress(epoch=0, batch=1)
    0

    Args:
        command: the command line.
        env: the environment (default: this process's).
        cwd: the working directory.
        stdin: bool. Give the child a stdin pipe (for `answer`); else /dev/null.
        stderr_path: str, optional. Where the child's stderr goes (default:
            a temporary file, deleted when the run is closed).
        run: int. The run's number, for messages.

    Attributes:
        progress: the last position the child reported (None before any).
        reported: every position it reported, in order (`lines` of them).
        output: its stdout lines that are not protocol, read so far.
        result: its last `result` JSON, or None.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bool = False,
        stderr_path: str | None = None,
        run: int = 1,
    ) -> None:
        self.command = [os.fspath(c) for c in command]
        self.run = run
        self.progress: Progress | None = None
        self.reported: list[Progress] = []
        self.lines = 0
        self.output: list[str] = []
        self.result: Any = None
        self.started_at: float | None = None
        self.stderr_file: IO[bytes] = (
            open(stderr_path, "wb") if stderr_path else tempfile.TemporaryFile()  # noqa: SIM115
        )
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.eof = False
        try:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self.stderr_file,
                text=True,
                bufsize=1,
                env=dict(env) if env is not None else None,
                cwd=cwd,
            )
        except BaseException:
            self.stderr_file.close()
            raise
        self.reader = threading.Thread(target=self.read_stdout, daemon=True)
        self.reader.start()

    def read_stdout(self) -> None:
        """The reader thread: every stdout line into the queue, then None."""
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.queue.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self.queue.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def take(self, line: str) -> Progress | None:
        """Records one stdout line; returns its `Progress`, if it is one."""
        text = line.rstrip("\n")
        progress = parse_progress(text)
        if progress is not None:
            self.progress = progress
            self.reported.append(progress)
            self.lines += 1
        elif text.strip() == "start":
            self.started_at = time.monotonic()
        elif text.startswith("result "):
            self.result = json.loads(text[len("result "):])
        else:
            self.output.append(text)
        return progress

    def next_line(self, timeout: float | None) -> str | None:
        """The next stdout line (recorded), None at end of output; raises
        `queue.Empty` when none comes within `timeout` seconds."""
        if self.eof:
            return None
        line = self.queue.get(timeout=None if timeout is None else max(timeout, 0.0))
        if line is None:
            self.eof = True
            return None
        self.take(line)
        return line

    def wait_for(self, predicate: Callable[[Progress], bool], timeout: float) -> Progress:
        """Reads until a reported position satisfies `predicate`; returns it.

        Raises `ChildTimeout` (after SIGKILLing the child) past `timeout`
        seconds, `ChildFailed` if the child's output ends first.
        """
        def wanted(line: str) -> bool:
            return parse_progress(line) is not None and predicate(self.progress)  # type: ignore[arg-type]

        self.read_until(wanted, timeout, "position")
        assert self.progress is not None
        return self.progress

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """Reads until a stdout line (without its newline) satisfies
        `predicate`; returns it. Raises as `wait_for` does.

        >>> import sys
        >>> with Child([sys.executable, "-c", "print('put a'); print('done a')"]) as c:
        ...     c.wait_for_line(lambda line: line.startswith("done"), timeout=60)
        ...     c.output
        'done a'
        ['put a', 'done a']
        """
        return self.read_until(lambda line: predicate(line.rstrip("\n")), timeout, "line").rstrip("\n")

    def read_until(self, wanted: Callable[[str], bool], timeout: float, what: str) -> str:
        """Reads (and records) stdout lines until one is `wanted`; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.next_line(deadline - time.monotonic())
            except queue.Empty:
                self.stop(signal.SIGKILL, 0)
                raise ChildTimeout(self.describe(f"printed no wanted {what} within {timeout} s"),
                                   self.run, self.stderr_tail()) from None
            if line is None:
                code = self.wait(timeout=max(deadline - time.monotonic(), 1.0))
                raise ChildFailed(self.describe(f"ended (exit status {code}) before the wanted {what}")
                                  + f" Its stderr ends with:\n{self.stderr_tail()}",
                                  self.run, code, self.stderr_tail())
            if wanted(line):
                return line

    def wait_until(self, condition: Callable[[], T], timeout: float, interval: float = 0.001) -> T | None:
        """Calls `condition` every `interval` seconds while the child runs
        (a file appearing, say) and returns its first truthy value; None if
        the child exited first (`condition` is asked once more after the
        exit). The child's output is still read meanwhile.

        Raises `ChildTimeout` (after SIGKILLing the child) past `timeout`.

        >>> import os, sys, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "made")
        >>> with Child([sys.executable, "-c", f"import time; time.sleep(0.2); open({path!r}, 'w')"]) as c:
        ...     c.wait_until(lambda: os.path.exists(path), timeout=60)
        True
        """
        deadline = time.monotonic() + timeout
        while True:
            alive = self.proc.poll() is None
            value = condition()
            if value:
                return value
            if not alive:
                return None
            if time.monotonic() >= deadline:
                self.stop(signal.SIGKILL, 0)
                raise ChildTimeout(self.describe(f"did not bring about the wanted condition within {timeout} s"),
                                   self.run, self.stderr_tail())
            time.sleep(interval)

    def answer(self, text: str) -> None:
        """Writes `text` and a newline to the child's stdin (ignored if it is gone)."""
        if self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def wait(self, timeout: float | None = None) -> int:
        """Waits for the exit (`subprocess.TimeoutExpired` past `timeout`)."""
        return self.proc.wait(timeout=timeout)

    def finish(self, timeout: float) -> int:
        """Waits for the exit and reads all the output; returns the exit
        status. Past `timeout` seconds the child is SIGKILLed and
        `ChildTimeout` raised. (After `stop`, it just reads what is left.)"""
        try:
            code = self.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(signal.SIGKILL, 0)
            raise ChildTimeout(self.describe(f"did not exit within {timeout} s; SIGKILLed")
                               + f"\n{self.stderr_tail()}", self.run, self.stderr_tail()) from None
        drain(self)
        return code

    def send_signal(self, sig: int) -> bool:
        """Sends `sig` without waiting; False if the child had already exited."""
        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(sig)
        return True

    def stop(self, sig: int = signal.SIGKILL, grace: float = DEFAULT_GRACE_S) -> tuple[int, float, bool]:
        """Sends `sig` (if the child is alive) and waits for the exit; a child
        still alive `grace` seconds later is SIGKILLed.

        Returns `(exit status, seconds from the signal to the exit, whether
        it had to be SIGKILLed after the grace)`.
        """
        sent = time.monotonic()
        escalated = False
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=grace if sig != signal.SIGKILL else None)
            except subprocess.TimeoutExpired:
                escalated = True
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, time.monotonic() - sent, escalated

    def stderr_tail(self, chars: int = STDERR_TAIL) -> str:
        """The end of what the child wrote to stderr."""
        try:
            self.stderr_file.flush()
            self.stderr_file.seek(0, os.SEEK_END)
            size = self.stderr_file.tell()
            self.stderr_file.seek(max(size - chars, 0))
            return self.stderr_file.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def describe(self, what: str) -> str:
        where = "no progress reported" if self.progress is None else f"last reported {self.progress}"
        return f"Run {self.run} of {' '.join(self.command)!r} {what} ({where})."

    def close(self) -> None:
        """SIGKILLs the child if it is alive; closes its pipes and stderr file."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except (OSError, ValueError):
                    pass
        self.stderr_file.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the processes of one run ---------------------------------------------------------


class ChildGroup:
    """Children started together and stopped together: the processes of one
    multi-process run (one of them dying makes the others fail or hang, so a
    kill is for all of them). Each is a `Child`; index the group for one.

    Use it as a context manager: on exit every child still alive is SIGKILLed.

    >>> import sys
    >>> script = "import sys; print('start'); print('batch 0', sys.argv[1]); print('done')"
    >>> with ChildGroup([[sys.executable, "-c", script, str(i)] for i in range(2)]) as group:
    ...     group.finish(timeout=60)
    ...     [c.progress for c in group], group[1].output
    [0, 0]
    ([Progress(epoch=0, batch=0), Progress(epoch=0, batch=1)], ['done'])

    Args:
        commands: one command line per child.
        env, cwd: for every child.
        stderr_paths: optional, one path per child for its stderr (default:
            temporary files).
        run: int. The run's number, for messages.
    """

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stderr_paths: Sequence[str] | None = None,
        run: int = 1,
    ) -> None:
        if stderr_paths is not None and len(stderr_paths) != len(commands):
            raise ValueError(f"One stderr path per command. Received: {len(stderr_paths)} for "
                             f"{len(commands)} commands.")
        self.run = run
        self.children: list[Child] = []
        try:
            for i, command in enumerate(commands):
                self.children.append(Child(command, env=env, cwd=cwd, run=run,
                                           stderr_path=stderr_paths[i] if stderr_paths else None))
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.children)

    def __getitem__(self, i: int) -> Child:
        return self.children[i]

    def __iter__(self) -> Iterator[Child]:
        return iter(self.children)

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def watch(self, kill: Kill, *, batches_per_epoch: int | None = None, timeout: float = 600.0,
              leader: int = 0) -> bool:
        """Reads child `leader`'s output until `kill` is due (then waits its
        `delay` and returns True: send the signal with `stop`), or until
        that output ends (False). Past `timeout` seconds every child is
        SIGKILLed and `ChildTimeout` raised."""
        if kill.at_batch is not None and not batches_per_epoch:
            raise ValueError("Kill(at_batch=...) needs batches_per_epoch.")
        try:
            fired = watch(self.children[leader], kill, batches_per_epoch, None, time.monotonic() + timeout,
                          "every process of the group", timeout, None)
        except ChildTimeout:
            self.close()
            raise
        if fired and kill.delay:
            time.sleep(kill.delay)
        return fired

    def stop(self, sig: int = signal.SIGKILL, grace: float = DEFAULT_GRACE_S, *,
             only: int | None = None) -> list[int]:
        """Sends `sig` to every child alive, or only to child `only` (the
        others are to stop with it, as the processes of one run do), then
        waits for all to exit and reads what is left of their output. Those
        alive `grace` seconds after the signal are SIGKILLed (a SIGKILL
        does not wait). Returns the exit statuses, in order."""
        for i, child in enumerate(self.children):
            if only is None or i == only:
                child.send_signal(sig)
        deadline = time.monotonic() + (0.0 if sig == signal.SIGKILL and only is None else grace)
        codes = []
        for child in self.children:
            try:
                code = child.wait(timeout=None if sig == signal.SIGKILL and only is None
                                  else max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                code, _, _ = child.stop(signal.SIGKILL, 0)
            drain(child)
            codes.append(code)
        return codes

    def finish(self, timeout: float) -> list[int]:
        """Waits for every child to exit and reads all their output; returns
        the exit statuses. Past `timeout` seconds every child is SIGKILLed
        and `ChildTimeout` raised."""
        deadline = time.monotonic() + timeout
        codes = []
        for child in self.children:
            try:
                codes.append(child.finish(max(deadline - time.monotonic(), 0.1)))
            except ChildTimeout:
                self.close()
                raise
        return codes

    def stderr_tails(self, chars: int = STDERR_TAIL) -> str:
        """The end of each child's stderr, each under a header (for messages)."""
        return "\n".join(f"--- process {i} (run {self.run}) stderr ---\n{c.stderr_tail(chars)}"
                         for i, c in enumerate(self.children))

    def close(self) -> None:
        """SIGKILLs every child alive; closes their pipes and files."""
        for child in self.children:
            child.send_signal(signal.SIGKILL)
        for child in self.children:
            child.close()

    def __enter__(self) -> ChildGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the loop --------------------------------------------------------------------------


def run_until_done(
    command: Sequence[str] | Callable[[int], Sequence[str]],
    kills: Iterable[Kill] = (),
    *,
    batches_per_epoch: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    answer: str | None = None,
    log_dir: str | None = None,
    log_name: str = "child",
    timeout: float = 600.0,
    run_timeout: float | None = None,
    after_kill: Callable[[KillRecord], None] | None = None,
    name: str = "The child process",
) -> RunRecord:
    """Runs `command` until a run exits 0, stopping run k with `kills[k]`.

    Each run is a fresh process (the child resumes by itself, from its own
    checkpoints); once the plan is used up, the next run is left to finish.

    Args:
        command: the command line, or a function of the run number (from 1)
            that returns it.
        kills: the plan: one `Kill` per run, in order.
        batches_per_epoch: int. Needed by `Kill(at_batch=...)`.
        env, cwd: for the child.
        answer: str, optional. Written (with a newline) to the child's stdin
            after every progress line that triggers no kill, for a child
            that waits for the parent at each step; None: stdin is /dev/null.
        log_dir: str, optional. Run k's stderr goes to
            `log_dir/{log_name}-{k}.log` (default: a temporary file).
        timeout: float. Seconds for the whole loop.
        run_timeout: float, optional. Seconds for one run.
        after_kill: called with each `KillRecord` once the killed run has
            exited and before the next starts (look at its checkpoints then).
        name: how errors name the child.

    Returns:
        A `RunRecord`.

    Raises:
        ChildFailed: a run exited nonzero without a signal from the harness.
        ChildTimeout: a run outlived `run_timeout` or the loop `timeout`.
        ValueError: `Kill(at_batch=...)` without `batches_per_epoch`.
    """
    plan = list(kills)
    if any(k.at_batch is not None for k in plan) and not batches_per_epoch:
        raise ValueError("Kill(at_batch=...) needs batches_per_epoch.")
    make = command if callable(command) else (lambda _run: command)
    t0 = time.monotonic()
    deadline = t0 + timeout
    records: list[KillRecord] = []
    first: list[str] | None = None
    run = 0
    while True:
        run += 1
        kill = plan.pop(0) if plan else None
        argv = [os.fspath(c) for c in make(run)]
        first = first or argv
        stderr_path = os.path.join(log_dir, f"{log_name}-{run}.log") if log_dir else None
        with Child(argv, env=env, cwd=cwd, stdin=answer is not None, stderr_path=stderr_path, run=run) as child:
            run_deadline = deadline if run_timeout is None else min(deadline, time.monotonic() + run_timeout)
            fired = watch(child, kill, batches_per_epoch, answer, run_deadline, name, timeout, run_timeout)
            if fired:
                assert kill is not None
                if kill.delay:
                    time.sleep(kill.delay)
                code, seconds, escalated = child.stop(kill.signal, kill.grace)
                if code != 0:
                    record = KillRecord(
                        run=run, signal=kill.signal, progress=child.progress,
                        batches_done=(child.progress.batches_done(batches_per_epoch)
                                      if child.progress is not None and batches_per_epoch else None),
                        lines=child.lines, delay=kill.delay, exit_code=code,
                        exit_seconds=seconds, escalated=escalated,
                    )
                    records.append(record)
                    if after_kill is not None:
                        after_kill(record)
                    continue
                drain(child)  # it had finished before the signal would land
            else:
                try:
                    code = child.wait(timeout=max(run_deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    child.stop(signal.SIGKILL, 0)
                    raise ChildTimeout(
                        f"{name} ran past its timeout in run {run}; SIGKILLed.\n{child.stderr_tail()}",
                        run, child.stderr_tail()) from None
                if code != 0:
                    tail = child.stderr_tail()
                    where = "no progress reported" if child.progress is None else f"last reported {child.progress}"
                    raise ChildFailed(
                        f"{name} failed (exit {code}) in run {run}, with no signal from the harness "
                        f"({where}; command: {' '.join(argv)}). Its stderr ends with:\n{tail}",
                        run, code, tail)
            return RunRecord(
                command=first, kills=records, runs=run, result=child.result, output=child.output,
                progress=child.progress, finished_before_kill=fired, unused_kills=len(plan),
                seconds=time.monotonic() - t0,
            )


def watch(
    child: Child,
    kill: Kill | None,
    batches_per_epoch: int | None,
    answer: str | None,
    deadline: float,
    name: str,
    timeout: float,
    run_timeout: float | None,
) -> bool:
    """Reads the run's output until `kill` is due (True) or the output ends
    (False); SIGKILLs the run and raises `ChildTimeout` past `deadline`."""
    while True:
        now = time.monotonic()
        wake = deadline
        if kill is not None and kill.after_seconds is not None and child.started_at is not None:
            due = child.started_at + kill.after_seconds
            if now >= due:
                return True
            wake = min(wake, due)
        try:
            line = child.next_line(wake - now)
        except queue.Empty:
            if time.monotonic() >= deadline:
                child.stop(signal.SIGKILL, 0)
                limit = f"{run_timeout} s a run" if run_timeout is not None else f"{timeout} s in all"
                raise ChildTimeout(
                    child.describe(f"ran past the timeout ({limit}); {name} was SIGKILLed")
                    + f"\n{child.stderr_tail()}",
                    child.run, child.stderr_tail()) from None
            continue
        if line is None:
            return False
        if parse_progress(line) is None:
            continue
        if kill is not None and kill.fires(child.progress, child.lines, batches_per_epoch):
            return True
        if answer is not None:
            child.answer(answer)


def drain(child: Child) -> None:
    """Records what is left of a finished run's output."""
    while child.next_line(10) is not None:
        pass


# -- looking at a backup after a kill --------------------------------------------------


def backup_position(backup_dir: str) -> tuple[int, int] | None:
    """`(epoch, batch)` of the checkpoint in `backup_dir` that the next run
    resumes from (`rs.BackupAndRestore`'s or stock's), or None if there is
    none yet. Imports Keras (through `rs.read_state`)."""
    from resumable_scheduler.api import read_state

    try:
        saved = read_state(backup_dir)
    except (OSError, ValueError):
        return None
    return int(saved["epoch"]), int(saved.get("batch") or 0)


def inside_write(backup_dir: str) -> bool:
    """Whether a kill left a half-written commit (a temporary) in
    `backup_dir` (a bucket has none: an object appears whole or not at all).
    Imports Keras (through `resumable_scheduler.storage`)."""
    from resumable_scheduler.storage.atomic import TMP_MARK

    try:
        return any(TMP_MARK in name for name in os.listdir(backup_dir))
    except OSError:
        return False
