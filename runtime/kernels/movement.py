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
