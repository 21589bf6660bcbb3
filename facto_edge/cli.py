"""The `facto-edge` command line. Each command parses, calls one library function and
prints; whatever stops a command (FactoEdgeError, OSError, MemoryError, a usage error,
Ctrl-C) becomes one line on stderr and a non-zero exit (facto_edge/cli_errors.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from facto_edge.auto_export import EXPORT_DEFAULTS
from facto_edge.cli_common import parse_lr_groups, parse_norm, parse_shape
from facto_edge.cli_errors import INTERRUPTED, FactoGroup
from facto_edge.errors import FactoEdgeError
from facto_edge.runtime.codec_names import BLOCK_CODECS, CODEC_NAMES


@click.group(cls=FactoGroup)
@click.version_option(package_name="facto-edge")
def main() -> None:
    """facto-edge: train factorized CNNs on small devices, inside a memory budget."""


@main.command()
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write model.pt.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random initialization.")
@click.option("--num-classes", default=10, show_default=True)
@click.option(
    "--input-shape", default=None, help="CxHxW or CxL (default: the model's own, e.g. 3x32x32)."
)
@click.option("--list", "list_", is_flag=True, help="List the models with parameter counts.")
@click.option("--force", is_flag=True, help="Replace a model.pt that zoo wrote before.")
def zoo(name, output, seed, num_classes, input_shape, list_, force) -> None:
    """Write zoo model NAME as a TorchScript archive (random weights from --seed)."""
    from facto_edge import zoo as zoo_lib

    if list_ or not name:
        for entry in zoo_lib.ZOO.values():
            params = zoo_lib.param_count(entry.build())
            click.echo(f"{entry.name:<20} {params / 1e6:7.2f} M params  {entry.description}")
        return
    shape = parse_shape(input_shape)
    out = zoo_lib.write(name, output or f"{name}.pt", seed, num_classes, shape, force=force)
    click.echo(f"wrote {out}")


def format_layers(manifest) -> str:
    """The per-layer export table and its totals."""
    head = (f"{'layer':<24} {'shape':<16} {'method':<9} {'ranks':<9} {'params':>17} "
            f"{'MFLOPs':>15} {'rel.err':>7}  trainable")  # fmt: skip
    lines = [head, "-" * len(head)]
    for layer in manifest.layers:
        shape = "x".join(map(str, layer.shape))
        ranks = ",".join(map(str, layer.ranks)) or "-"
        params = f"{layer.params_before:>8}>{layer.params_after:<8}"
        flops = f"{layer.flops_before / 1e6:>7.1f}>{layer.flops_after / 1e6:<7.1f}"
        roles = [r for r, n in layer.factors.items() if n in layer.trainable] or ["-"]
        note = f" ({layer.note})" if layer.note else ""
        method = f"{layer.method}+W" if layer.residual else layer.method
        lines.append(
            f"{layer.name:<24.24} {shape:<16} {method:<9} {ranks:<9} {params:>17} "
            f"{flops:>15} {layer.rel_error:>7.3f}  {','.join(roles)}{note}"
        )
    t = manifest.totals()
    lines.append("-" * len(head))
    lines.append(
        f"total: params {t['params_before']:,} -> {t['params_after']:,} "
        f"({t['params_after'] / max(t['params_before'], 1):.1%}), MFLOPs "
        f"{t['flops_before'] / 1e6:.1f} -> {t['flops_after'] / 1e6:.1f}, "
        f"{len(manifest.trainable)} trainable tensors"
    )
    return "\n".join(lines)


@main.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="The *.facto directory.")
@click.option(
    "--input-shape",
    default=None,
    help="CxHxW, or CxL for a 1-D model (default: from the zoo archive, else 3x32x32).",
)
@click.option(
    "--rank",
    type=float,
    default=None,
    help=f"Rank as a fraction of channels, in (0, 1].  [default: {EXPORT_DEFAULTS['rank']}]",
)
@click.option(
    "--energy", type=float, default=None, help="Keep this share of squared singular values instead."
)
@click.option(
    "--min-channels", default=8, show_default=True, help="Layers with fewer channels stay dense."
)
@click.option(
    "--train",
    "train",
    default=None,
    help="Which factor trains: last, first, core, all, or a comma-separated mix (core,last); "
    "or delta: keep each factorized layer's weight frozen and train a low-rank update "
    f"beside it that starts at zero.  [default: {EXPORT_DEFAULTS['train']}]",
)
@click.option(
    "--bn",
    default=None,
    type=click.Choice(["fold", "train"]),
    help="Fold BatchNorm into the last factor, or train it (batch statistics) with each "
    f"factorized layer.  [default: {EXPORT_DEFAULTS['bn']}]",
)
@click.option(
    "--auto",
    is_flag=True,
    help="Choose --rank, --train and --bn: the configuration with the best accuracy in "
    "the fine-tuning study (docs/accuracy.md) whose training fits --budget.",
)
@click.option("--budget", default=None, help="With --auto: the training's peak memory, e.g. 512MB.")
@click.option(
    "--batch-size", default=32, show_default=True, help="With --auto: the training's batch size."
)
@click.option(
    "--codec",
    default="q2",
    show_default=True,
    type=click.Choice(BLOCK_CODECS),
    help="With --auto: the training's codec.",
)
@click.option(
    "--mean",
    default=None,
    help="Input mean per channel (0.5,0.5,0.5) or a preset: imagenet, cifar, none "
    "(which also sets --std). Default: from the archive's facto_edge.json, else none.",
)
@click.option("--std", default=None, help="Input std per channel, or a preset (see --mean).")
@click.option(
    "--onnx-only",
    is_flag=True,
    help="Write the graph even where the facto-edge runtime lacks one of its ops "
    "(it still runs in onnxruntime).",
)
@click.option("--no-ort", is_flag=True, help="Skip the ONNX Runtime training artifacts.")
@click.option("--force", is_flag=True, help="Replace a previous export at --output.")
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Load MODEL even if it is a pickled nn.Module, which runs code from the file.",
)
def export(
    model, output, input_shape, rank, energy, min_channels, train, bn, auto, budget,
    batch_size, codec, mean, std, onnx_only, no_ort, force, trust_pickle,
) -> None:  # fmt: skip
    """Factorize MODEL (TorchScript archive, or a pickled nn.Module) into a *.facto directory.

    A pickled nn.Module runs code from the file when loaded: it is refused unless
    --trust-pickle says you trust the file.
    """
    from facto_edge.exporters.export import export as export_model

    if rank is not None and energy is not None:
        raise FactoEdgeError("give --rank or --energy, not both")
    common = dict(
        input_shape=parse_shape(input_shape), min_channels=min_channels,
        trust_pickle=trust_pickle, mean=parse_norm(mean, "--mean"),
        std=parse_norm(std, "--std"), runtime_check=not onnx_only,
        progress=lambda msg: click.echo(f"... {msg}", err=True),
    )  # fmt: skip
    if auto:
        given = [f"--{k}" for k, v in (("rank", rank), ("energy", energy), ("train", train),
                                       ("bn", bn)) if v is not None]  # fmt: skip
        if given:
            raise FactoEdgeError(f"--auto chooses {', '.join(given)} itself: give one or the other")
        if budget is None:
            raise FactoEdgeError("--auto needs --budget: the peak memory training may use")
    elif budget is not None:
        raise FactoEdgeError("--budget belongs to --auto here; `facto-edge train` takes its own")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        if auto:
            manifest = _auto_export(model, output, budget, batch_size, codec, not no_ort,
                                    force, common)  # fmt: skip
        else:
            if rank is None and energy is None:
                rank = EXPORT_DEFAULTS["rank"]
            manifest = export_model(
                model, output, rank=rank, energy=energy,
                train=train or EXPORT_DEFAULTS["train"], bn=bn or EXPORT_DEFAULTS["bn"],
                ort=not no_ort, force=force, **common,
            )  # fmt: skip
    for w in caught:
        if issubclass(w.category, UserWarning):
            click.secho(f"warning: {w.message}", fg="yellow", err=True)
    click.echo(format_layers(manifest))
    ort = "with ort/ training artifacts"
    if not manifest.ort:
        ort = "without ort/ (onnxruntime-training absent, --no-ort, or an op it cannot train)"
    click.echo(f"wrote {output} {ort}")


def _auto_export(model, output, budget, batch_size, codec, ort, force, common):
    from facto_edge.auto_export import choose_and_export
    from facto_edge.runtime.budget import format_size

    def say(msg: str) -> None:
        click.echo(msg, err=True)

    choice, manifest = choose_and_export(
        model, output, budget, batch_size=batch_size, codec=codec, ort=ort, force=force,
        say=say, **common,
    )  # fmt: skip
    for line in choice.tried:
        click.echo(f"--auto: {line}", err=True)
    c = choice.candidate
    click.echo(
        f"--auto chose {c.options()} ({c.study}): training at batch {batch_size} with "
        f"{codec} is expected to peak at {format_size(choice.peak)} of the "
        f"{budget} budget, saving {format_size(choice.saved_bytes)} per step",
        err=True,
    )
    if c.train_hint:
        click.echo(f"--auto: {c.train_hint}", err=True)
    return manifest


DATA_HELP = "Image folder, CIFAR or IDX folder, .npz, or 'digits:'."


def _warn(message: str) -> None:
    click.secho(f"warning: {message}", fg="yellow", err=True)


def _batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise FactoEdgeError(
            f"--batch-size must be a positive integer or 'auto', found {value!r}"
        ) from None


@main.command()
@click.argument("model", type=click.Path())
@click.option("--data", required=True, help=DATA_HELP)
@click.option("-o", "--output", required=True, type=click.Path(), help="The run directory.")
@click.option("--budget", default=None, help="Peak memory of the process, e.g. 512MB.")
@click.option("--epochs", default=5, show_default=True, help="Epochs in all, resumed or not.")
@click.option("--batch-size", default="32", show_default=True, help="N, or auto (fit --budget).")
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adamw"]))
@click.option("--lr", default=0.01, show_default=True, help="Base learning rate.")
@click.option(
    "--lr-groups",
    default=None,
    help="Learning-rate multipliers per parameter group, e.g. bn=10,head=0.5; groups: "
    "factors, bias, bn (BatchNorm scale and shift), head (the last Linear).",
)
@click.option(
    "--train-layers",
    default=None,
    help="Which layers train: all (default), comma-separated layer names (the layers of "
    "MODEL's manifest.json, as `facto-edge export` listed them), or auto:SIZE, the layers "
    "whose gradients matter most per saved byte, within SIZE of saved activations per step "
    "(e.g. auto:3MB).",
)
@click.option("--momentum", default=0.9, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", default=0.0, show_default=True)
@click.option(
    "--schedule",
    default="cosine",
    show_default=True,
    type=click.Choice(["constant", "cosine", "step"]),
)
@click.option("--warmup-steps", default=0, show_default=True)
@click.option("--codec", default="q2", show_default=True, type=click.Choice(CODEC_NAMES))
@click.option(
    "--rounding",
    default="nearest",
    show_default=True,
    type=click.Choice(["nearest", "stochastic"]),
    help="How the q8/q4/q2 codec rounds: to nearest, or stochastic (unbiased, seeded).",
)
@click.option("--val-split", default=0.1, show_default=True, help="Fraction held out.")
@click.option("--augment", is_flag=True, help="Random crop (4-pixel padding), horizontal flip.")
@click.option("--seed", default=0, show_default=True)
@click.option("--label-smoothing", default=0.0, show_default=True)
@click.option(
    "--on-corrupt",
    default="skip",
    show_default=True,
    type=click.Choice(["skip", "fail"]),
    help="Unreadable images: leave them out (counted) or stop.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --output up to --epochs.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Train on the CPU or a CUDA GPU (needs facto-edge[cuda]).")  # fmt: skip
def train(
    model, data, output, budget, epochs, batch_size, resume, lr_groups, train_layers, **options
) -> None:
    """Fine-tune the exported MODEL (*.facto) on --data, checkpointing into --output."""
    from facto_edge.compile_cli import prepare_before_budget
    from facto_edge.layer_select import parse_train_layers
    from facto_edge.progress import TqdmProgress
    from facto_edge.report import format_history, format_memory
    from facto_edge.train import TrainingInterrupted
    from facto_edge.train import train as train_model

    if budget is not None and options["device"] == "cpu":
        prepare_before_budget(model, [options["codec"]], options["optimizer"])
    bar = TqdmProgress(click.echo, _warn)
    try:
        result = train_model(
            model,
            data,
            output,
            epochs=epochs,
            batch_size=_batch_size(batch_size),
            budget=budget,
            resume=resume,
            callbacks=[bar],
            lr_groups=parse_lr_groups(lr_groups),
            train_layers=parse_train_layers(train_layers),
            **options,
        )
    except TrainingInterrupted as e:
        bar.close()
        click.echo(f"interrupted: {e.outcome}", err=True)
        raise SystemExit(INTERRUPTED) from None
    finally:
        bar.close()
    budget_bytes = result.fit.budget if result.fit else None
    click.echo(format_history(result.history))
    click.echo(format_memory(result.memory, budget_bytes, result.peak_rss))
    click.echo(f"wrote {result.run_dir}/checkpoint.npz, metrics.csv, metrics.png")


@main.command(name="eval")
@click.argument("path", type=click.Path())
@click.option("--data", required=True, help=DATA_HELP)
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "train"]))
@click.option("--batch-size", default=64, show_default=True)
@click.option(
    "--plot",
    is_flag=False,
    flag_value="",
    default=None,
    help="Write the confusion matrix as a PNG here (alone: RUN_DIR/confusion.png).",
)
def eval_(path, data, split, batch_size, plot) -> None:
    """Accuracy, loss and confusion matrix of PATH (a RUN_DIR or a *.facto) on --data."""
    from facto_edge.evaluate import evaluate, format_eval
    from facto_edge.rundir import RunDir
    from facto_edge.safe_io import check_plot_path

    if plot == "":
        run = RunDir(Path(path))
        plot = run.path / "confusion.png" if run.is_run() else Path("confusion.png")
    if plot is not None:
        check_plot_path(Path(plot))
    result = evaluate(path, data, split=split, batch_size=batch_size, plot=plot)
    click.echo(format_eval(result))
    if result.plot:
        click.echo(f"wrote {result.plot}")


@main.command(name="export-onnx")
@click.argument("path", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--merge", is_flag=True, help="Rebuild each factorized layer into one dense layer.")
@click.option("--force", is_flag=True, help="Replace an ONNX model export-onnx wrote before.")
def export_onnx(path, output, merge, force) -> None:
    """Write the trained model of PATH (RUN_DIR, or a *.facto) as an inference ONNX model."""
    from facto_edge.export_onnx import compare_with_runtime
    from facto_edge.export_onnx import export_onnx as export_trained

    result = export_trained(path, output, merge=merge, force=force)
    form = f"{len(result.merged)} layer(s) merged to dense" if merge else "factorized"
    click.echo(f"wrote {result.path} ({form}, {result.params:,} parameters)")
    diff = compare_with_runtime(result.path, path)
    if diff is not None:
        click.echo(f"onnxruntime agrees with the runtime: max |logit difference| {diff:.2e}")


@main.command()
@click.option("--budget", default="256MB", show_default=True, help="Peak memory of training.")
@click.option("-o", "--output", default="facto-demo", show_default=True, type=click.Path())
@click.option("--epochs", default=10, show_default=True)
@click.option("--seed", default=0, show_default=True)
def demo(budget, output, epochs, seed) -> None:
    """The whole flow on scikit-learn's handwritten digits: zoo, pretrain, export, train
    inside --budget, evaluate; ends with accuracy and memory against the budget."""
    from facto_edge.demo import format_report, run_demo
    from facto_edge.progress import TqdmProgress

    def say(msg: str) -> None:
        click.echo(f"... {msg}", err=True)

    bar = TqdmProgress(say, _warn)
    try:
        report = run_demo(output, budget=budget, epochs=epochs, seed=seed, callbacks=[bar], say=say)
    finally:
        bar.close()
    click.echo(format_report(report))


def _register_subcommands() -> None:
    """Commands defined beside their library code (each module imports no torch at load)."""
    from facto_edge.bench.cli import bench
    from facto_edge.compile_cli import compile_
    from facto_edge.plan_cli import plan

    main.add_command(bench)
    main.add_command(compile_)
    main.add_command(plan)
    main.add_command(_LazyFleet(name="fleet", help=FLEET_HELP))


FLEET_HELP = "Fine-tune one model on a fleet of devices with Flower (needs facto-edge[fleet])."


class _LazyFleet(click.Group):
    """The `fleet` group, loaded (with flwr) only when a fleet command runs."""

    def _group(self) -> click.Group:
        from facto_edge.fleet.cli import fleet

        return fleet

    def list_commands(self, ctx) -> list[str]:
        return self._group().list_commands(ctx)

    def get_command(self, ctx, name):
        return self._group().get_command(ctx, name)

    def invoke(self, ctx):
        return self._group().invoke(ctx)


_register_subcommands()

if __name__ == "__main__":
    main()
