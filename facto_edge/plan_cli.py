"""`facto-edge plan`: what training fits a memory budget, and where every byte goes.

Registered in cli.py with `main.add_command(plan)`. It imports only what the runtime
imports (numpy, numba, onnx), plus matplotlib when --plot asks for a picture.
"""

from __future__ import annotations

import click

from facto_edge.cli_errors import FactoCommand

BITS = ["8", "4", "2"]


@click.command(cls=FactoCommand)
@click.argument("model", type=click.Path())
@click.option("--budget", required=True, help="Peak memory of the training process, e.g. 512MB.")
@click.option("--batch-size", type=int, help="The batch (default: the largest that fits).")
@click.option("--bits", type=click.Choice(BITS), help="Codec bits (default: the most that fit).")
@click.option(
    "--min-bits",
    type=click.Choice(BITS),
    default="2",
    show_default=True,
    help="Fewest codec bits to consider when --bits is not given.",
)
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adamw"]))
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the memory timeline PNG here.")
def plan(model, budget, batch_size, bits, min_bits, optimizer, plot) -> None:
    """Fit training of MODEL (*.facto) into --budget: batch, micro-batches and codec bits,
    with a breakdown of the memory and the saved bytes per layer."""
    from pathlib import Path

    from facto_edge.compile_cli import prepare_before_budget
    from facto_edge.plan import plan_training
    from facto_edge.plan_report import format_plan, plot_timeline
    from facto_edge.safe_io import check_plot_path

    if plot:
        check_plot_path(Path(plot))

    tried = [bits] if bits else [b for b in BITS if int(b) >= int(min_bits)]
    prepare_before_budget(model, [f"q{b}" for b in tried], optimizer)
    report = plan_training(
        model,
        budget,
        batch_size=batch_size,
        bits=int(bits) if bits else None,
        codec_limit=int(min_bits),
        optimizer=optimizer,
    )
    click.echo(format_plan(report))
    if plot:
        click.echo(f"wrote {plot_timeline(report, plot)}")
