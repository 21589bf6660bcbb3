"""The floating-point work of one training step, counted from an ONNX graph (onnx only:
no torch, no numba), per image: the benchmark's GFLOP/s figures divide it by the time.

The rule, for every Conv, Gemm and MatMul node (2 FLOPs per multiply-accumulate):

- forward: its MACs, `prod(output shape) * prod(weight.shape[1:])` for a Conv (groups
  included), `M * N * K` for a Gemm or MatMul;
- input gradient: its MACs again when its data input (operand 0) carries a gradient,
  that is, depends on a trainable tensor; nothing for the first layers in front of every
  trainable tensor, where backward stops;
- weight gradient: its MACs again when its weight (operand 1) carries a gradient: a
  trainable initializer, or a tensor computed from one.

Every other op (BatchNormalization, activations, pooling, additions, the loss, the
optimizer's update) is left out: elementwise work, a few percent of a CNN's step. Bias
gradients are reductions and left out too. The counts are per image: the nets here do
the same work for every image of a batch, so a step at batch B does B times as much.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import onnx
from onnx import shape_inference

from facto_edge.errors import FactoEdgeError

COUNTED = ("Conv", "Gemm", "MatMul")
NO_GRADIENT = ("Shape", "Size", "ConstantOfShape")  # outputs integers, not values


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step per image, by pass."""

    forward: int
    input_grad: int
    weight_grad: int

    @property
    def total(self) -> int:
        return self.forward + self.input_grad + self.weight_grad


def _with_batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose symbolic graph-input dimensions (the batch) are 1."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in out.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    return out


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Every tensor's static shape (initializers, inputs and what inference found)."""
    inferred = shape_inference.infer_shapes(_with_batch_one(model), data_prop=True)
    graph = inferred.graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes.setdefault(value.name, tuple(d.dim_value for d in dims))
    return shapes


def _prod(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one Conv, Gemm or MatMul node at batch 1."""
    needed = [node.input[0], node.input[1], node.output[0]]
    missing = [name for name in needed if name not in shapes]
    if missing:
        raise FactoEdgeError(
            f"cannot count the FLOPs of {node.op_type} node {node.name!r}: ONNX shape "
            f"inference found no static shape for {missing}; expected a graph whose only "
            "free dimension is the batch"
        )
    a, w, y = (shapes[name] for name in needed)
    if node.op_type == "Conv":
        return _prod(y) * _prod(w[1:])
    if node.op_type == "Gemm":
        return _prod(y) * (a[0] if _attr(node, "transA", 0) else a[-1])
    return _prod(y) * (a[-1] if len(a) > 1 else a[0])


def carries_gradient(model: onnx.ModelProto, trainable: Iterable[str]) -> set[str]:
    """The tensors a gradient reaches: the trainable ones and every value computed from
    one (graph inputs carry none)."""
    grads = set(trainable)
    for node in model.graph.node:
        if node.op_type not in NO_GRADIENT and any(name in grads for name in node.input):
            grads.update(node.output)
    return grads


def count_flops(model: onnx.ModelProto, trainable: Iterable[str]) -> StepFlops:
    """The FLOPs of one training step per image of `model` when the initializers named in
    `trainable` train (the rule of the module docstring)."""
    shapes = _shapes(model)
    grads = carries_gradient(model, trainable)
    forward = input_grad = weight_grad = 0
    for node in model.graph.node:
        if node.op_type not in COUNTED:
            continue
        flops = 2 * node_macs(node, shapes)
        forward += flops
        input_grad += flops if node.input[0] in grads else 0
        weight_grad += flops if node.input[1] in grads else 0
    return StepFlops(forward, input_grad, weight_grad)


def all_trainable(model: onnx.ModelProto) -> list[str]:
    """Every initializer: what trains in a dense model whose parameters all train."""
    return [t.name for t in model.graph.initializer]
