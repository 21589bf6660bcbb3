"""Inference ONNX models with a session's or a checkpoint's weights (torch-free).

The model is the exported factorized graph (model.onnx) with every trainable tensor and
running statistic replaced. Training-mode BatchNormalization nodes become inference nodes
(running statistics, one output).

With `merge`, each factorized chain is rebuilt into the one dense layer it replaced, from
its current factors (in float64, rounded once to float32):

    Tucker-2 conv   W[o, i, :, :] = sum_ab last[o, a] core[a, b, :, :] first[b, i]
                    (kernel, stride, padding and dilation of `core`; bias of `last`)
    SVD 1x1 conv    W = last @ first  (stride and padding of `first`)
    SVD Linear      W = last @ first  (Gemm, transB=1, bias of `last`)
    residual        W = weight + the chain's W above (`--train delta`: the frozen dense
                    node, the chain and their Add become one node)

The result passes `onnx.checker.check_model(full_check=True)` and runs in plain
onnxruntime; it is written atomically, and its metadata_props carry MARKER, by which
`is_inference_onnx` tells a file this module wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .checkpoint import write_atomic
from .errors import CheckpointError, ExportError
from .manifest import LayerInfo, Manifest

MARKER = ("facto_edge", "inference")


def is_inference_onnx(path: str | Path) -> bool:
    """Whether `path` is an ONNX model `export_proto` wrote (it carries MARKER)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable or not ONNX: not ours
        return False
    return any((p.key, p.value) == MARKER for p in proto.metadata_props)


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote: the file, the layers merged back and the parameter count."""

    path: Path
    merged: list[str]
    params: int


def set_initializers(graph: onnx.GraphProto, tensors: dict[str, np.ndarray], source: Path) -> None:
    """Replace initializers of `graph` by `tensors` (from `source`, named in errors); each
    must exist in the graph with the same shape."""
    index = {t.name: i for i, t in enumerate(graph.initializer)}
    for name, value in tensors.items():
        if name not in index:
            raise CheckpointError(f"{source} holds {name!r}, which the model does not have")
        old = graph.initializer[index[name]]
        if tuple(old.dims) != value.shape:
            raise CheckpointError(
                f"{source}: {name!r} has shape {list(value.shape)}, the model's is {list(old.dims)}"
            )
        graph.initializer[index[name]].CopyFrom(numpy_helper.from_array(value, name))


def _inference_batchnorm(graph: onnx.GraphProto) -> None:
    """Turn training-mode BatchNormalization nodes into inference ones."""
    for node in graph.node:
        if node.op_type != "BatchNormalization":
            continue
        del node.output[1:]
        for attr in node.attribute:
            if attr.name == "training_mode":
                attr.i = 0


def _consumers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Node by the initializer it takes as weight (input 1)."""
    return {n.input[1]: n for n in graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 1}


def _dense_weight(layer: LayerInfo, inits: dict[str, np.ndarray]) -> np.ndarray:
    first = inits[layer.factors["first"]].astype(np.float64)
    last = inits[layer.factors["last"]].astype(np.float64)
    if layer.method == "tucker2":
        core = inits[layer.factors["core"]].astype(np.float64)
        w = np.einsum("oa,abhw,bi->oihw", last[:, :, 0, 0], core, first[:, :, 0, 0])
    elif layer.op == "Conv":
        w = (last[:, :, 0, 0] @ first[:, :, 0, 0])[:, :, None, None]
    else:
        w = last @ first
    return w.astype(np.float32)


def _merged_node(
    layer: LayerInfo, chain: list[onnx.NodeProto], weight: str, output: str
) -> onnx.NodeProto:
    first, last = chain[0], chain[-1]
    inputs = [first.input[0], weight, *last.input[2:3]]
    if layer.op == "Gemm":
        return helper.make_node("Gemm", inputs, [output], name=layer.name, transB=1)
    shaped = chain[1] if layer.method == "tucker2" else first
    node = helper.make_node("Conv", inputs, [output], name=layer.name)
    node.attribute.extend(a for a in shaped.attribute if a.name != "group")
    return node


def _merge_layer(graph: onnx.GraphProto, layer: LayerInfo) -> None:
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    by_weight = _consumers(graph)
    roles = ("first", "core", "last") if layer.method == "tucker2" else ("first", "last")
    try:
        chain = [by_weight[layer.factors[r]] for r in roles]
        dense = [by_weight[layer.factors["weight"]]] if layer.residual else []
    except KeyError as e:
        raise ExportError(f"layer {layer.name}: factor {e} is not a Conv/Gemm weight") from e
    # A residual layer ends in the Add of its dense node and its chain.
    tail = [n for n in graph.node if n.op_type == "Add" and chain[-1].output[0] in n.input]
    tail = tail[:1] if layer.residual else []
    output = (tail or chain)[-1].output[0]
    weight = f"{layer.name}.weight"
    nodes = [*dense, *chain, *tail]
    position = min(list(graph.node).index(n) for n in nodes)
    for node in nodes:
        graph.node.remove(node)
    graph.node.insert(position, _merged_node(layer, chain, weight, output))
    drop = {layer.factors[r] for r in (*roles, "weight") if r in layer.factors}
    drop |= {n.output[0] for n in nodes} - {output}
    w = _dense_weight(layer, inits)
    if layer.residual:
        w = (inits[layer.factors["weight"]].astype(np.float64) + w).astype(np.float32)
    keep = [t for t in graph.initializer if t.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend([*keep, numpy_helper.from_array(w, weight)])
    keep_info = [v for v in graph.value_info if v.name not in drop]
    del graph.value_info[:]
    graph.value_info.extend(keep_info)


def _param_count(graph: onnx.GraphProto) -> int:
    return sum(int(np.prod(t.dims)) for t in graph.initializer)


def export_proto(
    proto: onnx.ModelProto, manifest: Manifest, out: str | Path, *, merge: bool = False
) -> OnnxExport:
    """Write `proto` (an exported model holding the weights to keep; changed in place) to
    `out` as an inference ONNX model; `merge` rebuilds factorized layers into dense ones."""
    _inference_batchnorm(proto.graph)
    merged = [layer.name for layer in manifest.layers if merge and layer.method != "dense"]
    for layer in manifest.layers:
        if layer.name in merged:
            _merge_layer(proto.graph, layer)
    onnx.checker.check_model(proto, full_check=True)
    if not any((p.key, p.value) == MARKER for p in proto.metadata_props):
        proto.metadata_props.add(key=MARKER[0], value=MARKER[1])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda f: f.write(proto.SerializeToString()))
    return OnnxExport(out, merged, _param_count(proto.graph))
