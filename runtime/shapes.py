"""Output shapes of the supported ONNX ops, and the attribute parsing they share with the
op implementations (convolution/pool geometry, slices, pads)."""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from .errors import UnsupportedOpError
from .graph import Node
from .kernels.conv import ConvGeom

Shape = tuple[int, ...]


def unsupported(node: Node, why: str) -> UnsupportedOpError:
    """The error for a node the runtime cannot run, naming its op type and name."""
    return UnsupportedOpError(f"{node.op_type} node {node.name!r}: {why}")


def const(node: Node, consts: list, i: int, what: str) -> np.ndarray | None:
    """The value of optional input i, which must be an initializer or Constant."""
    if i >= len(node.inputs) or not node.inputs[i]:
        return None
    if consts[i] is None:
        raise unsupported(node, f"{what} (input {i}) must be an initializer or Constant")
    return consts[i]


@cache
def geometry(node: Node, x_shape: Shape, kernel: tuple[int, int]) -> ConvGeom:
    """ConvGeom of a Conv/MaxPool/AveragePool node over an input of x_shape (NCHW)."""
    if len(x_shape) != 4:
        raise unsupported(node, f"only 2-D (NCHW) inputs are supported, found {x_shape}")
    if 0 in node.persistent:
        raise unsupported(node, "input 0 must be computed from the graph input, not constant")
    a = node.attrs
    kh, kw = a.get("kernel_shape", kernel)
    sh, sw = a.get("strides", (1, 1))
    dh, dw = a.get("dilations", (1, 1))
    pt, pl, pb, pr = a.get("pads", (0, 0, 0, 0))
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        (pt, pb), (pl, pr) = (
            _same_pads(x_shape[2], kh, sh, dh, auto),
            _same_pads(x_shape[3], kw, sw, dw, auto),
        )
    elif auto == "VALID":
        pt = pl = pb = pr = 0
    ceil = bool(a.get("ceil_mode", 0))
    return ConvGeom(kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, a.get("group", 1), ceil)


def _same_pads(size: int, k: int, s: int, d: int, mode: str) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    small = total // 2
    return (small, total - small) if mode == "SAME_UPPER" else (total - small, small)


def conv(node: Node, ins: list, consts: list) -> list[Shape]:
    x, w = ins[0], ins[1]
    if 1 not in node.persistent:
        raise unsupported(node, "the weight (input 1) must be an initializer")
    g = geometry(node, x, (w[2], w[3]))
    if x[1] != w[1] * g.groups or w[0] % g.groups:
        raise unsupported(node, f"input {x} does not fit weight {w} with group={g.groups}")
    return [(x[0], w[0], *g.out_hw(x[2], x[3]))]


def pool(node: Node, ins: list, consts: list) -> list[Shape]:
    x = ins[0]
    if "kernel_shape" not in node.attrs:
        raise unsupported(node, "kernel_shape is required")
    if len(node.outputs) > 1 and node.outputs[1]:
        raise unsupported(node, "the Indices output is not supported")
    if node.attrs.get("storage_order", 0):
        raise unsupported(node, "storage_order=1 is not supported")
    g = geometry(node, x, (1, 1))
    return [(x[0], x[1], *g.out_hw(x[2], x[3]))]


def global_pool(node: Node, ins: list, consts: list) -> list[Shape]:
    x = ins[0]
    return [(x[0], x[1]) + (1,) * (len(x) - 2)]


def same(node: Node, ins: list, consts: list) -> list[Shape]:
    if node.op_type == "Dropout" and len(node.outputs) > 1 and node.outputs[1]:
        raise unsupported(node, "the mask output is not supported")
    return [ins[0]]


def clip_bounds(node: Node, consts: list) -> tuple[float, float]:
    """(min, max) of a Clip node, from its constant inputs (-inf, inf where absent)."""
    bounds = []
    for i, what, default in ((1, "min", -math.inf), (2, "max", math.inf)):
        default = node.attrs.get(what, default)  # opset < 11: bounds as attributes
        v = const(node, consts, i, what)
        if v is not None and v.size != 1:
            raise unsupported(node, f"{what} must be a scalar, found shape {v.shape}")
        bounds.append(default if v is None else float(v.reshape(())))
    return bounds[0], bounds[1]


def clip(node: Node, ins: list, consts: list) -> list[Shape]:
    clip_bounds(node, consts)
    return [ins[0]]


def prelu(node: Node, ins: list, consts: list) -> list[Shape]:
    """PRelu with one slope, or one per channel (axis 1), as an initializer."""
    x, s = ins[0], ins[1]
    if 1 not in node.persistent:
        raise unsupported(node, "the slope (input 1) must be an initializer")
    core = tuple(s[next((i for i, d in enumerate(s) if d != 1), len(s)) :])
    per_channel = len(x) >= 2 and len(core) == len(x) - 1 and math.prod(core) == core[0] == x[1]
    if math.prod(s) != 1 and not per_channel:
        raise unsupported(node, f"slope {s} must be a scalar or per channel of input {x}")
    return [x]


def broadcast(node: Node, ins: list, consts: list) -> list[Shape]:
    try:
        return [tuple(np.broadcast_shapes(ins[0], ins[1]))]
    except ValueError as e:
        raise unsupported(node, f"shapes {ins[0]} and {ins[1]} do not broadcast") from e


def gemm(node: Node, ins: list, consts: list) -> list[Shape]:
    a, b = ins[0], ins[1]
    if len(a) != 2 or len(b) != 2:
        raise unsupported(node, f"operands must be 2-D, found {a} and {b}")
    m, k = a[::-1] if node.attrs.get("transA", 0) else a
    k2, n = b[::-1] if node.attrs.get("transB", 0) else b
    if k != k2:
        raise unsupported(node, f"inner sizes differ: {a} and {b}")
    return [(m, n)]


def matmul(node: Node, ins: list, consts: list) -> list[Shape]:
    a, b = ins[0], ins[1]
    if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
        raise unsupported(node, f"operands {a} and {b} must be >= 2-D with matching inner size")
    return [(*np.broadcast_shapes(a[:-2], b[:-2]), a[-2], b[-1])]


def flatten(node: Node, ins: list, consts: list) -> list[Shape]:
    x = ins[0]
    axis = node.attrs.get("axis", 1) % (len(x) + 1) if x else 0
    return [(math.prod(x[:axis]), math.prod(x[axis:]))]


def reshape(node: Node, ins: list, consts: list) -> list[Shape]:
    x = ins[0]
    spec = [int(v) for v in const(node, consts, 1, "shape")]
    if not node.attrs.get("allowzero", 0):
        spec = [x[i] if v == 0 else v for i, v in enumerate(spec)]
    if spec.count(-1) > 1:
        raise unsupported(node, f"shape {spec} has more than one -1")
    known = math.prod(v for v in spec if v != -1)
    out = tuple(math.prod(x) // known if v == -1 else v for v in spec)
    if math.prod(out) != math.prod(x):
        raise unsupported(node, f"cannot reshape {x} to {spec}")
    return [out]


def pad_slices(node: Node, x: Shape, consts: list) -> tuple[Shape, tuple, tuple]:
    """(output shape, region of x kept, where it lands in the output) of a Pad node."""
    if node.attrs.get("mode", "constant") != "constant":
        raise unsupported(node, f"mode {node.attrs['mode']!r} is not supported (constant only)")
    pads = [int(v) for v in const(node, consts, 1, "pads")]
    axes = const(node, consts, 3, "axes")
    axes = [int(a) % len(x) for a in axes] if axes is not None else list(range(len(x)))
    before, after = [0] * len(x), [0] * len(x)
    for i, a in enumerate(axes):
        before[a], after[a] = pads[i], pads[i + len(axes)]
    out = tuple(d + b + e for d, b, e in zip(x, before, after, strict=True))
    src = tuple(slice(max(-b, 0), d - max(-e, 0)) for d, b, e in zip(x, before, after, strict=True))
    dst = tuple(slice(max(b, 0), o - max(e, 0)) for o, b, e in zip(out, before, after, strict=True))
    return out, src, dst


def pad(node: Node, ins: list, consts: list) -> list[Shape]:
    return [pad_slices(node, ins[0], consts)[0]]


def slice_index(node: Node, x: Shape, consts: list) -> tuple[Shape, tuple]:
    """(output shape, numpy index) of a Slice node, with ONNX clamping rules."""
    starts = const(node, consts, 1, "starts")
    ends = const(node, consts, 2, "ends")
    axes = const(node, consts, 3, "axes")
    steps = const(node, consts, 4, "steps")
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * len(x)
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        index[int(a) % len(x)] = _onnx_slice(int(s), int(e), int(st), x[int(a) % len(x)])
    shape = tuple(len(range(*sl.indices(d))) for sl, d in zip(index, x, strict=True))
    return shape, tuple(index)


def _onnx_slice(start: int, end: int, step: int, dim: int) -> slice:
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


def slice_(node: Node, ins: list, consts: list) -> list[Shape]:
    return [slice_index(node, ins[0], consts)[0]]


def concat(node: Node, ins: list, consts: list) -> list[Shape]:
    axis = node.attrs["axis"] % len(ins[0])
    out = list(ins[0])
    out[axis] = sum(s[axis] for s in ins)
    return [tuple(out)]


def batchnorm(node: Node, ins: list, consts: list) -> list[Shape]:
    c = (ins[0][1],)
    return [ins[0], c, c][: len(node.outputs)]


def xent(node: Node, ins: list, consts: list) -> list[Shape]:
    if node.attrs.get("reduction", "mean") not in ("mean", "sum"):
        raise unsupported(node, "reduction must be 'mean' or 'sum'")
    if len(ins[0]) != 2 or ins[1] != ins[0][:1]:
        raise unsupported(node, f"expected scores [N, K] and labels [N], found {ins[:2]}")
    return [()]
