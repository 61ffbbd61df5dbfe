"""The `resumable-scheduler` command: a thin shell over the library.

Subcommands:

- `demo`: the kill-and-resume demo (`resumable_scheduler.demo`).
- `inspect PATH [--json] [--plot FILE.png] [--step N]`: the state saved in
  a checkpoint, as `rs.read_state` returns it, then what interruptions cost
  the run (`rs.goodput`); `--json` gives both (the report under
  `"goodput"`), `--plot` draws the learning-rate history with each resume
  marked and the run's timeline underneath.

Errors (a missing path, a file with no state, an unreadable or crafted
checkpoint, `--step` for a file that has no steps) print one line on stderr
that names the path and exit with status 2, never a traceback.

Example:

>>> main(["inspect", "no/such/file.keras"])
2
"""

from __future__ import annotations

import os

# The backend must be chosen before Keras is first imported.
os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

PROG = "resumable-scheduler"
SCHEDULER_KEY = "LearningRateScheduler"


class CliError(Exception):
    """An error reported as one line on stderr, exit status 2."""


def _fmt_rate(x: Any) -> str:
    return "-" if x is None else f"{x:.7g}"


def format_table(state: dict[str, Any]) -> str:
    """The state as a readable text table.

    >>> print(format_table({"source": "x.keras", "version": 1, "epoch": 2,
    ...     "batch": 0, "step": 10, "learning_rate": 0.01,
    ...     "initial_learning_rate": 0.01, "history": [0.01, 0.01],
    ...     "callbacks": {"LearningRateScheduler": {}}}))
    checkpoint             x.keras
    format version         1
    next epoch             2
    batch                  0
    optimizer step         10
    learning rate          0.01
    initial learning rate  0.01
    <BLANKLINE>
    epoch  learning rate
    -----  -------------
        0  0.01
        1  0.01
    <BLANKLINE>
    other callbacks        (none)
    """
    rows = [
        ("checkpoint", state.get("source", "")),
        ("format version", state.get("version", "-")),
        ("next epoch", state.get("epoch")),
        ("batch", state.get("batch")),
        ("optimizer step", state.get("step")),
        ("learning rate", _fmt_rate(state.get("learning_rate"))),
        ("initial learning rate", _fmt_rate(state.get("initial_learning_rate"))),
    ]
    multi = state.get("optimizer_learning_rates") or []
    if multi:
        rows.append(("optimizer learning rates", ", ".join(_fmt_rate(r) for r in multi)))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]

    history = list(state.get("history") or [])
    hists = [list(h) for h in state.get("optimizer_histories") or []]
    lines.append("")
    if history:
        headers = ["epoch", "learning rate"] + [f"optimizer {i}" for i in range(len(hists))]
        cells = [
            [str(e), _fmt_rate(r)] + [_fmt_rate(h[e]) if e < len(h) else "-" for h in hists]
            for e, r in enumerate(history)
        ]
        widths = [max(len(headers[c]), *(len(row[c]) for row in cells)) for c in range(len(headers))]

        def line(vals: Sequence[str]) -> str:
            first = vals[0].rjust(widths[0])
            rest = [v.ljust(w) for v, w in zip(vals[1:], widths[1:])]
            return "  ".join([first, *rest]).rstrip()

        lines.append(line(headers))
        lines.append(line(["-" * w for w in widths]))
        lines.extend(line(row) for row in cells)
    else:
        lines.append("history                (no epoch started yet)")

    others = {k: v for k, v in (state.get("callbacks") or {}).items() if k != SCHEDULER_KEY}
    lines.append("")
    if not others:
        lines.append(f"{'other callbacks'.ljust(width)}  (none)")
    else:
        lines.append("other callbacks")
        for key in sorted(others):
            value = others[key]
            keys = ", ".join(sorted(map(str, value))) if isinstance(value, dict) else type(value).__name__
            lines.append(f"  {key}: {keys}")
    return "\n".join(lines)


def _one_line(text: str, limit: int = 1000) -> str:
    """`text` on one line (whitespace runs become one space), at most `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _inspect(args: argparse.Namespace) -> int:
    from resumable_scheduler import costs, plot
    from resumable_scheduler.api import read_envelope, state_of
    from resumable_scheduler.costs import format_report
    from resumable_scheduler.snapshot import TIMELINE
    from resumable_scheduler.storage import DESCRIPTIONS, layout_of

    if args.plot:
        try:
            plot.require_matplotlib()
        except plot.PlotError as e:
            raise CliError(str(e)) from None
    try:
        if args.step is not None:
            layout = layout_of(args.path)
            if layout != "orbax":
                raise CliError(
                    f"cannot inspect {args.path!r}: --step {args.step} applies only to an "
                    f"Orbax checkpoint directory; this is {DESCRIPTIONS[layout]}, which has no steps."
                )
        # One read: the table and the summary describe the same checkpoint.
        doc, source = read_envelope(args.path, step=args.step)
        state, report = state_of(doc, source), costs.report(doc.get(TIMELINE), source)
    except CliError:
        raise
    except (OSError, ValueError) as e:
        raise CliError(_one_line(f"cannot inspect {args.path!r}: {e}")) from None
    except Exception as e:  # noqa: BLE001 - a file we cannot read is an error line, never a traceback
        raise CliError(_one_line(f"cannot inspect {args.path!r}: {type(e).__name__}: {e}")) from None
    if args.json:
        print(json.dumps({**state, "goodput": report}, indent=2, sort_keys=True))
    else:
        print(format_table(state))
        print()
        print(format_report(report))
    if args.plot:
        try:
            plot.plot_history(state, args.plot, report)
        except plot.PlotError as e:
            raise CliError(str(e)) from None
        if not args.json:
            print(f"\nplot written to {args.plot}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from resumable_scheduler.demo import run_demo

    try:
        result = run_demo(seed=args.seed, kills=args.kills, workdir=args.workdir)
    except (ValueError, RuntimeError) as e:
        raise CliError(str(e)) from None
    return 0 if result["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Keras training that resumes exactly after an interruption.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="train the documented example, SIGKILL it, resume, and compare",
        description="Trains the documented LearningRateScheduler example once "
        "uninterrupted and once in a child process that saves with "
        "rs.BackupAndRestore(save_freq=1), is SIGKILLed at random batches and "
        "resumed; exits 0 only if both end at lr 0.00607 after the same "
        "iterations with identical weights.",
    )
    demo.add_argument("--kills", type=int, default=3, help="SIGKILLs before the child may finish (default 3, at most 74)")
    demo.add_argument("--seed", type=int, default=None, help="seed for choosing where the kills land")
    demo.add_argument("--workdir", default=None, help="where the child keeps its backup (default: a temp dir)")
    demo.set_defaults(func=_demo)

    insp = sub.add_parser(
        "inspect",
        help="print the resumable state saved in a checkpoint and what interruptions cost the run",
        description="Prints the state saved in a .keras file, a .weights.h5 "
        "file or a backup directory.",
    )
    insp.add_argument("path", help="a .keras or .weights.h5 file, or a backup/Orbax directory")
    insp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    insp.add_argument("--plot", metavar="FILE.png", default=None, help="draw the learning-rate history with each resume marked, and the run's timeline (needs matplotlib)")
    insp.add_argument("--step", type=int, default=None, help="for an Orbax directory: the step to read (an error for anything else)")
    insp.set_defaults(func=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as e:
        print(f"{PROG} {args.command}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
