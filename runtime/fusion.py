"""Patterns of the loaded graph fused into one op, so that backward keeps one tensor
instead of one per step: x * sigmoid(x) becomes one Swish (SiLU) node keeping only x, and
the erf form of GELU that torch.onnx writes (x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5,
with the 0.5 applied at any of the three places) becomes one Gelu node. A pattern fuses
only where its intermediate values feed nothing else and are no graph output; the fused
node takes the name and output of the pattern's last node and runs where it ran."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from .graph import Node


class _View:
    """Who produces and who consumes each value, and the scalar initializers."""

    def __init__(self, nodes: list[Node], inits: dict, outputs: set[str]) -> None:
        self.producer = {v: n for n in nodes for v in n.outputs if v}
        self.consumers: dict[str, list[Node]] = defaultdict(list)
        for n in nodes:
            for v in n.inputs:
                self.consumers[v].append(n)
        self.inits, self.outputs = inits, outputs

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


def fuse(nodes: list[Node], inits: dict, outputs: set[str]) -> list[Node]:
    """`nodes` with every SiLU and erf-GELU pattern replaced by one node."""
    view = _View(nodes, inits, outputs)
    replaced: dict[int, Node | None] = {}  # id(node) -> its replacement (None: dropped)
    for n in nodes:
        if id(n) in replaced:
            continue
        match = _silu(view, n) if n.op_type == "Sigmoid" else None
        match = match or (_gelu(view, n) if n.op_type == "Erf" else None)
        if match is None:
            continue
        group, fused = match
        replaced.update(dict.fromkeys(map(id, group[:-1])))
        replaced[id(group[-1])] = fused
    out = [replaced.get(id(n), n) for n in nodes]
    return [n for n in out if n is not None]


def _fused(op_type: str, x: str, last: Node, attrs: dict) -> Node:
    return Node(op_type, last.name, (x,), (last.outputs[0],), attrs)


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


def _near(v: float | None, target: float) -> bool:
    return v is not None and math.isclose(v, target, rel_tol=1e-5)
