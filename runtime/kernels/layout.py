"""How the CPU kernels see stored arrays: a rank-4 activation is stored channel-major,
[C, N, H, W] (see runtime/bound.py); `logical` gives its ONNX (NCHW) view, and
`as_channel_major` views any operand in the stored layout of rank-4 activations, so
that numpy can combine them elementwise. The CUDA kernels take the same flags
(cuda/launch.py, `as4`)."""

from __future__ import annotations

import numpy as np


def logical(a: np.ndarray, stored_channel_major: bool) -> np.ndarray:
    """The ONNX (NCHW) view of a stored array."""
    return a.swapaxes(0, 1) if stored_channel_major else a


def as_channel_major(a: np.ndarray, stored_channel_major: bool) -> np.ndarray:
    """A view of `a` to combine elementwise with rank-4 channel-major arrays: lower ranks
    are broadcast up to 4 (numpy rules) and their first two axes swapped."""
    if stored_channel_major:
        return a
    return a.reshape((1,) * (4 - a.ndim) + a.shape).swapaxes(0, 1)
