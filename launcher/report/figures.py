"""The report's figures, drawn with matplotlib's Agg backend (no display, no pyplot state)."""
from __future__ import annotations

import io
from typing import Any, Dict, List, Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from launcher.failures import Failure
from launcher.report.series import Series

STATE_COLORS = {"SUCCEEDED": "#2e7d32", "FAILED": "#c62828", "STOPPED": "#757575", "RUNNING": "#1565c0",
                "STARTING": "#90caf9", "RESTARTING": "#ef6c00"}


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _color(rank: int) -> str:
    return f"C{rank % 10}"


#: Attempt number -> the label of the line marking its start (default: a restart).
ATTEMPT_LABELS: Dict[int, str] = {}


def _mark_restarts(ax, restarts: Mapping[int, int], labels: Optional[Mapping[int, str]] = None) -> None:
    labels = ATTEMPT_LABELS if labels is None else labels
    for attempt, step in restarts.items():
        label = labels.get(attempt, f"restart (attempt {attempt})")
        color = "#c62828" if label.startswith("restart") else "#1565c0"
        ax.axvline(step, color=color, linestyle="--", linewidth=1)
        ax.annotate(label, (step, 1), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=8, color=color)


def _plot_series(ax, series: Sequence[Series]) -> None:
    labelled = set()
    for s in series:
        label = f"rank {s.rank}" if s.rank not in labelled else None
        labelled.add(s.rank)
        style = "-" if s.attempt <= 1 else ("--" if s.attempt % 2 == 0 else ":")
        ax.plot(s.steps, s.values, style, color=_color(s.rank), label=label, linewidth=1.2,
                marker="." if len(s.steps) < 40 else None)


def loss_and_lr(loss: Sequence[Series], lr: Sequence[Series], restarts: Mapping[int, int]) -> Figure:
    rows = 2 if lr else 1
    fig = Figure(figsize=(10, 3.6 * rows))
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    _plot_series(axes[0], loss)
    axes[0].set_ylabel("loss")
    axes[0].set_title("loss per rank (later attempts dashed)")
    if lr:
        _plot_series(axes[1], lr)
        axes[1].set_ylabel("learning rate")
        axes[1].set_title("learning rate per rank")
    for ax in axes:
        _mark_restarts(ax, restarts)
        ax.set_xlabel("global step")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def step_time_box(step_seconds: Mapping[int, Sequence[float]]) -> Figure:
    ranks = [r for r in sorted(step_seconds) if step_seconds[r]]
    fig = Figure(figsize=(max(5, 1.2 * len(ranks) + 3), 3.8))
    ax = fig.subplots()
    box = ax.boxplot([step_seconds[r] for r in ranks], showfliers=True, patch_artist=True)
    for patch, rank in zip(box["boxes"], ranks):
        patch.set_facecolor(_color(rank))
        patch.set_alpha(0.5)
    ax.set_xticks(range(1, len(ranks) + 1), [f"rank {r}" for r in ranks])
    ax.set_ylabel("seconds per step")
    ax.set_title("step time per rank\n(box: quartiles, median; whiskers: 1.5 IQR; dots: outliers)",
                 fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def throughput_lines(series: Sequence[Series], unit: str, batch_size: Optional[int],
                     restarts: Mapping[int, int]) -> Figure:
    fig = Figure(figsize=(10, 3.6))
    ax = fig.subplots()
    scaled = [Series(s.rank, s.attempt, s.steps, [(batch_size or 1) / v if v > 0 else 0.0 for v in s.values])
              for s in series]
    _plot_series(ax, scaled)
    _mark_restarts(ax, restarts)
    ax.set_xlabel("global step")
    ax.set_ylabel(unit)
    ax.set_title(f"throughput per rank ({unit})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


#: Colours of the recovery phases (launcher.recovery.BOUNDS order).
PHASE_COLORS = ("#e57373", "#ffb74d", "#bdbdbd", "#64b5f6", "#4db6ac", "#9575cd", "#81c784")


def recovery_timeline(recovery: Mapping[str, Any]) -> Figure:
    """One failure's recovery as a bar of its phases, from the failure to the first resumed step."""
    phases = [(name, seconds) for name, seconds in (recovery.get("phases") or {}).items()]
    fig = Figure(figsize=(10, 2.2))
    ax = fig.subplots()
    left = 0.0
    for (name, seconds), color in zip(phases, PHASE_COLORS):
        if seconds is None:
            continue
        ax.barh(0, seconds, left=left, color=color, height=0.5, label=f"{name} {seconds:.1f} s")
        left += seconds
    ax.set_yticks([])
    ax.set_xlabel("seconds after the failure")
    total = recovery.get("total_s")
    rolled = recovery.get("steps_rolled_back")
    title = f"attempt {recovery.get('attempt')}'s failure: " + (
        f"{total:.1f} s to the first resumed step" if isinstance(total, (int, float)) else "not recovered")
    if rolled is not None:
        title += f", {rolled} step(s) computed again"
    ax.set_title(title)
    # the phases' legend along the figure's bottom edge, below the axis label
    fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.5, top=0.82)
    return fig


def attempt_timeline(attempts: Sequence[Mapping[str, Any]], t0: float, now: float) -> Figure:
    fig = Figure(figsize=(10, 1.2 + 0.8 * max(1, len(attempts))))
    ax = fig.subplots()
    for i, a in enumerate(attempts):
        start = float(a.get("started") or t0) - t0
        end = float(a.get("ended") or now) - t0
        state = str(a.get("state") or "")
        ax.barh(i, max(end - start, 0.01), left=start, color=STATE_COLORS.get(state, "#9e9e9e"), height=0.6)
        failure = a.get("failure") or {}
        text = f"attempt {a.get('number', i + 1)}: {state}"
        if failure.get("reason"):
            text += f" - {Failure.from_dict(failure).summary()}"[:110]
            if isinstance(failure.get("time"), (int, float)):
                ax.plot([failure["time"] - t0], [i], marker="x", color="black", markersize=9)
        ax.text(start, i - 0.33, text, fontsize=8, va="bottom")
    ax.set_yticks(range(len(attempts)), [f"#{a.get('number', i + 1)}" for i, a in enumerate(attempts)])
    ax.set_ylim(len(attempts) - 0.5, -0.9)
    ax.set_xlabel("seconds since the job was created")
    ax.set_title("attempts (x: root-cause failure)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def health_over_time(panels: List[Dict[str, Any]]) -> Figure:
    """`panels`: [{"title", "ylabel", "lines": {label: (xs, ys)}}], one axis each."""
    fig = Figure(figsize=(10, 2.8 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        for label, (xs, ys) in sorted(panel["lines"].items()):
            ax.plot(xs, ys, label=label, marker="." if len(xs) < 40 else None)
        ax.set_title(panel["title"])
        ax.set_ylabel(panel["ylabel"])
        ax.set_xlabel("seconds since the job was created")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return fig


def per_class_iou(names: Sequence[str], ious: Sequence[Optional[float]], mean_iou: Optional[float]) -> Figure:
    fig = Figure(figsize=(max(6, 0.45 * len(names) + 2), 4))
    ax = fig.subplots()
    values = [v if v is not None else 0.0 for v in ious]
    colors = ["#1565c0" if v is not None else "#bdbdbd" for v in ious]
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    if mean_iou is not None:
        ax.axhline(mean_iou, color="#c62828", linestyle="--", label=f"mean IoU {mean_iou:.4f}")
        ax.legend(loc="upper right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title("per-class IoU (grey: class absent)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
