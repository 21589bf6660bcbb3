"""Reports of a run: metrics.csv, the loss/accuracy plot, the confusion-matrix plot and
the summary table the CLI prints.

Columns of metrics.csv, one row per finished epoch (1-based `epoch`):

    epoch, step, lr            progress, and the learning rate of the epoch's last step
    loss                       mean training loss over the epoch's batches
    accuracy, val_loss         on the held-out validation split (empty without one)
    train_seconds, eval_seconds, images_per_s    timings, apart from the metrics
    peak_rss                   the training process's peak resident bytes so far
    over_budget                1 where that peak passed --budget, else 0 (empty: no budget)

Files are rewritten whole from the history, atomically, so they always agree with the
checkpoint saved before them. Plots use matplotlib's Agg canvas (no display, no pyplot).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facto_edge.runtime.budget import format_size
from facto_edge.runtime.checkpoint import write_atomic
from facto_edge.safe_io import PNG_SOFTWARE

COLUMNS = (
    "epoch", "step", "lr", "loss", "accuracy", "val_loss",
    "train_seconds", "eval_seconds", "images_per_s", "peak_rss", "over_budget",
)  # fmt: skip


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)


def write_metrics_csv(path: str | Path, history: Sequence[dict]) -> Path:
    """Write one row per epoch of `history` (dicts keyed by COLUMNS) to `path`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in history:
        writer.writerow([_cell(row.get(c)) for c in COLUMNS])
    return write_atomic(path, lambda f: f.write(buf.getvalue().encode()))


def read_metrics_csv(path: str | Path) -> list[dict]:
    """The rows of a metrics.csv, numbers as floats (empty cells as NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: float(v) if v else math.nan for k, v in row.items()} for row in rows]


def _save_figure(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": PNG_SOFTWARE})
    return write_atomic(path, lambda f: f.write(buf.getvalue()))


def plot_metrics(path: str | Path, history: Sequence[dict]) -> Path:
    """Loss (training and validation) and validation accuracy per epoch, as a PNG."""
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [row["loss"] for row in history], "o-", label="training")
    val = [row.get("val_loss") for row in history]
    if any(v is not None for v in val):
        loss_ax.plot(epochs, val, "s--", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_ax.legend()
    acc = [row.get("accuracy") for row in history]
    acc_ax.plot(epochs, [math.nan if a is None else 100 * a for a in acc], "o-")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    return _save_figure(fig, path)


def plot_confusion(path: str | Path, confusion: np.ndarray, classes: Sequence[str]) -> Path:
    """A confusion matrix (rows: true class, columns: predicted) as a PNG."""
    from matplotlib.figure import Figure

    k = len(classes)
    fig = Figure(figsize=(1 + 0.5 * k, 0.8 + 0.5 * k), layout="constrained")
    ax = fig.subplots()
    ax.imshow(confusion, cmap="Blues")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true")
    ax.set_xticklabels(classes, rotation=90)
    ax.set_yticklabels(classes)
    peak = confusion.max() if confusion.size else 0
    for (i, j), n in np.ndenumerate(confusion):
        if n:
            color = "white" if n > peak / 2 else "black"
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color=color)
    return _save_figure(fig, path)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_history(history: Sequence[dict]) -> str:
    """The per-epoch table: epoch, loss, validation loss and accuracy, speed."""
    head = f"{'epoch':>5} {'loss':>8} {'val_loss':>8} {'accuracy':>8} {'img/s':>8} {'time':>7}"
    lines = [head, "-" * len(head)]
    for row in history:
        acc = row.get("accuracy")
        lines.append(
            f"{row['epoch']:>5} {_fmt(row['loss'], '8.4f')} {_fmt(row.get('val_loss'), '8.4f')} "
            f"{_fmt(None if acc is None else 100 * acc, '7.2f')}% "
            f"{_fmt(row.get('images_per_s'), '8.0f')} {_fmt(row.get('train_seconds'), '6.1f')}s"
        )
    return "\n".join(lines)


def format_memory(memory: dict, budget: int | None, peak_rss: int | None) -> str:
    """The session's arena and its buffers by kind, and the peak RSS against the budget."""
    kinds = {
        "weights": "weights_bytes",
        "grads": "grads_bytes",
        "optimizer": "optimizer_bytes",
        "saved": "saved_bytes",
        "peak activations": "peak_activation_bytes",
        "peak workspace": "peak_workspace_bytes",
    }
    parts = ", ".join(
        f"{kind} {format_size(memory[key])}" for kind, key in kinds.items() if key in memory
    )
    lines = [f"arena {format_size(memory['arena_bytes'])} ({parts})"]
    if peak_rss:
        against = f" (budget {format_size(budget)})" if budget else ""
        lines.append(f"peak resident memory while training {format_size(peak_rss)}{against}")
    return "\n".join(lines)
