"""Data movement on CUDA between logical (ONNX) views of stored tensors of rank <= 4,
each given as (array, channel-major flag) (see launch.as4), mirroring
runtime/kernels/movement.py: a reshaping copy (Flatten, Reshape, Identity, Dropout) and
a strided window copy between numpy basic indices (Slice, Pad, Concat and their
backward)."""

from __future__ import annotations

import math

from numba import cuda

from .launch import THREADS, as4, blocks, ld4, logical4, st4, unravel4


@cuda.jit(cache=True)
def _reshape_copy(src, ss, dst, ds, s1, s2, s3, d1, d2, d3):  # pragma: no cover
    for k in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        i0, i1, i2, i3 = unravel4(k, s1, s2, s3)
        j0, j1, j2, j3 = unravel4(k, d1, d2, d3)
        st4(dst, ds, j0, j1, j2, j3, ld4(src, ss, i0, i1, i2, i3))


@cuda.jit(cache=True)
def _window_copy(src, ss, dst, ds, shape, os, st, od, sd):  # pragma: no cover
    n = shape[0] * shape[1] * shape[2] * shape[3]
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
        i0, i1, i2, i3 = unravel4(k, shape[1], shape[2], shape[3])
        a0, a1 = os[0] + i0 * st[0], os[1] + i1 * st[1]
        a2, a3 = os[2] + i2 * st[2], os[3] + i3 * st[3]
        b0, b1 = od[0] + i0 * sd[0], od[1] + i1 * sd[1]
        b2, b3 = od[2] + i2 * sd[2], od[3] + i3 * sd[3]
        st4(dst, ds, b0, b1, b2, b3, ld4(src, ss, a0, a1, a2, a3))


def reshape_copy(src, src_cm: bool, dst, dst_cm: bool) -> None:
    """Logical dst = logical src reshaped (same number of elements, C order)."""
    (s4, src_cm), (d4, dst_cm) = as4(src, src_cm), as4(dst, dst_cm)
    ls, ld = logical4(s4, src_cm), logical4(d4, dst_cm)
    if math.prod(ls) != math.prod(ld):
        raise ValueError(f"reshape_copy: {src.shape} and {dst.shape} differ in size")
    args = (s4, src_cm, d4, dst_cm, *ls[1:], *ld[1:])
    _reshape_copy[blocks(dst.size), THREADS](*args)


def _pad4(values, fill: int) -> tuple[int, int, int, int]:
    return (fill,) * (4 - len(values)) + tuple(int(v) for v in values)


def _at4(at) -> tuple[tuple, tuple]:
    """Per-axis (start, step) pairs -> (starts, steps), padded to 4 axes."""
    starts, steps = zip(*at, strict=True) if at else ((), ())
    return _pad4(starts, 0), _pad4(steps, 1)


def window_copy(src, src_cm: bool, dst, dst_cm: bool, src_index=None, dst_index=None) -> None:
    """Logical dst[dst_index] = logical src[src_index], each index a tuple of slices (a
    numpy basic index; None: the whole tensor), rank <= 4."""
    ls, ld = _logical_shape(src, src_cm), _logical_shape(dst, dst_cm)
    shape = _window_shape(src_index, ls) if src_index is not None else ls
    (s4, src_cm), (d4, dst_cm) = as4(src, src_cm), as4(dst, dst_cm)
    shape4 = _pad4(shape, 1)
    (os_, ss_), (od_, sd_) = _at4(_slices_at(src_index, ls)), _at4(_slices_at(dst_index, ld))
    args = (s4, src_cm, d4, dst_cm, shape4, os_, ss_, od_, sd_)
    _window_copy[blocks(math.prod(shape4)), THREADS](*args)


def _logical_shape(a, cm: bool) -> tuple[int, ...]:
    s = tuple(a.shape)
    return (s[1], s[0], *s[2:]) if cm else s


def _slices_at(index, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """(start, step) per axis of `shape` under a numpy basic index of slices (None: all)."""
    index = () if index is None else index
    at = [sl.indices(d)[::2] for sl, d in zip(index, shape, strict=False)]
    return at + [(0, 1)] * (len(shape) - len(at))


def _window_shape(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of `shape` indexed by the slices of `index`."""
    window = [len(range(*sl.indices(d))) for sl, d in zip(index, shape, strict=False)]
    return (*window, *shape[len(window) :])
