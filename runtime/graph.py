"""Load an exported model (model.onnx + manifest.json) and schedule its training step.

`load_graph` turns the ONNX graph into plain `Node`s and numpy initializers (Constant
nodes become initializers) and fuses the SiLU and GELU patterns (fusion.py).
`build_schedule` decides what backward runs: a tensor needs a gradient when it is a
trainable initializer or is computed from one, and a node runs backward when its output
needs a gradient and reaches the loss. Everything below the first node that touches a
trainable tensor runs forward only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from .errors import ExportError, FactoEdgeError
from .manifest import Manifest
from .onnx_read import (
    AttributeProto,
    ModelProto,
    NodeProto,
    TensorProto,
    attribute_value,
    load_model,
    to_array,
)

ModelSource = str | Path | tuple[ModelProto, dict]


@dataclass(frozen=True, eq=False)
class Node:
    """One ONNX node: op type, unique name, input/output value names ('' = absent) and
    decoded attributes. `persistent` holds the positions of inputs bound to initializers,
    `no_grad` those the node sends no gradient to (a fused node whose gradient to another
    input covers theirs, fusion.py)."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    persistent: frozenset[int] = frozenset()
    no_grad: frozenset[int] = frozenset()


@dataclass
class Graph:
    """A loaded model: nodes in topological order and every initializer as an array."""

    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    num_classes: int
    trainable: tuple[str, ...]
    manifest: Manifest


@dataclass(frozen=True)
class Schedule:
    """Forward nodes in order, backward nodes in reverse order, and per backward node which
    inputs need a gradient (`need[node.name]`)."""

    forward: tuple[Node, ...]
    backward: tuple[Node, ...]
    need: dict[str, tuple[bool, ...]]


def load_graph(source: ModelSource, train_layers: Sequence[str] | None = None) -> Graph:
    """Load a `*.facto` directory, or an (onnx.ModelProto, manifest dict) pair. With
    `train_layers` (names of the manifest's layers) only those layers' tensors train
    (`restrict_trainable`)."""
    if isinstance(source, tuple):
        proto, manifest = source
        return _build_graph(proto, Manifest.in_memory(manifest), train_layers)
    return _build_graph(*_read_dir(Path(source)), train_layers)


def restrict_trainable(manifest: Manifest, train_layers: Sequence[str] | None) -> tuple[str, ...]:
    """The manifest's trainable tensors, or with `train_layers` those of the named layers
    only (in the manifest's order); FactoEdgeError names a layer the manifest lacks or one
    with nothing to train. A frozen layer's batch-statistics BatchNormalization keeps
    normalizing with batch statistics (as in PyTorch's train mode with frozen parameters)."""
    if train_layers is None:
        return tuple(manifest.trainable)
    layers = {layer.name: layer for layer in manifest.layers}
    names = list(dict.fromkeys(train_layers))
    for name in names:
        if name not in layers:
            known = ", ".join(layer.name for layer in manifest.layers if layer.trainable)
            raise FactoEdgeError(f"the model has no layer {name!r}; its trainable layers: {known}")
        if not layers[name].trainable:
            raise FactoEdgeError(f"layer {name!r} has nothing to train (it was exported frozen)")
    if not names:
        raise FactoEdgeError("train_layers names no layer: at least one layer must train")
    chosen = {t for name in names for t in layers[name].trainable}
    return tuple(t for t in manifest.trainable if t in chosen)


def _read_dir(path: Path) -> tuple[ModelProto, Manifest]:
    onnx_path = path / "model.onnx"
    if not onnx_path.is_file():
        raise ExportError(
            f"{path} is not an exported model: model.onnx is missing; "
            "create one with `facto-edge export model.pt -o model.facto`"
        )
    manifest = Manifest.load(path)
    try:
        return load_model(str(onnx_path)), manifest
    except (DecodeError, OSError, ValueError) as e:
        raise ExportError(f"{path} is corrupt ({e}); re-export the model") from e


def _build_graph(
    proto: ModelProto, manifest: Manifest, train_layers: Sequence[str] | None = None
) -> Graph:
    from .fusion import fuse  # fusion builds Nodes

    g = proto.graph
    inits = {t.name: to_array(t) for t in g.initializer}
    nodes: list[Node] = []
    for i, n in enumerate(g.node):
        attrs = {a.name: _attr_value(a) for a in n.attribute}
        if n.op_type == "Constant":
            inits[n.output[0]] = _constant_value(attrs, n.name)
            continue
        node = _make_node(n, attrs, f"{n.op_type}_{i}", inits)
        nodes.append(_batch_statistics(node, manifest.trainable))
    inputs = [v.name for v in g.input if v.name not in inits]
    if len(inputs) != 1 or len(g.output) < 1:
        raise ExportError(f"expected one graph input and an output, found inputs {inputs}")
    missing = [t for t in manifest.trainable if t not in inits]
    if missing:
        raise ExportError(f"trainable tensors {missing} are not initializers of model.onnx")
    trainable = restrict_trainable(manifest, train_layers)
    outputs = {v.name for v in g.output}
    return Graph(
        nodes=_unique_names(fuse(nodes, inits, outputs, frozenset(trainable))),
        initializers={k: _as_runtime_array(v) for k, v in inits.items()},
        input_name=inputs[0],
        input_shape=tuple(int(d) for d in manifest.input_shape),
        output_name=g.output[0].name,
        num_classes=int(manifest.num_classes),
        trainable=trainable,
        manifest=manifest,
    )


def _make_node(n: NodeProto, attrs: dict, fallback: str, inits: dict) -> Node:
    persistent = frozenset(i for i, v in enumerate(n.input) if v in inits)
    return Node(n.op_type, n.name or fallback, tuple(n.input), tuple(n.output), attrs, persistent)


def _batch_statistics(node: Node, trainable: list[str]) -> Node:
    """A BatchNormalization whose scale trains runs in training form (batch statistics,
    running statistics updated), as in the ORT training graph, even where model.onnx
    stores it in inference form for plain inference."""
    if node.op_type != "BatchNormalization" or node.inputs[1] not in trainable:
        return node
    outputs = node.outputs
    if len(outputs) == 1:
        outputs = (*outputs, f"{node.name}.running_mean_out", f"{node.name}.running_var_out")
    attrs = {**node.attrs, "training_mode": 1}
    return Node(**{**node.__dict__, "attrs": attrs, "outputs": outputs})


def _unique_names(nodes: list[Node]) -> list[Node]:
    seen: set[str] = set()
    out = []
    for i, n in enumerate(nodes):
        name = n.name if n.name not in seen else f"{n.name}#{i}"
        seen.add(name)
        out.append(n if name == n.name else Node(**{**n.__dict__, "name": name}))
    return out


def _as_runtime_array(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return np.ascontiguousarray(a, dtype=np.float32)
    return np.ascontiguousarray(a)


def _attr_value(a: AttributeProto) -> Any:
    v = attribute_value(a)
    if isinstance(v, TensorProto):
        return to_array(v)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return tuple(x.decode() if isinstance(x, bytes) else x for x in v)
    return v


def _constant_value(attrs: dict, name: str) -> np.ndarray:
    for key, dtype in (
        ("value", None),
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise ExportError(f"Constant node {name!r} has none of value, value_float(s), value_int(s)")


def split_parts(node: Node) -> list[Node]:
    """A Split node with k outputs as k one-output Split nodes (attribute `part`: which
    output), each differentiable (only output 0 of a node is); other nodes as they are."""
    if node.op_type != "Split" or len(node.outputs) < 2:
        return [node]
    attrs = {**node.attrs, "num_outputs": len(node.outputs)}
    return [
        Node(
            **{
                **node.__dict__,
                "name": f"{node.name}:{i}",
                "outputs": (out,),
                "attrs": {**attrs, "part": i},
            }
        )  # fmt: skip
        for i, out in enumerate(node.outputs)
    ]


def build_schedule(nodes: list[Node], trainable: tuple[str, ...], root: str) -> Schedule:
    """Schedule forward and backward for `nodes`, differentiating `root` (the loss) with
    respect to the `trainable` initializers. Only output 0 of a node is differentiable
    (a Split runs as one node per output, `split_parts`)."""
    nodes = [part for n in nodes for part in split_parts(n)]
    requires = set(trainable)
    for n in nodes:
        if any(v in requires for v in n.inputs):
            requires.add(n.outputs[0])
    live = {root}
    backward, need = [], {}
    for n in reversed(nodes):
        if n.outputs[0] in live and n.outputs[0] in requires:
            backward.append(n)
            need[n.name] = tuple(
                v in requires and i not in n.no_grad for i, v in enumerate(n.inputs)
            )
            live.update(v for v, f in zip(n.inputs, need[n.name], strict=True) if f)
    return Schedule(tuple(nodes), tuple(backward), need)
