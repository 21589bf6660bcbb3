"""The `bench` command: `facto-edge bench` (added to the CLI group in facto_edge/cli.py),
or stand-alone as `python tools/bench.py`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from facto_edge.bench.protocol import DEFAULT_MODELS, SYSTEMS
from facto_edge.cli_common import parse_shape
from facto_edge.cli_errors import FactoCommand
from facto_edge.errors import FactoEdgeError
from facto_edge.runtime.budget import parse_size


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _ints(value: str, option: str) -> tuple[int, ...]:
    if value.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise FactoEdgeError(f"{option} takes comma-separated integers, found {value!r}") from None


def _optional_float(value: str, option: str) -> float | None:
    if value.strip().lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise FactoEdgeError(f"{option} takes a number or 'none', found {value!r}") from None


def _command_line() -> str:
    """The command as typed: `facto-edge bench ...`, or `python tools/bench.py ...`."""
    ctx = click.get_current_context()
    words = ctx.command_path.split()
    head = words if ctx.parent else ["python", sys.argv[0]]
    return shlex.join([*head, *sys.argv[len(words) :]])


def _progress(done: int, total: int, text: str) -> None:
    click.echo(f"[{done:>3}/{total}] {text}", err=True)


@click.command(cls=FactoCommand)
@click.option(
    "--models",
    default=",".join(DEFAULT_MODELS),
    show_default=True,
    help="Zoo models, comma-separated.",
)
@click.option("--systems", default=",".join(SYSTEMS), show_default=True, help="Systems to compare.")
@click.option("--batch", default=32, show_default=True, help="Batch size of the main figures.")
@click.option("--rank", default=0.25, show_default=True, help="Export rank (fraction of channels).")
@click.option(
    "--train",
    default="last",
    show_default=True,
    help="Export --train: last, first, core, all, a mix such as core,last, or delta.",
)
@click.option(
    "--bn",
    type=click.Choice(["fold", "train"]),
    default="fold",
    show_default=True,
    help="Export --bn: fold BatchNorm, or train it (batch statistics).",
)
@click.option(
    "--codec",
    default="q4",
    show_default=True,
    help="facto-edge codec; more after commas add rows to the codec table (q4,q8,q2).",
)
@click.option("--input-shape", default="3x32x32", show_default=True, help="CxHxW.")
@click.option("--steps", default=5, show_default=True, help="Timed steps per measurement.")
@click.option("--warmup", default=2, show_default=True, help="Untimed steps before them.")
@click.option("--repeats", default=3, show_default=True, help="Interleaved rounds of all systems.")
@click.option(
    "--sweep",
    default="8,16,32,64,128,256",
    show_default=True,
    help="Batch sizes of the sweep ('none' to skip it).",
)
@click.option("--sweep-steps", default=2, show_default=True, help="Timed steps per sweep run.")
@click.option(
    "--budget",
    default="512MB",
    show_default=True,
    help="Peak-RSS budget of the sweep ('none' for no limit).",
)
@click.option("--no-cold", is_flag=True, help="Skip facto-edge's run with a cold Numba cache.")
@click.option(
    "--threads",
    type=int,
    default=None,
    help="Threads for every system (default: each system's own).",
)
@click.option(
    "--max-busy",
    default="0.5",
    show_default=True,
    help="Before each run, wait until other processes keep fewer cores than this busy "
    "('none': start at once).",
)
@click.option("--max-wait", default=300.0, show_default=True, help="Longest such wait (s).")
@click.option(
    "--timeout", default=1800.0, show_default=True, help="Seconds before a run is stopped."
)
@click.option(
    "--work-dir", type=click.Path(file_okay=False), help="Keep (and reuse) the exports here."
)
@click.option(
    "-o",
    "--output",
    default="docs/bench",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory of the plots and results.json.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False),
    help="The Markdown report.  [default: benchmarks.md beside OUTPUT]",
)
@click.option(
    "--from-results",
    type=click.Path(exists=True, dir_okay=False),
    help="Rewrite the report and plots from a saved results.json; measure nothing.",
)
def bench(models, systems, batch, rank, train, bn, codec, input_shape, steps, warmup, repeats,
          sweep, sweep_steps, budget, no_cold, threads, max_busy, max_wait, timeout, work_dir,
          output, report, from_results) -> None:  # fmt: skip
    """Measure facto-edge side by side with PyTorch (dense and factorized) and ONNX Runtime
    training: saved activations, peak RSS, images/s, cold start and a batch-size sweep.
    Writes Markdown tables and PNG plots."""
    from facto_edge.bench import BenchConfig, run_bench, write_outputs
    from facto_edge.bench.driver import BenchResult

    if from_results:
        result = BenchResult.read(Path(from_results))
    else:
        cfg = BenchConfig(
            models=_names(models), systems=_names(systems), batch=batch, rank=rank,
            train=train, bn=bn, codecs=_names(codec), input_shape=parse_shape(input_shape),
            steps=steps, warmup=warmup, repeats=repeats, sweep=_ints(sweep, "--sweep"),
            sweep_steps=sweep_steps, cold_start=not no_cold, threads=threads,
            budget=None if budget.lower() == "none" else parse_size(budget),
            max_busy=_optional_float(max_busy, "--max-busy"), max_wait_s=max_wait,
            timeout_s=timeout, command=_command_line(),
        )  # fmt: skip
        result = run_bench(cfg, work_dir, progress=_progress)
    path = write_outputs(result, output, report)
    click.echo(f"wrote {path} and the plots in {output}")
