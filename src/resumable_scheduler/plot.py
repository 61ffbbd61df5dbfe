"""Drawing a checkpoint's learning-rate history and the run's timeline.

`plot_history` draws the learning rate of every epoch so far (one line per
optimizer of a `MultiOptimizer`) and, given a goodput report
(`rs.goodput`), marks each resume and draws the timeline underneath. It
needs matplotlib (the `plot` extra); `resumable-scheduler inspect --plot`
calls it.
"""

from __future__ import annotations

import json
import os
from typing import Any

MISSING_MPL = "matplotlib is not installed: pip install 'resumable-scheduler[plot]'"


class PlotError(Exception):
    """matplotlib is missing, or the PNG cannot be written (one line)."""


def require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotError(MISSING_MPL) from None
    return matplotlib


def steps_per_epoch(state: dict[str, Any], report: dict[str, Any] | None = None) -> int | None:
    """Batches per epoch, where the saved positions tell it: every position
    past epoch 0 (the state's, each resume's and each interruption's) must
    give the same `(step - batch) / epoch`; None if none does or they differ
    (another optimizer step count, say).

    >>> steps_per_epoch({"epoch": 12, "batch": 3, "step": 63})
    5
    >>> steps_per_epoch({"epoch": 0, "batch": 3, "step": 3}) is None
    True
    """
    positions = [state, *((report or {}).get("resumes") or []), *((report or {}).get("interruptions") or [])]
    found = set()
    for p in positions:
        epoch, batch, step = p.get("epoch"), p.get("batch"), p.get("step")
        if not all(isinstance(v, int) for v in (epoch, batch, step)) or epoch <= 0:
            continue
        n, rest = divmod(step - batch, epoch)
        if rest or n <= 0 or batch >= n:
            return None
        found.add(n)
    return found.pop() if len(found) == 1 else None


#: The timeline bar's parts: (key in the plot data, legend label, colour).
_PARTS = (
    ("restart", "start-up / restart", "tab:orange"),
    ("training", "training", "tab:green"),
    ("blocked", "blocked saving", "tab:red"),
    ("lost", "work lost (bound)", "tab:purple"),
    ("downtime", "downtime", "tab:gray"),
)


def _bar_parts(spans: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Each segment's parts as seconds from the first one's start."""
    if not spans:
        return []
    t0 = spans[0]["started"]
    out = []
    for sp in spans:
        start, first, end = sp["started"] - t0, sp["first_batch"] - t0, sp["end_at"] - t0
        nxt = end if sp["next_started"] is None else sp["next_started"] - t0
        out.append({
            "start": start, "first_batch": first, "end": end, "next_start": nxt,
            "restart": first - start, "training": end - first - sp["blocked_s"], "blocked": sp["blocked_s"],
            "lost": sp["lost_s"], "downtime": nxt - end - sp["lost_s"], "cause": sp["end"],
        })
    return out


def plot_history(state: dict[str, Any], path: str, report: dict[str, Any] | None = None) -> None:
    """Draws the learning rate of every epoch so far into a PNG at `path`.

    With a goodput `report` (`rs.goodput`), each resume is a vertical line
    at its epoch (plus the fraction of the epoch, where the batches per
    epoch are known), and a second axes shows the run's timeline: per
    segment its start-up or restart, training, blocked saving (drawn at the
    end of its training), work lost after its last commit and downtime.
    The plotted data is written into the PNG as the text chunk
    `resumable_scheduler` (JSON: `resume_epochs`, `segments`,
    `steps_per_epoch`).
    """
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    history = list(state.get("history") or [])
    hists = [list(h) for h in state.get("optimizer_histories") or []]
    if report is None:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        bar = None
    else:
        fig, (ax, bar) = plt.subplots(2, 1, figsize=(6, 5), dpi=100, gridspec_kw={"height_ratios": [3, 1]})
    n = steps_per_epoch(state, report)
    resumes = [r["epoch"] + (r["batch"] / n if n else 0) for r in (report or {}).get("resumes", [])]
    parts = _bar_parts((report or {}).get("spans") or [])
    try:
        if hists:
            for i, h in enumerate(hists):
                ax.plot(range(len(h)), h, marker="o", label=f"optimizer {i}")
        else:
            ax.plot(range(len(history)), history, marker="o")
        for i, x in enumerate(resumes):
            ax.axvline(x, color="tab:red", linestyle="--", alpha=0.6, label="resume" if i == 0 else None)
        if hists or resumes:
            ax.legend()
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.set_title(os.path.basename(str(state.get("source", ""))) or "learning rate")
        ax.grid(True, alpha=0.3)
        if bar is not None:
            _draw_bar(bar, parts, Patch)
        fig.tight_layout()
        data = {"resume_epochs": resumes, "segments": parts, "steps_per_epoch": n}
        try:
            fig.savefig(path, format="png", metadata={"resumable_scheduler": json.dumps(data)})
        except OSError as e:
            raise PlotError(f"cannot write the plot to {path!r}: {e}") from None
    finally:
        plt.close(fig)


def _draw_bar(bar: Any, parts: list[dict[str, float]], patch: Any) -> None:
    bar.set_yticks([])
    bar.set_xlabel("wall time (s)")
    if not parts:
        bar.text(0.5, 0.5, "no timeline recorded", ha="center", va="center", transform=bar.transAxes)
        bar.set_xticks([])
        return
    starts = {
        "restart": lambda p: p["start"],
        "training": lambda p: p["first_batch"],
        "blocked": lambda p: p["end"] - p["blocked"],
        "lost": lambda p: p["end"],
        "downtime": lambda p: p["end"] + p["lost"],
    }
    for key, _label, colour in _PARTS:
        bar.broken_barh([(starts[key](p), p[key]) for p in parts if p[key] > 0], (0, 1), color=colour)
    bar.set_xlim(0, max(max(p["next_start"], p["end"]) for p in parts) or 1)
    bar.legend(handles=[patch(color=c, label=label) for _k, label, c in _PARTS],
               loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, fontsize="small", frameon=False)
