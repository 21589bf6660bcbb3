"""`facto_edge.export`: a PyTorch CNN in, a factorized `*.facto` directory out.

The directory is built in a hidden sibling and put in place at the end (facto_edge/
safe_io.py: an atomic exchange with a previous export), so a failed or killed export
leaves the destination as it was; an existing output is replaced only when `force` is
given and it is a previous export. A pickled model is loaded only with `trust_pickle`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
from threadpoolctl import threadpool_limits
from torch import nn

from facto_edge.errors import ExportError, UnsupportedOpError
from facto_edge.runtime.checkpoint import write_atomic
from facto_edge.runtime.manifest import Manifest
from facto_edge.safe_io import clean_leftovers, new_build_dir, replace_dir

from . import load
from .normalize import normalize
from .rewrite import FactorizeConfig, Graph, Rewriter, train_parts
from .to_onnx import module_path, to_onnx

NORMALIZATIONS = {
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "cifar": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
}

Progress = Callable[[str], None]


def _check_args(rank, energy, train, bn, input_shape, min_channels) -> None:
    if energy is None and not (rank is not None and 0 < rank <= 1):
        raise ExportError(f"--rank must be in (0, 1], found {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise ExportError(f"--energy must be in (0, 1], found {energy}")
    train_parts(train)
    if bn not in ("fold", "train"):
        raise ExportError(f"--bn must be fold or train, found {bn!r}")
    if len(input_shape) not in (2, 3) or min(input_shape) < 1:
        raise ExportError(
            f"--input-shape must be CxL or CxHxW with positive sizes, found {input_shape}"
        )
    if not (isinstance(min_channels, int) and min_channels >= 0):
        raise ExportError(f"--min-channels must be an integer >= 0, found {min_channels!r}")


def normalization(
    mean: str | list[float] | None, std: str | list[float] | None, channels: int, meta: dict
) -> dict:
    """The input normalization: `mean`/`std` as given (a list, or a preset name: imagenet,
    cifar, none), else what the archive's facto_edge.json records, else none (0 and 1)."""
    presets = {**NORMALIZATIONS, "none": ([0.0], [1.0])}
    for value in (mean, std):
        if isinstance(value, str) and value not in presets:
            raise ExportError(
                f"--mean/--std take {channels} comma-separated numbers or a preset "
                f"({', '.join(presets)}); found {value!r}"
            )
    if isinstance(mean, str):
        mean, std = presets[mean][0], presets[mean][1] if std is None else std
    if isinstance(std, str):
        std = presets[std][1]
    recorded = meta.get("normalization") or {}
    mean = mean if mean is not None else recorded.get("mean", [0.0])
    std = std if std is not None else recorded.get("std", [1.0])
    out = {}
    for key, value in (("mean", mean), ("std", std)):
        value = [float(v) for v in value] * (channels if len(value) == 1 else 1)
        if len(value) != channels:
            raise ExportError(
                f"--{key} needs one value per input channel ({channels}), found {len(value)}"
            )
        out[key] = value
    if min(out["std"]) <= 0:
        raise ExportError(f"--std must be positive, found {out['std']}")
    return out


def check_runtime_ops(model: onnx.ModelProto) -> None:
    """Refuse, naming the op, the node and the module, the first node of the normalized
    graph that the facto-edge runtime has no op for. (1-D Conv/BN/pooling run as their
    2-D twins over H=1.)"""
    from facto_edge.runtime.ops import OPS

    for node in model.graph.node:
        op = node.op_type
        if op in OPS:
            continue
        where = module_path(node.name)
        raise UnsupportedOpError(
            f"the model uses ONNX op {op} (node {node.name!r}, module {where or '(top level)'!r}"
            f"), which the facto-edge runtime cannot run yet; it runs: {', '.join(sorted(OPS))}; "
            "pass --onnx-only to write the graph anyway (it runs in onnxruntime)"
        )


def factorize(
    model: nn.Module, input_shape: tuple[int, ...], cfg: FactorizeConfig, runtime_check: bool = True
) -> tuple[onnx.ModelProto, list, list[str]]:
    """Export `model` to ONNX, normalize and factorize it: (model, layers, trainable names)."""
    proto = normalize(to_onnx(model, input_shape))
    if runtime_check:
        check_runtime_ops(proto)
    graph = Graph(proto)
    rewriter = Rewriter(graph, cfg)
    # Many small SVDs: one BLAS thread each is fastest and immune to oversubscription.
    with threadpool_limits(1):
        layers = rewriter.run()
    proto = graph.to_model()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise ExportError(
            f"the factorized graph is not valid ONNX ({first}): a facto-edge bug; export with "
            "--rank 1 to check the model itself, and report it with the model"
        ) from e
    trainable = [name for layer in layers for name in layer.trainable]
    return proto, layers, trainable


def export(
    model_or_path: nn.Module | str | Path,
    out_dir: str | Path,
    *,
    input_shape: tuple[int, ...] | None = None,
    rank: float | None = 0.25,
    energy: float | None = None,
    min_channels: int = 8,
    train: str = "last",
    bn: str = "fold",
    ort: bool = True,
    force: bool = False,
    trust_pickle: bool = False,
    classes: list[str] | None = None,
    mean: str | list[float] | None = None,
    std: str | list[float] | None = None,
    runtime_check: bool = True,
    progress: Progress | None = None,
) -> Manifest:
    """Factorize a PyTorch CNN and write `out_dir` (model.onnx, manifest.json, ort/).

    Parameters
    ----------
    model_or_path : an nn.Module, or the path of a TorchScript archive or pickled module.
    input_shape : (C, H, W) or (C, L); defaults to what the zoo archive records, else
        (3, 32, 32).
    rank, energy : rank as a fraction of channels, or the share of energy to keep.
    train : which factors of each layer train: "last", "first", "core", "all", or a
        comma-separated mix such as "core,last" (an SVD layer's "core" is its "last"); or
        "delta": each factorized layer keeps its weight frozen and trains a low-rank
        update beside it, whose `last` starts at zero (docs/export.md).
    bn : "fold" BatchNorm into the last factor, or keep it trainable ("train"): the BN of
        each factorized layer trains (batch statistics); a layer that stays dense stays
        frozen, its BN folded.
    ort : also write ONNX Runtime training artifacts when onnxruntime-training is present.
    mean, std : the input normalization, per channel or a preset name ("imagenet",
        "cifar", "none"); default: what the archive records, else none.
    runtime_check : refuse a graph with an op the facto-edge runtime cannot run (the
        graph is still valid ONNX for onnxruntime when this is off).
    force : replace `out_dir` when it holds a previous export (and nothing else).
    trust_pickle : load a pickled nn.Module (which runs code from the file); refused
        otherwise.
    """
    say = progress or (lambda msg: None)
    out = Path(os.path.abspath(out_dir))
    clean_leftovers(out, is_export)
    _check_output(out, force)
    meta: dict = {}
    if isinstance(model_or_path, nn.Module):
        model = model_or_path.eval()
    else:
        say("loading model")
        model, meta = load.load_model(model_or_path, trust_pickle=trust_pickle)
    shape = tuple(input_shape or meta.get("input_shape") or (3, 32, 32))
    _check_args(rank, energy, train, bn, shape, min_channels)
    load.check_modules(model)
    num_classes = load.check_input_shape(model, shape)
    cfg = FactorizeConfig(
        rank=None if energy is not None else rank, energy=energy,
        min_channels=min_channels, train=train, bn=bn,
    )  # fmt: skip
    say("factorizing")
    norm = normalization(mean, std, shape[0], meta)
    proto, layers, trainable = factorize(model, shape, cfg, runtime_check)
    manifest = Manifest(
        input_shape=list(shape), num_classes=num_classes, normalization=norm,
        config={"rank": cfg.rank, "energy": energy, "min_channels": min_channels,
                "train": train, "bn": bn},
        layers=layers, trainable=trainable, classes=classes,
    )  # fmt: skip
    _write_atomic(out, proto, manifest, ort, force, say)
    return manifest


def is_export(path: Path) -> bool:
    """Whether `path` is a directory `export` wrote: model.onnx beside a manifest.json
    that reads as a manifest."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    keys = {"format_version", "layers", "trainable"}
    return (
        isinstance(manifest, dict) and keys <= manifest.keys() and (path / "model.onnx").is_file()
    )


def _check_output(out: Path, force: bool) -> None:
    """Raise unless writing `out` loses nothing: new, or a previous export with `force`."""
    if not out.exists():
        return
    if out.is_dir() and is_export(out) and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    if not out.is_dir() or not is_export(out):
        kind = "a directory" if out.is_dir() else "a file"
        raise ExportError(
            f"{out} is {kind} that holds no model `facto-edge export` wrote (no "
            "manifest.json and model.onnx): --force replaces only a previous export; "
            "choose another -o path"
        )


def _write_atomic(out: Path, proto, manifest: Manifest, ort: bool, force: bool, say) -> None:
    """Build the export in a hidden sibling, then put it in the place of `out`."""
    build = new_build_dir(out)
    try:
        write_atomic(build / "model.onnx", lambda f: f.write(proto.SerializeToString()))
        if ort:
            from .ort_artifacts import write_ort_artifacts

            say("writing ONNX Runtime training artifacts")
            manifest.ort = write_ort_artifacts(proto, manifest, build / "ort")
        write_atomic(build / "manifest.json", lambda f: f.write(manifest.to_json().encode()))
        _check_output(out, force)
        replace_dir(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
