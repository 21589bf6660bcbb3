"""Parameter groups: which trainable initializer is a factor weight, a bias, a BatchNorm
scale or shift, or part of the classifier head, read from the graph (so every export,
old or new, and every in-memory model has them), and the per-group learning-rate
multipliers `TrainingSession(lr_groups=...)` takes.

    head     inputs 1 and 2 (weight, bias) of the graph's last Gemm: the classifier
    bn       inputs 1 and 2 (scale, shift) of a BatchNormalization
    bias     input 2 of a Conv or Gemm, or an initializer added by Add/Sub (a MatMul's bias)
    factors  every other trainable initializer (factor weights, a trainable dense weight)

A multiplier scales the base learning rate of its group's tensors (a schedule sets the
base, so it applies to all); a group left out keeps multiplier 1.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from .errors import FactoEdgeError
from .graph import Graph

GROUPS = ("factors", "bias", "bn", "head")


def param_groups(graph: Graph) -> dict[str, str]:
    """The group of every trainable initializer of `graph`, in trainable order."""
    role: dict[str, str] = {}
    gemms = [n for n in graph.nodes if n.op_type == "Gemm"]
    for node in graph.nodes:
        if node.op_type == "BatchNormalization":
            role.update({v: "bn" for v in node.inputs[1:3]})
        elif node.op_type in ("Conv", "Gemm", "DeltaConv") and len(node.inputs) > 2:
            role.setdefault(node.inputs[2], "bias")
        elif node.op_type in ("Add", "Sub"):
            role.update({v: "bias" for v in node.inputs if v in graph.initializers})
    if gemms:
        role.update({v: "head" for v in gemms[-1].inputs[1:3] if v})
    return {name: role.get(name, "factors") for name in graph.trainable}


def check_lr_groups(lr_groups: Mapping[str, float] | None) -> dict[str, float]:
    """`lr_groups` as a plain dict, or FactoEdgeError naming the first unknown group or
    multiplier that is not a finite number >= 0."""
    if lr_groups is None:
        return {}
    if not isinstance(lr_groups, Mapping):
        raise FactoEdgeError(
            f"lr_groups must map groups ({', '.join(GROUPS)}) to multipliers, found {lr_groups!r}"
        )
    for group, value in lr_groups.items():
        if group not in GROUPS:
            raise FactoEdgeError(
                f"unknown learning-rate group {group!r}; the groups are {', '.join(GROUPS)}"
            )
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not (ok and math.isfinite(value) and value >= 0):
            raise FactoEdgeError(
                f"the learning-rate multiplier of {group!r} must be a finite number >= 0, "
                f"found {value!r}"
            )
    return {group: float(value) for group, value in lr_groups.items()}


def lr_scales(groups: Mapping[str, str], lr_groups: Mapping[str, float]) -> dict[str, float]:
    """The learning-rate multiplier of every tensor: its group's, else 1."""
    return {name: lr_groups.get(group, 1.0) for name, group in groups.items()}
