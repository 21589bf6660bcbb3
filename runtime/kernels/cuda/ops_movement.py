"""Forward and backward of the data-movement ops on CUDA (Flatten, Reshape, Identity,
Dropout, Pad, Slice, Concat), mirroring runtime/ops_movement.py over device arrays: each
stored array travels with its channel-major flag instead of a numpy logical view."""

from __future__ import annotations

from ... import shapes
from ...bound import Bound
from .elementwise import fill
from .movement import reshape_copy, slices_at, window_copy, window_shape


def _whole(rank: int) -> list[tuple[int, int]]:
    return [(0, 1)] * rank


def copy_fwd(b: Bound, training: bool) -> None:
    reshape_copy(b.x[0], b.site.cm_in(0), b.y[0], b.site.cm_out(0))


def copy_bwd(b: Bound) -> None:
    if b.gx[0] is not b.gy:  # gy itself: the executor shared the buffer
        reshape_copy(b.gy, b.site.cm_out(0), b.gx[0], b.site.cm_in(0))


def _pad_windows(b: Bound):
    x_shape = b.site.ins[0]
    out, src, dst = shapes.pad_slices(b.site.node, x_shape, b.site.consts)
    return window_shape(src, x_shape), slices_at(src, x_shape), slices_at(dst, out)


def pad_fwd(b: Bound, training: bool) -> None:
    shape, src_at, dst_at = _pad_windows(b)
    value = shapes.const(b.site.node, b.site.consts, 2, "constant_value")
    fill(b.y[0], 0.0 if value is None else float(value))
    window_copy(b.x[0], b.site.cm_in(0), b.y[0], b.site.cm_out(0), shape, src_at, dst_at)


def pad_bwd(b: Bound) -> None:
    shape, src_at, dst_at = _pad_windows(b)
    fill(b.gx[0], 0.0)
    window_copy(b.gy, b.site.cm_out(0), b.gx[0], b.site.cm_in(0), shape, dst_at, src_at)


def _slice_window(b: Bound):
    shape, index = shapes.slice_index(b.site.node, b.site.ins[0], b.site.consts)
    return shape, slices_at(index, b.site.ins[0])


def slice_fwd(b: Bound, training: bool) -> None:
    shape, at = _slice_window(b)
    window_copy(b.x[0], b.site.cm_in(0), b.y[0], b.site.cm_out(0), shape, at, _whole(len(shape)))


def slice_bwd(b: Bound) -> None:
    shape, at = _slice_window(b)
    fill(b.gx[0], 0.0)
    window_copy(b.gy, b.site.cm_out(0), b.gx[0], b.site.cm_in(0), shape, _whole(len(shape)), at)


def _concat_parts(b: Bound):
    """(input position, its shape, where it lands in the output) of each input."""
    rank = len(b.site.outs[0])
    axis = b.site.node.attrs["axis"] % rank
    start = 0
    for i, shape in enumerate(b.site.ins):
        at = _whole(rank)
        at[axis] = (start, 1)
        yield i, shape, at
        start += shape[axis]


def concat_fwd(b: Bound, training: bool) -> None:
    cm = b.site.cm_out(0)
    for i, shape, at in _concat_parts(b):
        window_copy(b.x[i], b.site.cm_in(i), b.y[0], cm, shape, _whole(len(shape)), at)


def concat_bwd(b: Bound) -> None:
    cm = b.site.cm_out(0)
    for i, shape, at in _concat_parts(b):
        if b.gx[i] is not None:
            window_copy(b.gy, cm, b.gx[i], b.site.cm_in(i), shape, at, _whole(len(shape)))
