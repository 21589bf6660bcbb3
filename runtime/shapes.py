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


def _as_2d(a: dict) -> dict:
    """The attributes of a 1-D Conv/pool node as those of its 2-D twin over H=1."""
    lifted = {key: a[key] for key in ("auto_pad", "ceil_mode", "group") if key in a}
    for key, one in (("kernel_shape", 1), ("strides", 1), ("dilations", 1)):
        if key in a:
            lifted[key] = (one, *a[key])
    if "pads" in a:
        lifted["pads"] = (0, a["pads"][0], 0, a["pads"][1])
    return lifted


@cache
def geometry(node: Node, x_shape: Shape, kernel: tuple[int, ...]) -> ConvGeom:
    """ConvGeom of a Conv/MaxPool/AveragePool node over an input of x_shape: NCHW, or
    NCL (1-D), which runs as its 2-D twin over H=1."""
    if len(x_shape) not in (3, 4):
        raise unsupported(
            node, f"only 1-D (NCL) and 2-D (NCHW) inputs are supported, found {x_shape}"
        )
    if 0 in node.persistent:
        raise unsupported(node, "input 0 must be computed from the graph input, not constant")
    a = node.attrs
    if len(x_shape) == 3:
        a, x_shape, kernel = _as_2d(a), (*x_shape[:2], 1, x_shape[2]), (1, *kernel[-1:])
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
    if len(w) != len(x):
        raise unsupported(node, f"input {x} and weight {w} differ in rank")
    g = geometry(node, x, tuple(w[2:]))
    if x[1] != w[1] * g.groups or w[0] % g.groups:
        raise unsupported(node, f"input {x} does not fit weight {w} with group={g.groups}")
    return [(x[0], w[0], *spatial_out(g, x))]


def spatial_out(g: ConvGeom, x: Shape) -> Shape:
    """Output spatial sizes of a Conv/pool of geometry g over x (NCL or NCHW)."""
    if len(x) == 3:
        return (g.out_hw(1, x[2])[1],)
    return g.out_hw(x[2], x[3])


def pool(node: Node, ins: list, consts: list) -> list[Shape]:
    x = ins[0]
    if "kernel_shape" not in node.attrs:
        raise unsupported(node, "kernel_shape is required")
    if len(node.outputs) > 1 and node.outputs[1]:
        raise unsupported(node, "the Indices output is not supported")
    if node.attrs.get("storage_order", 0):
        raise unsupported(node, "storage_order=1 is not supported")
    g = geometry(node, x, (1, 1))
    return [(x[0], x[1], *spatial_out(g, x))]


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


def _axes(node: Node, consts: list, rank: int, i: int = 1) -> list[int] | None:
    """The axes of a Reduce/Squeeze/Unsqueeze node (input i or attribute), normalized to
    [0, rank), sorted; None where it gives none."""
    v = const(node, consts, i, "axes")
    axes = node.attrs.get("axes") if v is None else [int(a) for a in v.reshape(-1)]
    return None if axes is None else sorted({int(a) % rank for a in axes})


def perm(node: Node, x: Shape) -> tuple[int, ...]:
    """The permutation of a Transpose node (reversed axes by default)."""
    p = tuple(int(a) % len(x) for a in node.attrs.get("perm", range(len(x) - 1, -1, -1)))
    if sorted(p) != list(range(len(x))):
        raise unsupported(node, f"perm {p} is not a permutation of the axes of {x}")
    return p


def transpose(node: Node, ins: list, consts: list) -> list[Shape]:
    return [tuple(ins[0][a] for a in perm(node, ins[0]))]


def reduce_axes(node: Node, x: Shape, consts: list) -> tuple[int, ...]:
    """The axes a ReduceMean node averages over (all when it names none)."""
    axes = _axes(node, consts, len(x))
    if not axes and node.attrs.get("noop_with_empty_axes", 0):
        raise unsupported(node, "noop_with_empty_axes=1 with no axes is not supported")
    return tuple(range(len(x))) if not axes else tuple(axes)


def reduce_mean(node: Node, ins: list, consts: list) -> list[Shape]:
    x, axes = ins[0], reduce_axes(node, ins[0], consts)
    if node.attrs.get("keepdims", 1):
        return [tuple(1 if i in axes else d for i, d in enumerate(x))]
    return [tuple(d for i, d in enumerate(x) if i not in axes)]


def split_sizes(node: Node, x: Shape, consts: list) -> tuple[int, list[int]]:
    """(axis, size of each output) of a Split node."""
    axis = node.attrs.get("axis", 0) % len(x)
    v = const(node, consts, 1, "split")
    sizes = node.attrs.get("split") if v is None else [int(s) for s in v]
    n = node.attrs.get("num_outputs", len(node.outputs))
    if sizes is None:
        n = node.attrs.get("num_outputs", n)
        part = -(-x[axis] // n)
        sizes = [min(part, x[axis] - i * part) for i in range(n)]
    if sum(sizes) != x[axis] or len(sizes) != n or min(sizes) < 0:
        raise unsupported(node, f"split {sizes} does not cut axis {axis} of {x} into {n} parts")
    return axis, [int(s) for s in sizes]


def split(node: Node, ins: list, consts: list) -> list[Shape]:
    x = ins[0]
    axis, sizes = split_sizes(node, x, consts)
    outs = [(*x[:axis], s, *x[axis + 1 :]) for s in sizes]
    return outs[node.attrs["part"] : node.attrs["part"] + 1] if "part" in node.attrs else outs


def squeeze(node: Node, ins: list, consts: list) -> list[Shape]:
    x = ins[0]
    axes = _axes(node, consts, len(x))
    axes = [i for i, d in enumerate(x) if d == 1] if axes is None else axes
    if any(x[a] != 1 for a in axes):
        raise unsupported(node, f"cannot squeeze axes {axes} of {x}: not all of size 1")
    return [tuple(d for i, d in enumerate(x) if i not in axes)]


def unsqueeze(node: Node, ins: list, consts: list) -> list[Shape]:
    x = ins[0]
    v = const(node, consts, 1, "axes")
    rank = len(x) + len(node.attrs.get("axes", ()) if v is None else v.reshape(-1))
    axes, rest = _axes(node, consts, rank), iter(x)
    return [tuple(1 if i in axes else next(rest) for i in range(rank))]


def norm_axis(node: Node, x: Shape) -> int:
    """First normalized axis of a LayerNormalization node (it normalizes axis..last)."""
    axis = node.attrs.get("axis", -1) % len(x)
    if len(x) == 4 and axis < 2:
        raise unsupported(node, f"axis {axis} of a rank-4 input is not supported (2 or 3 are)")
    return axis


def layernorm(node: Node, ins: list, consts: list) -> list[Shape]:
    if any(node.outputs[1:]):
        raise unsupported(node, "the Mean and InvStdDev outputs are not supported")
    x = ins[0]
    axis = norm_axis(node, x)
    for i in (1, 2):
        if i < len(ins) and ins[i] is not None and math.prod(ins[i]) != math.prod(x[axis:]):
            raise unsupported(node, f"input {i} of shape {ins[i]} does not match {x[axis:]}")
    return [x]


def softmax(node: Node, ins: list, consts: list) -> list[Shape]:
    return [ins[0]]


def groupnorm(node: Node, ins: list, consts: list) -> list[Shape]:
    """GroupNormalization (opset 21: per-channel scale and bias) and InstanceNormalization
    of an [N, C, ...] input; a fused node's `shape` (torch.onnx's Reshape back to the
    input's shape) must give the input's shape."""
    x = ins[0]
    if len(x) < 3:
        raise unsupported(node, f"expected an [N, C, ...] input, found shape {x}")
    groups = x[1] if node.op_type == "InstanceNormalization" else node.attrs.get("num_groups", 0)
    if groups <= 0 or x[1] % groups:
        raise unsupported(node, f"num_groups {groups} does not divide the {x[1]} channels")
    for i in (1, 2):
        if i < len(ins) and ins[i] is not None and math.prod(ins[i]) != x[1]:
            raise unsupported(
                node, f"input {i} of shape {ins[i]} must hold one value per channel ({x[1]})"
            )
    back = node.attrs.get("shape")
    if back is not None:
        other = [d for d, n in zip(back, x, strict=False) if d not in (0, n)]
        if len(back) != len(x) or other not in ([], [-1]):  # 0 or the same size, one -1
            raise unsupported(node, f"its output Reshape to {list(back)} changes the shape {x}")
    return [x]
