"""`facto_edge.export`: a PyTorch CNN in, a factorized `*.facto` directory out.

The directory is built in a hidden sibling and put in place at the end (facto_edge/
safe_io.py: an atomic exchange with a previous export), so a failed or killed export
leaves the destination as it was; an existing output is replaced only when `force` is
given and it is a previous export. A pickled model is loaded only with `trust_pickle`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from facto_edge.errors import ExportError, UnsupportedOpError
from facto_edge.runtime.checkpoint import write_atomic
from facto_edge.runtime.manifest import Manifest
from facto_edge.safe_io import clean_leftovers, new_build_dir, replace_dir

from . import load
from .rewrite import FactorizeConfig, Graph, Rewriter, train_parts

SUPPORTED_OPS = {
    "Conv", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Flatten", "Reshape", "Pad", "Slice", "Concat", "Identity",
    "BatchNormalization", "Constant", "Dropout",
}  # fmt: skip

Progress = Callable[[str], None]


def _check_args(rank, energy, train, bn, input_shape, min_channels) -> None:
    if energy is None and not (rank is not None and 0 < rank <= 1):
        raise ExportError(f"--rank must be in (0, 1], found {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise ExportError(f"--energy must be in (0, 1], found {energy}")
    train_parts(train)
    if bn not in ("fold", "train"):
        raise ExportError(f"--bn must be fold or train, found {bn!r}")
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ExportError(f"--input-shape must be CxHxW with positive sizes, found {input_shape}")
    if not (isinstance(min_channels, int) and min_channels >= 0):
        raise ExportError(f"--min-channels must be an integer >= 0, found {min_channels!r}")


def to_onnx(model: nn.Module, input_shape: tuple[int, int, int]) -> onnx.ModelProto:
    """The original model as ONNX (opset 17, dynamic batch, eval mode, BN kept as nodes)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(1, *input_shape),), buf, dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL,
        )  # fmt: skip
    model_proto = onnx.load_from_string(buf.getvalue())
    for node in model_proto.graph.node:
        if node.op_type not in SUPPORTED_OPS:
            raise UnsupportedOpError(
                f"the model uses ONNX op {node.op_type} (node {node.name!r}), which facto-edge "
                f"cannot run; supported ops: {', '.join(sorted(SUPPORTED_OPS))}"
            )
    return model_proto


def factorize(
    model: nn.Module, input_shape: tuple[int, int, int], cfg: FactorizeConfig
) -> tuple[onnx.ModelProto, list, list[str]]:
    """Export `model` to ONNX and factorize it: (model, layers, trainable names)."""
    graph = Graph(to_onnx(model, input_shape))
    rewriter = Rewriter(graph, cfg)
    # Many small SVDs: one BLAS thread each is fastest and immune to oversubscription.
    with threadpool_limits(1):
        layers = rewriter.run()
    proto = graph.to_model()
    onnx.checker.check_model(proto, full_check=True)
    trainable = [name for layer in layers for name in layer.trainable]
    return proto, layers, trainable


def export(
    model_or_path: nn.Module | str | Path,
    out_dir: str | Path,
    *,
    input_shape: tuple[int, int, int] | None = None,
    rank: float | None = 0.25,
    energy: float | None = None,
    min_channels: int = 8,
    train: str = "last",
    bn: str = "fold",
    ort: bool = True,
    force: bool = False,
    trust_pickle: bool = False,
    classes: list[str] | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Factorize a PyTorch CNN and write `out_dir` (model.onnx, manifest.json, ort/).

    Parameters
    ----------
    model_or_path : an nn.Module, or the path of a TorchScript archive or pickled module.
    input_shape : (C, H, W); defaults to what the zoo archive records, else (3, 32, 32).
    rank, energy : rank as a fraction of channels, or the share of energy to keep.
    train : which factors of each layer train: "last", "first", "core", "all", or a
        comma-separated mix such as "core,last" (an SVD layer's "core" is its "last").
    bn : "fold" BatchNorm into the last factor, or keep it trainable ("train"): the BN of
        each factorized layer trains (batch statistics); a layer that stays dense stays
        frozen, its BN folded.
    ort : also write ONNX Runtime training artifacts when onnxruntime-training is present.
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
    proto, layers, trainable = factorize(model, shape, cfg)
    norm = meta.get("normalization") or {"mean": [0.0] * shape[0], "std": [1.0] * shape[0]}
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
