"""The `facto-edge` command line. Each command parses, calls one library function and
prints; user mistakes (FactoEdgeError) become one line on stderr and exit code 1."""

from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path

import click

from facto_edge.errors import FactoEdgeError


def friendly_errors(fn):
    """Turn FactoEdgeError into `error: message` and exit 1, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FactoEdgeError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def parse_shape(value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3:
        raise FactoEdgeError(f"--input-shape must look like 3x32x32 (CxHxW), found {value!r}")
    return shape  # type: ignore[return-value]


@click.group()
@click.version_option(package_name="facto-edge")
def main() -> None:
    """facto-edge: train factorized CNNs on small devices, inside a memory budget."""


@main.command()
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write model.pt.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random initialization.")
@click.option("--num-classes", default=10, show_default=True)
@click.option("--input-shape", default="3x32x32", show_default=True, help="CxHxW.")
@click.option("--list", "list_", is_flag=True, help="List the models with parameter counts.")
@friendly_errors
def zoo(name, output, seed, num_classes, input_shape, list_) -> None:
    """Write zoo model NAME as a TorchScript archive (random weights from --seed)."""
    from facto_edge import zoo as zoo_lib

    if list_ or not name:
        for entry in zoo_lib.ZOO.values():
            params = zoo_lib.param_count(entry.build())
            click.echo(f"{entry.name:<20} {params / 1e6:7.2f} M params  {entry.description}")
        return
    shape = parse_shape(input_shape)
    out = zoo_lib.write(name, output or f"{name}.pt", seed, num_classes, shape)
    click.echo(f"wrote {out}")


def format_layers(manifest) -> str:
    """The per-layer export table and its totals."""
    head = (f"{'layer':<24} {'shape':<16} {'method':<8} {'ranks':<9} {'params':>17} "
            f"{'MFLOPs':>15} {'rel.err':>7}  trainable")  # fmt: skip
    lines = [head, "-" * len(head)]
    for layer in manifest.layers:
        shape = "x".join(map(str, layer.shape))
        ranks = ",".join(map(str, layer.ranks)) or "-"
        params = f"{layer.params_before:>8}>{layer.params_after:<8}"
        flops = f"{layer.flops_before / 1e6:>7.1f}>{layer.flops_after / 1e6:<7.1f}"
        roles = [r for r, n in layer.factors.items() if n in layer.trainable] or ["-"]
        note = f" ({layer.note})" if layer.note else ""
        lines.append(
            f"{layer.name:<24.24} {shape:<16} {layer.method:<8} {ranks:<9} {params:>17} "
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
@click.option("--input-shape", default=None, help="CxHxW (default: from the zoo archive, else 3x32x32).")
@click.option("--rank", type=float, default=None, help="Rank as a fraction of channels, in (0, 1].  [default: 0.25]")
@click.option("--energy", type=float, default=None, help="Keep this share of squared singular values instead.")
@click.option("--min-channels", default=8, show_default=True, help="Layers with fewer channels stay dense.")
@click.option("--train", "train", default="last", show_default=True,
              type=click.Choice(["last", "first", "core", "all"]), help="Which factor trains.")
@click.option("--bn", default="fold", show_default=True, type=click.Choice(["fold", "train"]))
@click.option("--no-ort", is_flag=True, help="Skip the ONNX Runtime training artifacts.")
@click.option("--force", is_flag=True, help="Overwrite an existing output directory.")
@friendly_errors
def export(model, output, input_shape, rank, energy, min_channels, train, bn, no_ort, force) -> None:  # fmt: skip
    """Factorize MODEL (TorchScript archive, or a pickled nn.Module) into a *.facto directory.

    A pickled nn.Module runs code from the file when loaded: only export files you trust.
    """
    from facto_edge.exporters.export import export as export_model

    if rank is not None and energy is not None:
        raise FactoEdgeError("give --rank or --energy, not both")
    rank = 0.25 if rank is None and energy is None else rank
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        manifest = export_model(
            model, output, input_shape=parse_shape(input_shape), rank=rank, energy=energy,
            min_channels=min_channels, train=train, bn=bn, ort=not no_ort, force=force,
            progress=lambda msg: click.echo(f"... {msg}", err=True),
        )  # fmt: skip
    for w in caught:
        if issubclass(w.category, UserWarning):
            click.secho(f"warning: {w.message}", fg="yellow", err=True)
    click.echo(format_layers(manifest))
    ort = "with ort/ training artifacts" if manifest.ort else "without ort/ (onnxruntime-training absent or --no-ort)"  # fmt: skip
    click.echo(f"wrote {output} {ort}")


if __name__ == "__main__":
    main()
