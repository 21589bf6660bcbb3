"""Data movement between logical (ONNX) views of stored tensors, each given as (array,
channel-major flag) (kernels/layout.py): a reshaping copy (Flatten, Reshape, Identity,
Dropout) and a window copy between numpy basic indices (Slice, Pad, Concat and their
backward). numpy copies through the views; cuda/movement.py has the same functions."""

from __future__ import annotations

import numpy as np

from .layout import logical


def reshape_copy(src, src_cm: bool, dst, dst_cm: bool) -> None:
    """Logical dst = logical src reshaped (same number of elements, C order), reshaping
    whichever side is contiguous."""
    src, dst = logical(src, src_cm), logical(dst, dst_cm)
    if dst.shape == src.shape:
        np.copyto(dst, src)
    elif dst.flags.c_contiguous:
        np.copyto(dst.reshape(src.shape), src)
    else:
        np.copyto(dst, src.reshape(dst.shape))


def window_copy(src, src_cm: bool, dst, dst_cm: bool, src_index=None, dst_index=None) -> None:
    """Logical dst[dst_index] = logical src[src_index], each index a tuple of slices (a
    numpy basic index; None: the whole tensor)."""
    src, dst = logical(src, src_cm), logical(dst, dst_cm)
    if src_index is not None:
        src = src[src_index]
    np.copyto(dst if dst_index is None else dst[dst_index], src)


def permute_copy(src, src_cm: bool, dst, dst_cm: bool, perm: tuple[int, ...]) -> None:
    """Logical dst = logical src with its axes permuted (numpy's transpose(perm))."""
    np.copyto(logical(dst, dst_cm), logical(src, src_cm).transpose(perm))


def _kept(a: np.ndarray, rank: int, axes: tuple[int, ...]) -> np.ndarray:
    """A view of a reduction's output with the reduced axes kept (size 1)."""
    return a if a.ndim == rank else np.expand_dims(a, axes)


def reduce_mean(src, src_cm: bool, dst, dst_cm: bool, axes: tuple[int, ...]) -> None:
    """Logical dst = mean of logical src over `axes` (dst with or without those axes)."""
    x = logical(src, src_cm)
    y = _kept(logical(dst, dst_cm), x.ndim, axes)
    np.add.reduce(x, axis=axes, keepdims=True, out=y)
    np.multiply(y, np.float32(y.size / x.size), out=y)


def reduce_mean_bwd(gy, gy_cm: bool, gx, gx_cm: bool, axes: tuple[int, ...]) -> None:
    """Logical gx = gy spread evenly over `axes` (overwrites gx)."""
    g = logical(gx, gx_cm)
    gk = _kept(logical(gy, gy_cm), g.ndim, axes)
    np.multiply(gk, np.float32(gk.size / g.size), out=g)
