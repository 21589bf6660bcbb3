"""Forward and backward of the ops that only move data: Flatten, Reshape, Identity,
Dropout (an identity when training here), Pad (constant), Slice and Concat. They work on
logical (ONNX) views, so the channel-major storage of rank-4 tensors is invisible here."""

from __future__ import annotations

import numpy as np

from . import shapes
from .bound import Bound


def _copy_reshaped(dst: np.ndarray, src: np.ndarray) -> None:
    """dst = src reshaped (logical views), reshaping whichever side is contiguous."""
    if dst.shape == src.shape:
        np.copyto(dst, src)
    elif dst.flags.c_contiguous:
        np.copyto(dst.reshape(src.shape), src)
    else:
        np.copyto(dst, src.reshape(dst.shape))


def copy_fwd(b: Bound, training: bool) -> None:
    _copy_reshaped(b.ly(), b.lx(0))


def copy_bwd(b: Bound) -> None:
    if b.gx[0] is not b.gy:  # gy itself: the executor shared the buffer
        _copy_reshaped(b.lgx(0), b.lgy())


def pad_fwd(b: Bound, training: bool) -> None:
    _, src, dst = shapes.pad_slices(b.site.node, b.site.ins[0], b.site.consts)
    value = shapes.const(b.site.node, b.site.consts, 2, "constant_value")
    b.y[0].fill(0.0 if value is None else float(value))
    np.copyto(b.ly()[dst], b.lx(0)[src])


def pad_bwd(b: Bound) -> None:
    _, src, dst = shapes.pad_slices(b.site.node, b.site.ins[0], b.site.consts)
    b.gx[0].fill(0.0)
    np.copyto(b.lgx(0)[src], b.lgy()[dst])


def slice_fwd(b: Bound, training: bool) -> None:
    _, index = shapes.slice_index(b.site.node, b.site.ins[0], b.site.consts)
    np.copyto(b.ly(), b.lx(0)[index])


def slice_bwd(b: Bound) -> None:
    _, index = shapes.slice_index(b.site.node, b.site.ins[0], b.site.consts)
    b.gx[0].fill(0.0)
    np.copyto(b.lgx(0)[index], b.lgy())


def _concat_parts(b: Bound):
    axis = b.site.node.attrs["axis"] % len(b.site.outs[0])
    start = 0
    for i, shape in enumerate(b.site.ins):
        yield i, (slice(None),) * axis + (slice(start, start + shape[axis]),)
        start += shape[axis]


def concat_fwd(b: Bound, training: bool) -> None:
    for i, index in _concat_parts(b):
        np.copyto(b.ly()[index], b.lx(i))


def concat_bwd(b: Bound) -> None:
    for i, index in _concat_parts(b):
        if b.gx[i] is not None:
            np.copyto(b.lgx(i), b.lgy()[index])
