"""Patterns of the loaded graph fused into one op, so that backward keeps one tensor
instead of one per step: x * sigmoid(x) becomes one Swish (SiLU) node keeping only x,
the erf form of GELU that torch.onnx writes (x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5,
with the 0.5 applied at any of the three places) becomes one Gelu node, and nn.GroupNorm
as both torch.onnx exporters write it at opset 17 (Reshape to [N, G, -1] ->
InstanceNormalization with unit scale and zero bias -> Reshape back -> Mul by the
per-channel weight -> Add of the bias; the Mul and Add are absent where onnxslim found
a weight of ones or a bias of zeros) becomes one GroupNormalization node (opset 21's
per-channel scale and bias). A pattern fuses
only where its intermediate values feed nothing else and are no graph output; the fused
node takes the name and output of the pattern's last node and runs where it ran.

A `--train delta` layer, Add(Conv(x, W), last(z)) with z = core(first(x)) (or z =
first(x), SVD) and W, first, core frozen, becomes one DeltaConv node (z, last, bias, x,
W, chain) computing Conv(x, W + last . chain) + bias: one convolution forward and one for
x's gradient instead of the dense one plus last's (and first's and core's backward), the
update's weights composed per step (`chain` = core . first, composed once here as a new
initializer `<core weight>.composed`, or `first` itself). first and core still run
forward for z, which DeltaConv keeps for last's gradient as `last` kept it, and sends no
gradient (`Node.no_grad`): x's covers the chain. The fused node takes the name of `last`
(its saved input keeps its name) and the Add's output, and runs where the Add ran."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from .graph import Node


class _View:
    """Who produces and who consumes each value, the initializers and which train."""

    def __init__(
        self, nodes: list[Node], inits: dict, outputs: set[str], trainable: frozenset[str]
    ) -> None:
        self.producer = {v: n for n in nodes for v in n.outputs if v}
        self.consumers: dict[str, list[Node]] = defaultdict(list)
        for n in nodes:
            for v in n.inputs:
                self.consumers[v].append(n)
        self.inits, self.outputs, self.trainable = inits, outputs, trainable

    def sole(self, value: str, op_type: str) -> Node | None:
        """The one node reading `value`, if of `op_type` and value is no graph output."""
        users = self.consumers.get(value, [])
        if value in self.outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]

    def scalar(self, value: str) -> float | None:
        a = self.inits.get(value)
        return float(np.asarray(a).reshape(-1)[0]) if a is not None and a.size == 1 else None

    def other(self, node: Node, value: str) -> str | None:
        """The input of binary `node` that is not `value` (None unless binary with it)."""
        ins = list(node.inputs)
        if len(ins) != 2 or value not in ins:
            return None
        ins.remove(value)
        return ins[0]

    def times_const(self, node: Node | None, c: float) -> str | None:
        """x, when `node` is Mul(x, c) (either order)."""
        if node is None or node.op_type != "Mul":
            return None
        for i in (0, 1):
            v = self.scalar(node.inputs[i])
            if v is not None and math.isclose(v, c, rel_tol=1e-6):
                return node.inputs[1 - i]
        return None


def fuse(
    nodes: list[Node], inits: dict, outputs: set[str], trainable: frozenset[str] = frozenset()
) -> list[Node]:
    """`nodes` with every SiLU, erf-GELU, GroupNorm and delta-conv pattern replaced by
    one node; a delta conv's composed chain is added to `inits`."""
    view = _View(nodes, inits, outputs, trainable)
    replaced: dict[int, Node | None] = {}  # id(node) -> its replacement (None: dropped)
    for n in nodes:
        if id(n) in replaced:
            continue
        match = _silu(view, n) if n.op_type == "Sigmoid" else None
        match = match or (_gelu(view, n) if n.op_type == "Erf" else None)
        match = match or (_groupnorm(view, n) if n.op_type == "InstanceNormalization" else None)
        match = match or (_delta(view, n) if n.op_type == "Add" else None)
        if match is None:
            continue
        group, fused = match
        replaced.update(dict.fromkeys(map(id, group[:-1])))
        replaced[id(group[-1])] = fused
    out = [replaced.get(id(n), n) for n in nodes]
    return [n for n in out if n is not None]


def _fused(op_type: str, x: str, last: Node, attrs: dict, params: tuple[str, ...] = ()) -> Node:
    """The node replacing a pattern; `params` are initializer inputs after x ('' absent)."""
    persistent = frozenset(i + 1 for i, p in enumerate(params) if p)
    return Node(op_type, last.name, (x, *params), (last.outputs[0],), attrs, persistent)


def _silu(view: _View, sig: Node) -> tuple[list[Node], Node] | None:
    """Sigmoid(x) read only by Mul(x, sigmoid(x))."""
    x, s = sig.inputs[0], sig.outputs[0]
    mul = view.sole(s, "Mul")
    if mul is None or view.other(mul, s) != x or x in view.inits:
        return None
    return [sig, mul], _fused("Swish", x, mul, {"alpha": 1.0})


def _gelu(view: _View, erf: Node) -> tuple[list[Node], Node] | None:
    """Erf(x / sqrt 2) + 1, times x and 0.5 in any grouping."""
    scaled = view.producer.get(erf.inputs[0])
    if scaled is None or len(view.consumers[scaled.outputs[0]]) != 1:
        return None
    x = view.times_const(scaled, 1 / math.sqrt(2))
    if scaled.op_type == "Div" and _near(view.scalar(scaled.inputs[1]), math.sqrt(2)):
        x = scaled.inputs[0]
    add = view.sole(erf.outputs[0], "Add")
    if (
        x is None
        or x in view.inits
        or add is None
        or not _near(view.scalar(view.other(add, erf.outputs[0])), 1)
    ):
        return None
    a = add.outputs[0]
    m1 = view.sole(a, "Mul")
    if m1 is None:
        return None
    b = view.other(m1, a)
    group = [scaled, erf, add, m1]
    if b == x:  # (x * a) * 0.5
        m2 = view.sole(m1.outputs[0], "Mul")
        if view.times_const(m2, 0.5) != m1.outputs[0]:
            return None
        return [*group, m2], _fused("Gelu", x, m2, {})
    if _near(view.scalar(b), 0.5):  # x * (a * 0.5)
        m2 = view.sole(m1.outputs[0], "Mul")
        if m2 is None or view.other(m2, m1.outputs[0]) != x:
            return None
        return [*group, m2], _fused("Gelu", x, m2, {})
    half = view.producer.get(b)  # (x * 0.5) * a
    if view.times_const(half, 0.5) != x or len(view.consumers[b]) != 1 or b in view.outputs:
        return None
    return [half, *group], _fused("Gelu", x, m1, {})


def _groupnorm(view: _View, norm: Node) -> tuple[list[Node], Node] | None:
    """Reshape(x, [0, G, -1]) -> InstanceNormalization(ones, zeros) -> Reshape(x's shape),
    then optionally Mul(weight) and Add(bias), each an initializer of one value per channel."""
    into = view.producer.get(norm.inputs[0])
    if into is None or into.op_type != "Reshape" or len(norm.inputs) != 3:
        return None
    groups, unit, zero = (view.inits.get(v) for v in (into.inputs[1], *norm.inputs[1:]))
    if groups is None or groups.size != 3 or into.inputs[0] in view.inits:
        return None
    if unit is None or zero is None or np.any(unit != 1) or np.any(zero != 0):
        return None
    back = view.sole(norm.outputs[0], "Reshape")
    if view.sole(into.outputs[0], "InstanceNormalization") is not norm or back is None:
        return None
    shape = view.inits.get(back.inputs[1])
    if shape is None or shape.size < 3 or shape.reshape(-1)[1] <= 0:
        return None
    attrs = {
        "num_groups": int(groups.reshape(-1)[1]),
        "epsilon": float(norm.attrs.get("epsilon", 1e-5)),
        "shape": [int(d) for d in shape.reshape(-1)],
    }
    group, params, last = [into, norm, back], ["", ""], back
    for slot, op_type in ((0, "Mul"), (1, "Add")):
        step = view.sole(last.outputs[0], op_type)
        p = None if step is None else view.other(step, last.outputs[0])
        if p is None or not _per_channel(view.inits.get(p), attrs["shape"]):
            continue
        group.append(step)
        params[slot], last = p, step
    return group, _fused("GroupNormalization", into.inputs[0], last, attrs, tuple(params))


_CONV_DEFAULTS = {"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1), "group": 1,
                  "auto_pad": "NOTSET"}  # fmt: skip


def _conv_attrs(node: Node) -> dict:
    """A 2-D Conv's geometry attributes with ONNX's defaults filled in (kernel_shape aside)."""
    return {k: tuple(v) if isinstance(v, list | tuple) else v
            for k, v in ((k, node.attrs.get(k, d)) for k, d in _CONV_DEFAULTS.items())}  # fmt: skip


def _frozen_conv(view: _View, node: Node | None, x: str | None = None) -> str | None:
    """The weight of `node` when it is a bias-less Conv with a frozen 4-D initializer
    weight (reading `x`, if given), else None."""
    if node is None or node.op_type != "Conv" or len(node.inputs) > 2 and node.inputs[2]:
        return None
    w = node.inputs[1]
    a = view.inits.get(w)
    if a is None or a.ndim != 4 or w in view.trainable or (x and node.inputs[0] != x):
        return None
    return w if node.inputs[0] not in view.inits else None


def _pointwise(node: Node) -> bool:
    """Whether a Conv is 1x1 with no stride, padding, dilation or groups."""
    kernel = node.attrs.get("kernel_shape", (1, 1))
    return _conv_attrs(node) == _CONV_DEFAULTS and all(k == 1 for k in kernel)


def _delta(view: _View, add: Node) -> tuple[list[Node], Node] | None:
    """Add(Conv(x, W), Conv(z, last, bias)), z = core(first(x)) or first(x), see above."""
    if len(add.inputs) != 2:
        return None
    for d_out, l_out in (add.inputs, add.inputs[::-1]):
        dense, last = view.producer.get(d_out), view.producer.get(l_out)
        if dense is None or last is None or last.op_type != "Conv" or not _pointwise(last):
            continue
        x, w, lw = dense.inputs[0], _frozen_conv(view, dense), view.inits.get(last.inputs[1])
        if w is None or lw is None or lw.ndim != 4 or _conv_attrs(dense)["group"] != 1:
            continue
        factors = _chain(view, last.inputs[0], x, dense)
        if factors is None or view.inits[factors[0]].shape[0] != lw.shape[1]:
            continue
        if view.inits[w].shape[0] != lw.shape[0] or last.inputs[0] in view.inits:
            continue
        if any(view.sole(v, "Add") is None for v in (d_out, l_out)):
            continue
        bias = last.inputs[2] if len(last.inputs) > 2 else ""
        inputs = (last.inputs[0], last.inputs[1], bias, x, w, _composed(view, *factors))
        persistent = frozenset(i for i, v in enumerate(inputs) if v in view.inits)
        attrs = {**dense.attrs, "kernel_shape": tuple(view.inits[w].shape[2:])}
        fused = Node("DeltaConv", last.name, inputs, add.outputs[:1], attrs, persistent,
                     no_grad=frozenset({0}))  # fmt: skip
        return [dense, last, add], fused
    return None


def _chain(view: _View, z: str, x: str, dense: Node) -> tuple[str, str | None] | None:
    """(core's weight, first's) when z = core(first(x)), core of dense's geometry and
    first 1x1; (first's weight, None) when z = first(x), first of dense's geometry (SVD,
    dense 1x1); None otherwise. All frozen, each step's output read only by the next."""
    step = view.producer.get(z)
    wz = _frozen_conv(view, step)
    if wz is None or view.sole(z, "Conv") is None or _conv_attrs(step) != _conv_attrs(dense):
        return None
    if view.inits[wz].shape[2:] != view.inits[dense.inputs[1]].shape[2:]:
        return None
    if step.inputs[0] == x:
        return wz, None
    first = view.producer.get(step.inputs[0])
    first_w = _frozen_conv(view, first, x)
    if first_w is None or not _pointwise(first) or view.sole(step.inputs[0], "Conv") is None:
        return None
    return (wz, first_w) if view.inits[wz].shape[1] == view.inits[first_w].shape[0] else None


def _composed(view: _View, core: str, first: str | None) -> str:
    """The initializer of core . first, [R_out, C_in, kh, kw] (added), or core alone."""
    if first is None:
        return core
    name = f"{core}.composed"
    c, f = (view.inits[v].astype(np.float64) for v in (core, first))
    view.inits[name] = np.einsum("rskl,si->rikl", c, f[:, :, 0, 0]).astype(np.float32)
    return name


def _per_channel(a: np.ndarray | None, shape: list[int]) -> bool:
    """Whether `a` broadcasts against a tensor of `shape` as one value per channel."""
    if a is None or a.ndim > len(shape):
        return False
    full = (1,) * (len(shape) - a.ndim) + a.shape
    return full[1] == shape[1] and all(d == 1 for i, d in enumerate(full) if i != 1)


def _near(v: float | None, target: float) -> bool:
    return v is not None and math.isclose(v, target, rel_tol=1e-5)
