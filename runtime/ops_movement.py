"""Forward and backward of the ops that only move data: Flatten, Reshape, Squeeze,
Unsqueeze, Identity, Dropout (an identity when training here), Pad (constant), Slice,
Concat, Split (one node per output, see graph.split_parts), Transpose, and ReduceMean
(a mean is a scaled sum: its backward spreads gy, keeping nothing). They hand
the movement kernels (`k.movement`) stored arrays with their channel-major flags and
numpy basic indices into the logical (ONNX) views."""

from __future__ import annotations

from . import shapes
from .bound import Bound
from .kernels import Kernels


def copy_fwd(k: Kernels, b: Bound, training: bool) -> None:
    k.movement.reshape_copy(b.x[0], b.site.cm_in(0), b.y[0], b.site.cm_out(0))


def copy_bwd(k: Kernels, b: Bound) -> None:
    if b.gx[0] is not b.gy:  # gy itself: the executor shared the buffer
        k.movement.reshape_copy(b.gy, b.site.cm_out(0), b.gx[0], b.site.cm_in(0))


def pad_fwd(k: Kernels, b: Bound, training: bool) -> None:
    s = b.site
    _, src, dst = shapes.pad_slices(s.node, s.ins[0], s.consts)
    value = shapes.const(s.node, s.consts, 2, "constant_value")
    k.elementwise.fill(b.y[0], 0.0 if value is None else float(value))
    k.movement.window_copy(b.x[0], s.cm_in(0), b.y[0], s.cm_out(0), src, dst)


def pad_bwd(k: Kernels, b: Bound) -> None:
    s = b.site
    _, src, dst = shapes.pad_slices(s.node, s.ins[0], s.consts)
    k.elementwise.fill(b.gx[0], 0.0)
    k.movement.window_copy(b.gy, s.cm_out(0), b.gx[0], s.cm_in(0), dst, src)


def slice_fwd(k: Kernels, b: Bound, training: bool) -> None:
    s = b.site
    _, index = shapes.slice_index(s.node, s.ins[0], s.consts)
    k.movement.window_copy(b.x[0], s.cm_in(0), b.y[0], s.cm_out(0), index, None)


def slice_bwd(k: Kernels, b: Bound) -> None:
    s = b.site
    _, index = shapes.slice_index(s.node, s.ins[0], s.consts)
    k.elementwise.fill(b.gx[0], 0.0)
    k.movement.window_copy(b.gy, s.cm_out(0), b.gx[0], s.cm_in(0), None, index)


def _concat_parts(b: Bound):
    """(input position, where it lands in the output as a numpy index) of each input."""
    axis = b.site.node.attrs["axis"] % len(b.site.outs[0])
    start = 0
    for i, shape in enumerate(b.site.ins):
        yield i, (slice(None),) * axis + (slice(start, start + shape[axis]),)
        start += shape[axis]


def concat_fwd(k: Kernels, b: Bound, training: bool) -> None:
    cm = b.site.cm_out(0)
    for i, index in _concat_parts(b):
        k.movement.window_copy(b.x[i], b.site.cm_in(i), b.y[0], cm, None, index)


def concat_bwd(k: Kernels, b: Bound) -> None:
    cm = b.site.cm_out(0)
    for i, index in _concat_parts(b):
        if b.gx[i] is not None:
            k.movement.window_copy(b.gy, cm, b.gx[i], b.site.cm_in(i), index, None)


def transpose_fwd(k: Kernels, b: Bound, training: bool) -> None:
    s = b.site
    perm = shapes.perm(s.node, s.ins[0])
    k.movement.permute_copy(b.x[0], s.cm_in(0), b.y[0], s.cm_out(0), perm)


def transpose_bwd(k: Kernels, b: Bound) -> None:
    s = b.site
    inverse = tuple(sorted(range(len(s.ins[0])), key=shapes.perm(s.node, s.ins[0]).__getitem__))
    k.movement.permute_copy(b.gy, s.cm_out(0), b.gx[0], s.cm_in(0), inverse)


def mean_fwd(k: Kernels, b: Bound, training: bool) -> None:
    s = b.site
    axes = shapes.reduce_axes(s.node, s.ins[0], s.consts)
    k.movement.reduce_mean(b.x[0], s.cm_in(0), b.y[0], s.cm_out(0), axes)


def mean_bwd(k: Kernels, b: Bound) -> None:
    s = b.site
    axes = shapes.reduce_axes(s.node, s.ins[0], s.consts)
    k.movement.reduce_mean_bwd(b.gy, s.cm_out(0), b.gx[0], s.cm_in(0), axes)


def _split_index(s) -> tuple:
    """Where output `part` of a one-output Split node (graph.split_parts) lies in x."""
    axis, sizes = shapes.split_sizes(s.node, s.ins[0], s.consts)
    part = s.node.attrs["part"]
    start = sum(sizes[:part])
    return (slice(None),) * axis + (slice(start, start + sizes[part]),)


def split_fwd(k: Kernels, b: Bound, training: bool) -> None:
    s = b.site
    k.movement.window_copy(b.x[0], s.cm_in(0), b.y[0], s.cm_out(0), _split_index(s), None)


def split_bwd(k: Kernels, b: Bound) -> None:
    s = b.site
    k.elementwise.fill(b.gx[0], 0.0)
    k.movement.window_copy(b.gy, s.cm_out(0), b.gx[0], s.cm_in(0), None, _split_index(s))
