"""`facto_edge.export`: a PyTorch CNN in, a factorized `*.facto` directory out.

The directory is built in a temporary sibling and renamed at the end, so a failed export
leaves nothing behind and an existing output is replaced only when `force` is given.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from facto_edge.errors import ExportError, UnsupportedOpError
from facto_edge.runtime.manifest import Manifest

from . import load
from .rewrite import FactorizeConfig, Graph, Rewriter, train_parts

SUPPORTED_OPS = {
    "Conv", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Flatten", "Reshape", "Pad", "Slice", "Concat", "Identity",
    "BatchNormalization", "Constant", "Dropout",
}  # fmt: skip

Progress = Callable[[str], None]


def _check_args(rank, energy, train, bn, input_shape) -> None:
    if energy is None and not (rank is not None and 0 < rank <= 1):
        raise ExportError(f"--rank must be in (0, 1], found {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise ExportError(f"--energy must be in (0, 1], found {energy}")
    train_parts(train)
    if bn not in ("fold", "train"):
        raise ExportError(f"--bn must be fold or train, found {bn!r}")
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ExportError(f"--input-shape must be CxHxW with positive sizes, found {input_shape}")


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
    """
    say = progress or (lambda msg: None)
    out = Path(out_dir)
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to overwrite it")
    meta: dict = {}
    if isinstance(model_or_path, nn.Module):
        model = model_or_path.eval()
    else:
        say("loading model")
        model, meta = load.load_model(model_or_path)
    shape = tuple(input_shape or meta.get("input_shape") or (3, 32, 32))
    _check_args(rank, energy, train, bn, shape)
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


def _write_atomic(out: Path, proto, manifest: Manifest, ort: bool, force: bool, say) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        onnx.save(proto, str(tmp / "model.onnx"))
        if ort:
            from .ort_artifacts import write_ort_artifacts

            say("writing ONNX Runtime training artifacts")
            manifest.ort = write_ort_artifacts(proto, manifest, tmp / "ort")
        (tmp / "manifest.json").write_text(manifest.to_json())
        if out.exists() and force:
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
