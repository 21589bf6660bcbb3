"""Shared helpers of the runtime tests: tiny ONNX models built with onnx.helper, and the
PyTorch reference of an exported model (tools/torch_ref.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))


def tiny_model(
    bn: str = "fold", stem_trainable: bool = False, extra_nodes: list | None = None
) -> tuple[onnx.ModelProto, dict]:
    """input [N,3,8,8] -> Conv 3x3 (stem) -> Relu -> factorized block (first 1x1, core 3x3,
    last 1x1 with bias) [-> BatchNormalization when bn="train"] -> Add (skip from the
    stem) -> Relu -> MaxPool 2x2 -> GlobalAveragePool -> Flatten -> Gemm (5 classes).
    Trainable: last, the classifier, BN scale/bias, and the stem when stem_trainable."""
    rng = np.random.default_rng(1)

    def init(name: str, *shape: int, scale: float = 0.4) -> TensorProto:
        a = rng.standard_normal(shape) * scale
        return numpy_helper.from_array(a.astype(np.float32), name)

    inits = [
        init("stem.w", 8, 3, 3, 3), init("stem.b", 8), init("first.w", 4, 8, 1, 1),
        init("core.w", 4, 4, 3, 3), init("last.w", 8, 4, 1, 1), init("last.b", 8),
        init("fc.w", 5, 8), init("fc.b", 5),
    ]  # fmt: skip
    pad1 = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "stem.w", "stem.b"], ["s"], "stem", **pad1),
        helper.make_node("Relu", ["s"], ["r"], "stem.relu"),
        helper.make_node("Conv", ["r", "first.w"], ["f"], "first"),
        helper.make_node("Conv", ["f", "core.w"], ["c"], "core", **pad1),
        helper.make_node("Conv", ["c", "last.w", "last.b"], ["l"], "last"),
    ]
    branch = "l"
    trainable = ["last.w", "last.b", "fc.w", "fc.b"]
    if bn == "train":
        inits += [init("bn.scale", 8), init("bn.bias", 8), init("bn.mean", 8, scale=0.0)]
        inits.append(numpy_helper.from_array(np.ones(8, np.float32), "bn.var"))
        nodes.append(
            helper.make_node(
                "BatchNormalization",
                ["l", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
                ["n", "bn.mean_out", "bn.var_out"],
                "bn",
                training_mode=1,
            )
        )
        branch = "n"
        trainable += ["bn.scale", "bn.bias"]
    nodes += [
        helper.make_node("Add", [branch, "r"], ["a"], "add"),
        helper.make_node("Relu", ["a"], ["ar"], "relu"),
        helper.make_node("MaxPool", ["ar"], ["p"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], "gap"),
        helper.make_node("Flatten", ["g"], ["v"], "flatten"),
        helper.make_node("Gemm", ["v", "fc.w", "fc.b"], ["logits"], "fc", transB=1),
        *(extra_nodes or []),
    ]
    if stem_trainable:
        trainable += ["stem.w", "stem.b"]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    manifest = {
        "input_shape": [3, 8, 8],
        "num_classes": 5,
        "normalization": {"mean": [0.0] * 3, "std": [1.0] * 3},
        "trainable": trainable,
        "layers": [],
    }
    return model, manifest


def batch(n: int, shape=(3, 8, 8), classes: int = 5, seed: int = 0):
    """A random float32 batch and int64 labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    return x, rng.integers(0, classes, n).astype(np.int64)
