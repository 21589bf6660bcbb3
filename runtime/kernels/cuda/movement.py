"""Data movement on CUDA between logical (ONNX) views of stored tensors of rank <= 4,
each given as (array, channel-major flag) (see launch.as4), mirroring
runtime/kernels/movement.py: a reshaping copy (Flatten, Reshape, Identity, Dropout) and
a strided window copy between numpy basic indices (Slice, Pad, Concat and their
backward); n-d copies of rank <= 6 (`_copy_nd`: Transpose, ReduceMean's backward,
reshapes to and from rank 5) and the mean over any axes (`_mean_nd`, one thread per
output)."""

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
    if src.ndim > 4 or dst.ndim > 4:
        (ss, st), (ds, dt) = _nd(src, src_cm), _nd(dst, dst_cm)
        if math.prod(ss) != math.prod(ds):
            raise ValueError(f"reshape_copy: {src.shape} and {dst.shape} differ in size")
        _launch_copy(src, dst, ss, st, ds, dt)
        return
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


R = 6  # the highest rank the n-d copies take


@cuda.jit(cache=True)
def _copy_nd(src, dst, n, sshape, sstr, dshape, dstr, scale):  # pragma: no cover
    """dst at the k-th element of (dshape, dstr) = scale * src at the k-th of (sshape,
    sstr), for k < n: flat arrays, shapes and strides (elements) padded to rank R."""
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
        rs, rd, so, do = k, k, 0, 0
        for d in range(R - 1, -1, -1):
            so += (rs % sshape[d]) * sstr[d]
            rs //= sshape[d]
            do += (rd % dshape[d]) * dstr[d]
            rd //= dshape[d]
        dst[do] = src[so] * scale


@cuda.jit(cache=True)
def _mean_nd(src, dst, n, oshape, ostr, dstr, rshape, m, scale):  # pragma: no cover
    """dst[output k] = scale * sum of src over the reduced block (rshape, ostr) at the
    output's corner (oshape, ostr), one thread per output."""
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
        r, base, do = k, 0, 0
        for d in range(R - 1, -1, -1):
            base += (r % oshape[d]) * ostr[d]
            do += (r % oshape[d]) * dstr[d]
            r //= oshape[d]
        acc = 0.0
        for j in range(m):
            q, off = j, base
            for d in range(R - 1, -1, -1):
                off += (q % rshape[d]) * ostr[d]
                q //= rshape[d]
            acc += src[off]
        dst[do] = acc * scale


def _nd(a, cm: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(logical shape, logical strides in elements) of a stored C-contiguous array."""
    shape, strides = list(a.shape), [1] * a.ndim
    for d in range(a.ndim - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    if cm:
        shape[0], shape[1], strides[0], strides[1] = shape[1], shape[0], strides[1], strides[0]
    return tuple(shape), tuple(strides)


def _padR(values, fill: int) -> tuple[int, ...]:
    if len(values) > R:
        raise ValueError(f"CUDA n-d copies take tensors of rank <= {R}, got {len(values)}")
    return (fill,) * (R - len(values)) + tuple(int(v) for v in values)


def _launch_copy(src, dst, sshape, sstr, dshape, dstr, scale: float = 1.0) -> None:
    n = math.prod(dshape)
    args = (_padR(sshape, 1), _padR(sstr, 0), _padR(dshape, 1), _padR(dstr, 0))
    _copy_nd[blocks(n), THREADS](src.reshape(-1), dst.reshape(-1), n, *args, scale)


def permute_copy(src, src_cm: bool, dst, dst_cm: bool, perm: tuple[int, ...]) -> None:
    """Logical dst = logical src with its axes permuted (numpy's transpose(perm))."""
    (ss, st), (ds, dt) = _nd(src, src_cm), _nd(dst, dst_cm)
    shape, strides = tuple(ss[p] for p in perm), tuple(st[p] for p in perm)
    _launch_copy(src, dst, shape, strides, ds, dt)


def _kept(shape, strides, rank: int, axes) -> tuple[tuple, tuple]:
    """A reduction output's shape and strides with the reduced axes kept (size 1)."""
    if len(shape) == rank:
        return shape, strides
    rest = iter(zip(shape, strides, strict=True))
    pairs = [(1, 0) if d in axes else next(rest) for d in range(rank)]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def reduce_mean(src, src_cm: bool, dst, dst_cm: bool, axes: tuple[int, ...]) -> None:
    """Logical dst = mean of logical src over `axes` (dst with or without those axes)."""
    (ss, st), (ds, dt) = _nd(src, src_cm), _nd(dst, dst_cm)
    ds, dt = _kept(ds, dt, len(ss), axes)
    kept = tuple(1 if d in axes else s for d, s in enumerate(ss))
    reduced = tuple(s if d in axes else 1 for d, s in enumerate(ss))
    n, m = math.prod(kept), math.prod(reduced)
    args = (_padR(kept, 1), _padR(st, 0), _padR(dt, 0), _padR(reduced, 1), m, 1.0 / m)
    _mean_nd[blocks(n), THREADS](src.reshape(-1), dst.reshape(-1), n, *args)


def reduce_mean_bwd(gy, gy_cm: bool, gx, gx_cm: bool, axes: tuple[int, ...]) -> None:
    """Logical gx = gy spread evenly over `axes` (overwrites gx)."""
    (ys, yt), (xs, xt) = _nd(gy, gy_cm), _nd(gx, gx_cm)
    ys, yt = _kept(ys, yt, len(xs), axes)
    strides = tuple(0 if d in axes else t for d, t in enumerate(yt))
    _launch_copy(gy, gx, xs, strides, xs, xt, gy.size / gx.size)
