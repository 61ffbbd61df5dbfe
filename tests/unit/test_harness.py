"""resumable_scheduler.harness against a tiny pure-Python child (no Keras):
kills at chosen and random points, restarts, SIGTERM and its grace,
timeouts, failures and the records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from resumable_scheduler import harness
from resumable_scheduler.harness import ChildFailed, ChildTimeout, Kill, Progress, run_until_done

#: A child that "trains" TOTAL batches of PER_EPOCH, resuming from a state
#: file (its checkpoint, committed after every batch), and speaks the
#: harness's line protocol.
CHILD = r'''
import argparse, json, os, signal, sys, time

p = argparse.ArgumentParser()
p.add_argument("state")
p.add_argument("--total", type=int, default=10)
p.add_argument("--per-epoch", type=int, default=5)
p.add_argument("--wait", action="store_true", help="read a stdin line after each progress line")
p.add_argument("--epoch-lines", action="store_true", help="print `epoch E` only, at epoch ends")
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--start-delay", type=float, default=0.0)
p.add_argument("--fail-at", type=int, default=None)
p.add_argument("--hang", action="store_true")
p.add_argument("--term", action="store_true", help="exit 42 on SIGTERM")
p.add_argument("--ignore-term", action="store_true")
p.add_argument("--pid-file")
a = p.parse_args()
if a.pid_file:
    with open(a.pid_file, "w") as f:
        f.write(str(os.getpid()))
if a.term:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
if a.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
done = int(open(a.state).read()) if os.path.exists(a.state) else 0
start = done
time.sleep(a.start_delay)
print("start", flush=True)
if a.hang:
    time.sleep(3600)
while done < a.total:
    if a.fail_at is not None and done == a.fail_at:
        print(f"boom at batch {done}", file=sys.stderr, flush=True)
        sys.exit(3)
    done += 1
    with open(a.state + ".tmp", "w") as f:
        f.write(str(done))
    os.replace(a.state + ".tmp", a.state)
    epoch, batch = divmod(done - 1, a.per_epoch)
    if not a.epoch_lines:
        print(f"batch {epoch} {batch}", flush=True)
    elif batch == a.per_epoch - 1:
        print(f"epoch {epoch}", flush=True)
    else:
        continue
    if a.wait:
        sys.stdin.readline()
    time.sleep(a.sleep)
print("some other output")
print("result " + json.dumps({"done": done, "resumed_from": start}), flush=True)
'''


@pytest.fixture
def child(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    state = tmp_path / "state"

    def command(*flags):
        return [sys.executable, os.fspath(script), os.fspath(state), *flags]

    return command


def test_kills_at_chosen_batches_then_the_last_run_finishes(child, tmp_path):
    seen = []

    def after_kill(k):
        seen.append(k.run)
        k.info["state"] = int((tmp_path / "state").read_text())

    logs = tmp_path / "logs"
    logs.mkdir()
    record = run_until_done(child("--wait"), [Kill(at_batch=3), Kill(at_batch=7)], batches_per_epoch=5,
                            answer="go", after_kill=after_kill, log_dir=os.fspath(logs))
    assert record.runs == 3 and record.restarts == 2 and seen == [1, 2]
    assert [k.progress for k in record.kills] == [Progress(0, 2), Progress(1, 1)]
    assert [k.batches_done for k in record.kills] == [3, 7]
    assert [k.signal for k in record.kills] == [signal.SIGKILL] * 2
    assert [k.exit_code for k in record.kills] == [-signal.SIGKILL] * 2
    assert [k.info["state"] for k in record.kills] == [3, 7]  # killed while waiting: nothing more done
    assert record.kills[1].lines == 4  # the second run resumed at batch 4 (of 10)
    assert record.result == {"done": 10, "resumed_from": 7}
    assert record.output == ["some other output"]
    assert record.progress == Progress(1, 4)
    assert not record.finished_before_kill and record.unused_kills == 0
    assert sorted(os.listdir(logs)) == ["child-1.log", "child-2.log", "child-3.log"]


def test_epoch_lines_count_whole_epochs(child):
    # A child that reports only epoch ends (as the stock demo does) and waits there.
    record = run_until_done(child("--wait", "--epoch-lines", "--total", "15"), [Kill(at_batch=10)],
                            batches_per_epoch=5, answer="")
    assert [(k.progress, k.batches_done) for k in record.kills] == [(Progress(1), 10)]
    assert record.result == {"done": 15, "resumed_from": 10}


def test_random_kills_are_seeded():
    plan = harness.random_kills(5, 7, at_batches=range(1, 75), jitter=0.02)
    assert plan == harness.random_kills(5, 7, at_batches=range(1, 75), jitter=0.02)
    assert plan != harness.random_kills(5, 8, at_batches=range(1, 75), jitter=0.02)
    points = [k.at_batch for k in plan]
    assert points == sorted(set(points)) and all(1 <= p < 75 for p in points)
    assert all(0 <= k.delay < 0.02 for k in plan)
    lines = harness.random_kills(4, 1, after_lines=(2, 40))
    assert all(2 <= k.after_lines <= 40 and k.delay == 0 for k in lines)
    secs = harness.random_kills(3, 1, after_seconds=(0, 1.5), sig=signal.SIGTERM)
    assert all(0 <= k.after_seconds <= 1.5 and k.signal == signal.SIGTERM for k in secs)
    with pytest.raises(ValueError, match="exactly one of"):
        harness.random_kills(1, 0)


def test_after_lines_counts_the_lines_of_each_run(child):
    record = run_until_done(child("--wait"), [Kill(after_lines=2), Kill(after_lines=2)],
                            batches_per_epoch=5, answer="")
    assert [k.batches_done for k in record.kills] == [2, 4]
    assert record.result == {"done": 10, "resumed_from": 4}


def test_after_seconds_counts_from_the_start_line(child):
    # Counted from the spawn, the kill would land before `start` (1 s in).
    record = run_until_done(child("--start-delay", "1.0", "--sleep", "0.1", "--total", "100"),
                            [Kill(after_seconds=0.35)], batches_per_epoch=5)
    (kill,) = record.kills
    assert 1 <= kill.lines < 100
    assert record.result["resumed_from"] >= kill.lines


def test_sigterm_lets_the_child_exit_by_itself(child):
    record = run_until_done(child("--term", "--sleep", "0.05"), [Kill(at_batch=2, signal=signal.SIGTERM)],
                            batches_per_epoch=5)
    (kill,) = record.kills
    assert kill.signal == signal.SIGTERM and kill.exit_code == 42
    assert not kill.escalated and kill.exit_seconds < 5
    assert record.runs == 2 and record.result["done"] == 10


def test_a_child_that_outlives_the_grace_is_sigkilled(child):
    record = run_until_done(child("--ignore-term", "--wait"),
                            [Kill(at_batch=2, signal=signal.SIGTERM, grace=0.3)],
                            batches_per_epoch=5, answer="")
    (kill,) = record.kills
    assert kill.escalated and kill.exit_code == -signal.SIGKILL
    assert 0.3 <= kill.exit_seconds < 10


def test_a_child_that_fails_without_a_kill_is_a_clear_error(child):
    with pytest.raises(ChildFailed) as e:
        run_until_done(child("--fail-at", "3"), name="The demo's child")
    msg = str(e.value)
    assert "The demo's child failed (exit 3) in run 1, with no signal from the harness" in msg
    assert "last reported Progress(epoch=0, batch=2)" in msg
    assert "boom at batch 3" in msg and "boom at batch 3" in e.value.stderr
    assert (e.value.run, e.value.exit_code) == (1, 3)


def test_a_failure_after_a_restart_names_its_run(child):
    with pytest.raises(ChildFailed) as e:
        run_until_done(child("--wait", "--fail-at", "6"), [Kill(at_batch=2)], batches_per_epoch=5, answer="")
    assert e.value.run == 2 and "in run 2" in str(e.value)


def test_a_run_past_its_timeout_is_killed_and_reported(child, tmp_path):
    pid_file = tmp_path / "pid"
    t = time.monotonic()
    with pytest.raises(ChildTimeout) as e:
        run_until_done(child("--hang", "--pid-file", os.fspath(pid_file)), run_timeout=1.0)
    assert time.monotonic() - t < 30
    assert "ran past the timeout (1.0 s a run)" in str(e.value) and e.value.run == 1
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
    with pytest.raises(ChildTimeout, match=r"0.5 s in all"):
        run_until_done(child("--hang"), timeout=0.5)


def test_a_kill_that_finds_the_child_done_ends_the_loop(child):
    # The trigger fires at the last batch; the child exits 0 during the delay.
    record = run_until_done(child("--total", "3"), [Kill(at_batch=3, delay=1.0), Kill(at_batch=5)],
                            batches_per_epoch=5)
    assert record.finished_before_kill and record.kills == [] and record.runs == 1
    assert record.unused_kills == 1 and record.result == {"done": 3, "resumed_from": 0}


def test_command_can_change_per_run(child):
    commands = []

    def command(run):
        commands.append(run)
        return child("--wait") if run == 1 else child()

    record = run_until_done(command, [Kill(at_batch=1)], batches_per_epoch=5, answer="")
    assert commands == [1, 2] and record.result["resumed_from"] == 1


def test_bad_plans_are_refused():
    with pytest.raises(ValueError, match="exactly one of at_batch, after_lines, after_seconds"):
        Kill()
    with pytest.raises(ValueError, match="needs batches_per_epoch"):
        run_until_done([sys.executable, "-c", "pass"], [Kill(at_batch=1)])


def test_child_wait_for_then_stop(child):
    with harness.Child(child("--wait"), stdin=True) as c:
        c.answer("")
        assert c.wait_for(lambda p: p.batch == 1, timeout=60) == Progress(0, 1)
        code, _, escalated = c.stop(signal.SIGKILL)
        assert code == -signal.SIGKILL and not escalated
    with harness.Child(child("--total", "2")) as c, pytest.raises(ChildFailed, match="before the wanted position"):
        c.wait_for(lambda p: p.epoch == 5, timeout=60)


def test_importing_the_harness_imports_no_keras():
    code = "import sys, resumable_scheduler.harness; print(sorted(m for m in ('keras', 'jax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_child_wait_for_line_and_wait_until(child, tmp_path):
    with harness.Child(child("--sleep", "0.05")) as c:
        assert c.wait_until(lambda: (tmp_path / "state").exists() and int((tmp_path / "state").read_text()) >= 3,
                            timeout=60)
        assert c.wait_for_line(lambda line: line.startswith("result"), timeout=60).startswith("result ")
        assert c.output == ["some other output"] and c.result["done"] == 10
        assert c.reported == [Progress(e, b) for e in range(2) for b in range(5)] and c.lines == 10
        assert c.finish(timeout=60) == 0
    with harness.Child(child("--total", "2")) as c:  # exits before the condition holds
        assert c.wait_until(lambda: False, timeout=60) is None
    with harness.Child(child("--total", "2")) as c, pytest.raises(ChildFailed, match="before the wanted line"):
        c.wait_for_line(lambda line: line == "never", timeout=60)
    with harness.Child(child("--hang")) as c, pytest.raises(ChildTimeout, match="within 0.3 s"):
        c.wait_until(lambda: False, timeout=0.3)
    assert c.returncode == -signal.SIGKILL


def group_commands(child, tmp_path, *flags, n=2):
    """`n` commands of the test child, each with its own state file."""
    python, script = child()[:2]
    return [[python, script, os.fspath(tmp_path / f"state-{i}"), *flags] for i in range(n)]


def test_group_runs_to_the_end_together(child, tmp_path):
    logs = [os.fspath(tmp_path / f"err-{i}.log") for i in range(2)]
    with harness.ChildGroup(group_commands(child, tmp_path, "--fail-at", "99"), stderr_paths=logs) as group:
        assert len(group) == 2 and len(set(group.pids)) == 2
        assert group.finish(timeout=60) == [0, 0]
        assert [c.result for c in group] == [{"done": 10, "resumed_from": 0}] * 2
        assert [c.progress for c in group] == [Progress(1, 4)] * 2
    assert all(os.path.exists(p) for p in logs)
    with pytest.raises(ValueError, match="One stderr path per command"):
        harness.ChildGroup(group_commands(child, tmp_path), stderr_paths=logs[:1])


def test_group_killed_together_when_the_leader_is_due(child, tmp_path):
    with harness.ChildGroup(group_commands(child, tmp_path, "--sleep", "0.05", "--total", "200")) as group:
        assert group.watch(Kill(after_lines=3), timeout=60)
        assert group[0].lines == 3
        assert group.stop() == [-signal.SIGKILL] * 2
    for pid in group.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # The next run of the group resumes (each child from its own state).
    with harness.ChildGroup(group_commands(child, tmp_path, "--total", "20")) as group:
        # Batch 100 never comes: the leader's output ends first.
        assert group.watch(Kill(at_batch=100), batches_per_epoch=5, timeout=60) is False
        assert group.finish(timeout=60) == [0, 0]
        assert group[0].result["resumed_from"] >= 3 and group[0].reported[0].batches_done(5) >= 4


def test_group_signal_to_one_and_the_grace_for_the_others(child, tmp_path):
    # Child 1 alone gets the SIGTERM (and exits 42); child 0 never stops by
    # itself, so it is SIGKILLed once the grace is over.
    commands = group_commands(child, tmp_path, "--term", "--sleep", "0.05", "--total", "400")
    with harness.ChildGroup(commands) as group:
        assert group.watch(Kill(at_batch=2, signal=signal.SIGTERM), batches_per_epoch=5, timeout=60)
        t = time.monotonic()
        assert group.stop(signal.SIGTERM, grace=0.5, only=1) == [-signal.SIGKILL, 42]
        assert 0.5 <= time.monotonic() - t < 10


def test_group_timeout_kills_every_child(child, tmp_path):
    with harness.ChildGroup(group_commands(child, tmp_path, "--hang")) as group:
        with pytest.raises(ChildTimeout, match=r"0.5 s in all\); every process of the group was SIGKILLed"):
            group.watch(Kill(after_lines=1), timeout=0.5)
        assert [c.returncode for c in group] == [-signal.SIGKILL] * 2
    with harness.ChildGroup(group_commands(child, tmp_path, "--hang")) as group:
        with pytest.raises(ChildTimeout, match="did not exit within"):
            group.finish(timeout=0.5)
        assert [c.returncode for c in group] == [-signal.SIGKILL] * 2
