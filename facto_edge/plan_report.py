"""How `facto-edge plan` shows a PlanReport: a text breakdown and a PNG memory timeline."""

from __future__ import annotations

import io
from pathlib import Path

from facto_edge.plan import PlanReport
from facto_edge.runtime.budget import format_size
from facto_edge.runtime.checkpoint import write_atomic
from facto_edge.safe_io import PNG_SOFTWARE

# stacking order of the timeline, bottom up: what lives all step first
TIMELINE_KINDS = ("weights", "grads", "optimizer", "saved", "activations", "workspace")


def _batch_line(r: PlanReport) -> str:
    if r.accumulate == 1:
        return f"batch {r.batch_size} in one pass"
    return (
        f"batch {r.batch_size} as {r.accumulate} micro-batches of up to {r.micro_batch} "
        "(gradient accumulation)"
    )


def format_plan(r: PlanReport) -> str:
    """The chosen batch and codec, where every byte goes, and saved bytes per layer."""
    m = r.memory
    lines = [
        f"{r.model} under a budget of {format_size(r.budget)}: {_batch_line(r)}, codec {r.codec}",
        "",
    ]
    lines += [f"  {what:<24}{format_size(n):>12}" for what, n in r.breakdown()]
    share = 100 * r.total / r.budget
    lines += [
        f"  {'total':<24}{format_size(r.total):>12}  of {format_size(r.budget)} ({share:.0f}%)",
        "",
        f"arena: {format_size(r.arena_bytes)} planned, lower bound "
        f"{format_size(m['lower_bound'])}, every buffer apart {format_size(m['linear_bytes'])}",
        "",
        "saved for backward, per layer:",
    ]
    lines += [f"  {node:<40}{format_size(n):>12}" for node, n in r.saved_by_layer().items()]
    return "\n".join(lines)


def plot_timeline(r: PlanReport, path: str | Path) -> Path:
    """A PNG of the bytes live at each step of one micro-batch, by kind, against the
    planned arena and the room the budget leaves for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = r.plan.live_bytes()
    steps = range(len(r.plan.steps))
    mib = 1 << 20
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.stackplot(
        steps,
        *[live[k] / mib for k in TIMELINE_KINDS],
        labels=TIMELINE_KINDS,
        alpha=0.85,
    )
    ax.axhline(r.arena_bytes / mib, color="black", lw=1, label="planned arena")
    room = (r.budget - r.fixed_cost - r.margin) / mib
    ax.axhline(room, color="red", lw=1, ls="--", label="budget - runtime - margin")
    first_backward = next((i for i, s in enumerate(r.plan.steps) if s.startswith("bwd")), None)
    if first_backward is not None:
        ax.axvline(first_backward, color="gray", lw=0.8, ls=":")
        ax.text(first_backward, ax.get_ylim()[1] * 0.97, " backward", va="top", fontsize=8)
    ax.set_xlabel("step of one micro-batch (forward nodes, backward nodes, optimizer)")
    ax.set_ylabel("live bytes (MiB)")
    ax.set_title(f"{Path(r.model).name}: {_batch_line(r)}, codec {r.codec}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": PNG_SOFTWARE})
    plt.close(fig)
    return write_atomic(path, lambda f: f.write(buf.getvalue()))
