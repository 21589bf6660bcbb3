"""`facto-edge compile`: prepare this machine for budgeted training of a model, once.

Registered in cli.py. It compiles, in child processes, the kernels training MODEL needs
that numba's cache lacks (runtime/prepare.py), with a progress bar; without MODEL, the
runtime's own (those the budget's probe loads). `train --budget`, `plan` and `demo` call
`prepare_before_budget` first, so that their budgeted process only loads kernels.
"""

from __future__ import annotations

import click

from facto_edge.cli_errors import FactoCommand
from facto_edge.runtime.codec_names import CODEC_NAMES


class _Bar:
    """on_progress for prepare_kernels: says what it compiles, then a tqdm bar on stderr."""

    def __init__(self, what: str, echo=None) -> None:
        self.what, self.bar = what, None
        self.echo = echo or (lambda msg: click.echo(msg, err=True))

    def __call__(self, done: int, total: int, kernel: str) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.echo(
                f"compiling {total} kernel(s) {self.what} in child processes, once per "
                "machine, before anything runs under the budget (facto-edge compile)"
            )
            self.bar = tqdm(total=total, desc="compile", unit="kernel", dynamic_ncols=True)
        if done:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(kernel, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def prepare_before_budget(model, codecs, optimizer: str, echo=None):
    """Prepare MODEL's kernels (nothing to do on a prepared machine: one check child),
    saying so when it compiles; returns the PrepareReport."""
    from facto_edge.runtime.prepare import prepare_kernels

    bar = _Bar(f"for {model}", echo)
    try:
        report = prepare_kernels(model, tuple(codecs), optimizer, on_progress=bar)
    finally:
        bar.close()
    if report.compiled:
        (echo or (lambda msg: click.echo(msg, err=True)))(_summary(report))
    return report


def _summary(report) -> str:
    from facto_edge.runtime.budget import format_size

    return (
        f"compiled {report.compiled} of {report.needed} kernel(s) in {report.seconds:.1f} s, "
        f"{report.jobs} child process(es), peak {format_size(report.peak_together)} "
        "(children together)"
    )


@click.command(name="compile", cls=FactoCommand)
@click.argument("model", type=click.Path(exists=True, file_okay=False), required=False)
@click.option("--codec", "codecs", multiple=True, type=click.Choice(CODEC_NAMES),
              help="Codec(s) training will use (default q2; repeat for several).")  # fmt: skip
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adamw"]))
@click.option("--parallel", is_flag=True,
              help="Also compile the parallel builds (several times longer).")  # fmt: skip
@click.option("--memory", default="256MB", show_default=True,
              help="Peak memory of the preparation, all its children together.")  # fmt: skip
@click.option("--jobs", type=int, help="Children at once (default: cores the memory allows).")
def compile_(model, codecs, optimizer, parallel, memory, jobs) -> None:
    """Compile the kernels training MODEL (*.facto) needs into numba's cache, in child
    processes; without MODEL, the runtime's own. A budgeted run then only loads them."""
    from facto_edge.runtime.prepare import prepare_kernels

    bar = _Bar(f"for {model or 'the runtime'}")
    try:
        report = prepare_kernels(
            model, tuple(codecs) or ("q2",), optimizer, builds="both" if parallel else "serial",
            memory=memory, jobs=jobs, on_progress=bar,
        )  # fmt: skip
    finally:
        bar.close()
    if report.compiled:
        click.echo(_summary(report))
    else:
        click.echo(f"all {report.needed} kernel(s) already compiled: nothing to do")
