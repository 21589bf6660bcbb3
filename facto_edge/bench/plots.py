"""PNG plots of a BenchResult (matplotlib, Agg backend): peak RSS and images/s against
batch size with the budget drawn in, saved activations per system, and facto-edge's
memory broken down by kind of buffer."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from facto_edge.bench import summary as S  # noqa: E402
from facto_edge.bench.driver import BenchResult  # noqa: E402
from facto_edge.bench.protocol import FACTO, SYSTEMS  # noqa: E402
from facto_edge.runtime.budget import format_size  # noqa: E402
from facto_edge.runtime.checkpoint import write_atomic  # noqa: E402
from facto_edge.safe_io import PNG_SOFTWARE  # noqa: E402

MIB = 2**20
PERSISTENT = ("weights", "grads", "optimizer")


def _models_axes(n: int, ylabel: str):
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.8), squeeze=False)
    for ax in axes[0]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    return fig, axes[0]


def _save(fig, path: Path, legend_from=None, ncol: int = 3) -> Path:
    """Save `fig`, with the legend of axes `legend_from` below the plots."""
    bottom = 0.0
    if legend_from is not None:
        handles, labels = legend_from.get_legend_handles_labels()
        rows = -(-len(labels) // ncol)
        bottom = min(0.4, (0.12 + 0.2 * rows) / fig.get_size_inches()[1])
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": PNG_SOFTWARE})
    plt.close(fig)
    write_atomic(path, lambda f: f.write(buf.getvalue()))
    return path


def sweep_plot(result: BenchResult, path: Path, memory: bool) -> Path:
    """Peak RSS (memory=True) or images/s against batch size, one panel per model."""
    cfg = result.config
    fig, axes = _models_axes(len(cfg.models), "peak RSS (MiB)" if memory else "images/s")
    for ax, model in zip(axes, cfg.models, strict=True):
        for system in cfg.systems:
            runs = [r for r in S.sweep_runs(result, model, system) if r.ok and not r.over_budget]
            ys = [r.peak_rss / MIB if memory else r.images_per_s for r in runs]
            line = ax.plot([r.spec.batch for r in runs], ys, "o-", label=SYSTEMS[system])
            out = [r for r in S.sweep_runs(result, model, system) if r.over_budget and r.peak_rss]
            if memory and out:
                ax.plot([r.spec.batch for r in out], [r.peak_rss / MIB for r in out], "x",
                        color=line[0].get_color(), markersize=9)  # fmt: skip
        if not memory:
            ax.set_ylim(bottom=0)
        if memory and cfg.budget:
            ax.axhline(cfg.budget / MIB, color="red", linestyle="--", label="budget")
        ax.set_title(model)
    if memory:
        axes[0].plot([], [], "x", color="grey", label="stopped at the budget")
    return _save(fig, path, legend_from=axes[0])


def saved_plot(result: BenchResult, path: Path) -> Path:
    """Saved-activation bytes per step of each system that reports them, per model."""
    table, cfg = S.summaries(result), result.config
    systems = [s for s in cfg.systems if s != "ort-training"]
    fig, ax = plt.subplots(figsize=(max(6.0, 2.4 * len(cfg.models)), 4.0))
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        ys = [(table[(m, system)].saved_bytes or 0) / MIB for m in cfg.models]
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(cfg.models))]
        bars = ax.bar(xs, ys, width, label=SYSTEMS[system])
        labels = [format_size(table[(m, system)].saved_bytes or 0) for m in cfg.models]
        ax.bar_label(bars, labels=labels, fontsize=7)
    ax.set_xticks(range(len(cfg.models)), cfg.models)
    ax.set_ylabel(f"saved activations per step (MiB), batch {cfg.batch}")
    return _save(fig, path, legend_from=ax)


def breakdown(report: dict, peak_rss: int) -> list[tuple[str, int]]:
    """facto-edge's peak RSS in parts: the arena's persistent buffers and saved tensors
    (each whole), the rest of the arena (activations and workspace, reused over time, so
    their per-kind sums in the report exceed it), and the rest of the process."""
    parts = [(kind, report.get(f"{kind}_bytes", 0)) for kind in PERSISTENT]
    parts.append((f"saved ({report.get('codec', 'codec')})", report.get("saved_bytes", 0)))
    arena = report["arena_bytes"]
    parts.append(("activations + workspace", max(arena - sum(n for _, n in parts), 0)))
    parts.append(("rest of process", max(peak_rss - arena, 0)))
    return parts


def breakdown_plot(result: BenchResult, path: Path) -> Path | None:
    """facto-edge's peak RSS per model, broken down by `breakdown`."""
    table, cfg = S.summaries(result), result.config
    rows = [(m, table[(m, FACTO)]) for m in cfg.models if (m, FACTO) in table]
    rows = [(m, s) for m, s in rows if s.memory_report and s.peak_rss]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9.0, 1.6 + 0.7 * len(rows)))
    for y, (_, s) in enumerate(rows):
        left = 0.0
        for i, (kind, nbytes) in enumerate(breakdown(s.memory_report, s.peak_rss)):
            color = "lightgrey" if kind == "rest of process" else f"C{i}"
            ax.barh(y, nbytes / MIB, left=left, color=color, label=kind if y == 0 else None)
            left += nbytes / MIB
        ax.text(left, y, f" {format_size(s.peak_rss)}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [m for m, _ in rows])
    ax.set_xlabel(f"MiB of peak RSS (facto-edge, batch {cfg.batch})")
    ax.set_xlim(0, ax.get_xlim()[1] * 1.12)
    return _save(fig, path, legend_from=ax, ncol=6)


def write_plots(result: BenchResult, out_dir: Path) -> list[Path]:
    """Write every plot that has data into `out_dir`; the paths written."""
    paths = [saved_plot(result, out_dir / "saved_bytes.png"),
             breakdown_plot(result, out_dir / "memory_breakdown.png")]  # fmt: skip
    if result.config.sweep:
        paths.insert(0, sweep_plot(result, out_dir / "throughput_vs_batch.png", memory=False))
        paths.insert(0, sweep_plot(result, out_dir / "memory_vs_batch.png", memory=True))
    return [p for p in paths if p is not None]
