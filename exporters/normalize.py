"""Normalize the ONNX graph torch.onnx wrote, before it is factorized.

onnxslim (the `export` extra; docs/export.md says why it and not another optimizer) folds
constants and every size computed from a static shape (Shape -> Gather -> Unsqueeze ->
Concat -> Reshape, Cast, ConstantOfShape, Range feeding Pad/Slice/Expand), and removes
no-ops (Identity, eval-mode Dropout, Cast to the same type). A size that depends on the
dynamic batch alone becomes -1 in a Reshape. Three of its rewrites are turned off:

- Conv+BatchNormalization fusion: `--bn train` needs the BatchNormalization nodes, and the
  rewriter folds them itself (into the `last` factor) for `--bn fold`;
- weight tying: it merges equal small initializers (every fresh BatchNorm's scale is all
  ones), which would make separate parameters one tensor when they train;
- Gelu fusion: it writes com.microsoft Gelu, outside the standard opset.

A graph from the dynamo exporter (opset 18) is brought back to opset 17 afterwards; its
CastLike nodes (nn.GroupNorm's constants cast like the activation) become Cast nodes to
the statically known type beforehand, which onnxslim then folds.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from facto_edge.errors import ExportError

OPSET = 17
SKIPPED_FUSIONS = ["FusionConvBN", "FusionConvTransposeBN", "FusionGelu"]
SKIPPED_PASSES = ["weight_tying"]
# (op type, input index) of inputs that are sizes, not data.
SIZE_INPUTS = {("Reshape", 1), ("Pad", 1), ("Pad", 3), ("Slice", 1), ("Slice", 2),
               ("Slice", 3), ("Slice", 4), ("Expand", 1), ("Split", 1), ("Tile", 1),
               ("ConstantOfShape", 0), ("Squeeze", 1), ("Unsqueeze", 1), ("ReduceMean", 1),
               ("Resize", 2), ("Resize", 3)}  # fmt: skip
REDUCE_OPS = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}  # fmt: skip


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with constants and static sizes folded and no-ops removed, at opset 17."""
    try:
        import onnxslim
    except ImportError as e:
        raise ExportError(
            "export needs onnxslim to normalize the graph; install the export extra: "
            "pip install 'facto-edge[export]'"
        ) from e
    logging.getLogger("onnxslim").setLevel(logging.ERROR)
    _castlike_to_cast(model)
    slim = onnxslim.slim(
        model, skip_fusion_patterns=SKIPPED_FUSIONS, skip_optimizations=SKIPPED_PASSES
    )
    if _opset(slim) > OPSET:
        slim = to_opset17(slim)
    _drop_zero_pad_values(slim)
    return slim


def _castlike_to_cast(model: onnx.ModelProto) -> None:
    """CastLike(a, b) -> Cast(a, to=b's element type), where shape inference knows it."""
    if not any(n.op_type == "CastLike" for n in model.graph.node):
        return
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.value_info, *inferred.input, *inferred.output]
    }
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in model.graph.node:
        to = types.get(node.input[1]) if node.op_type == "CastLike" else None
        if to:
            node.op_type = "Cast"
            del node.input[1:]
            node.attribute.append(helper.make_attribute("to", to))


def _drop_zero_pad_values(model: onnx.ModelProto) -> None:
    """A Pad's constant_value of 0 is its default: drop the input (F.pad writes it)."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Pad" and len(node.input) == 3 and node.input[2] in inits:
            if not numpy_helper.to_array(inits[node.input[2]]).any():
                del node.input[2]


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def computed_sizes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(node, producer op type) of every size input (a Reshape's shape, a Pad's pads, a
    Slice's starts...) that a node computes instead of a constant."""
    producers = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            src = producers.get(name)
            if (node.op_type, i) in SIZE_INPUTS and src is not None and src.op_type != "Constant":
                found.append((node.name, src.op_type))
    return found


def to_opset17(model: onnx.ModelProto) -> onnx.ModelProto:
    """An opset-18 graph (what the dynamo exporter writes) rewritten for opset 17: Reduce*
    axes and Split's num_outputs go back to attributes; anything else new in 18 is refused."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in REDUCE_OPS and len(node.input) > 1 and node.input[1]:
            _axes_to_attribute(node, inits)
        elif node.op_type == "Split" and any(a.name == "num_outputs" for a in node.attribute):
            _split_sizes_to_input(model, node, inits)
        elif node.op_type == "Pad" and len(node.input) > 3 and node.input[3]:
            raise _new_in_18(node, "Pad with an axes input")
        elif onnx.defs.get_schema(node.op_type, 18).since_version == 18 and not _same_in_17(node):
            raise _new_in_18(node, node.op_type)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = OPSET
    del model.graph.initializer[:]
    model.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in inits.items())
    return model


def _same_in_17(node: onnx.NodeProto) -> bool:
    """Pad and Split changed in 18 but read the same in 17 without their new inputs."""
    return node.op_type in ("Pad", "Split") or node.op_type in REDUCE_OPS


def _new_in_18(node: onnx.NodeProto, what: str) -> ExportError:
    return ExportError(
        f"node {node.name!r} uses {what}, which ONNX opset 17 does not have; expected an "
        "opset-17 graph (facto-edge's format); the model needs an op written another way"
    )


def _axes_to_attribute(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> None:
    if node.input[1] not in inits:
        raise _new_in_18(node, f"{node.op_type} with computed axes")
    axes = [int(a) for a in inits[node.input[1]].reshape(-1)]
    del node.input[1:]
    node.attribute.append(helper.make_attribute("axes", axes))


def _split_sizes_to_input(model, node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> None:
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in onnx.shape_inference.infer_shapes(model).graph.value_info
    }
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    sizes = [shapes.get(o, [0])[attrs.get("axis", 0)] for o in node.output]
    if not all(sizes):
        raise _new_in_18(node, "Split with num_outputs over a dynamic axis")
    kept = [a for a in node.attribute if a.name != "num_outputs"]
    del node.attribute[:]
    node.attribute.extend(kept)
    name = f"{node.name}.split"
    inits[name] = np.asarray(sizes, dtype=np.int64)
    del node.input[1:]
    node.input.append(name)
