"""Launch configuration and device helpers shared by the CUDA kernel modules.

Elementwise kernels use grid-stride loops, so a launch's grid can be capped: on a GPU
the cap is far above what a Jetson fills; under the CUDA simulator (one Python thread per
CUDA thread) blocks are small and few, which keeps tests fast without changing results.
Reductions run one block per output value and sum through shared memory (`tree_sum`).

Tensors of rank <= 4 reach kernels as 4-D views plus a `swap` flag (`as4`): with swap
set, logical index (i0, i1, i2, i3) lives at stored [i1, i0, i2, i3], which is how the
runtime stores rank-4 activations (channel-major, see runtime/bound.py). Broadcast
operands index a size-1 axis at 0 (`bidx`).
"""

from __future__ import annotations

import math

import numba
from numba import cuda

SIM = bool(numba.config.ENABLE_CUDASIM)
THREADS = 8 if SIM else 256  # threads per block; a power of two (tree_sum)
MAX_BLOCKS = 2 if SIM else 4096  # grid cap of grid-stride kernels
TILE = 4 if SIM else 16  # square tile of the shared-memory matmul


def blocks(n: int) -> int:
    """Blocks of THREADS threads for a grid-stride loop over n items."""
    return max(1, min(math.ceil(n / THREADS), MAX_BLOCKS))


def as4(a, swap: bool = False):
    """(4-D view, swap) of a contiguous device array of rank <= 4; `swap` marks a
    channel-major stored rank-4 tensor. Lower ranks gain leading axes of size 1."""
    if a.ndim > 4:
        raise ValueError(f"CUDA kernels take tensors of rank <= 4, got shape {a.shape}")
    if a.ndim == 4:
        return a, bool(swap)
    return a.reshape((1,) * (4 - a.ndim) + tuple(a.shape)), False


def logical4(a4, swap: bool) -> tuple[int, int, int, int]:
    """Logical shape of a 4-D view."""
    s = a4.shape
    return (s[1], s[0], s[2], s[3]) if swap else (s[0], s[1], s[2], s[3])


@cuda.jit(device=True, inline=True)
def ld4(a, swap, i0, i1, i2, i3):
    """a at logical (i0, i1, i2, i3)."""
    if swap:
        return a[i1, i0, i2, i3]
    return a[i0, i1, i2, i3]


@cuda.jit(device=True, inline=True)
def st4(a, swap, i0, i1, i2, i3, v):
    """a at logical (i0, i1, i2, i3) = v."""
    if swap:
        a[i1, i0, i2, i3] = v
    else:
        a[i0, i1, i2, i3] = v


@cuda.jit(device=True, inline=True)
def bidx(i, size):
    """Index i into an axis of `size` under broadcasting (size 1 -> 0)."""
    return i if size > 1 else 0


@cuda.jit(device=True, inline=True)
def unravel4(k, d1, d2, d3):
    """C-order (i0, i1, i2, i3) of flat index k in a shape (., d1, d2, d3)."""
    i3 = k % d3
    k //= d3
    i2 = k % d2
    k //= d2
    return k // d1, k % d1, i2, i3


@cuda.jit(device=True, inline=True)
def tap(o_pos, k, stride, dil, pad, size):
    """Input coordinate that output o_pos reads at window tap k, or -1 outside [0, size)."""
    i = o_pos * stride + k * dil - pad
    return i if 0 <= i < size else -1


@cuda.jit(device=True, inline=True)
def source_of(i_pos, k, stride, dil, pad, n_out):
    """Output coordinate whose window tap k reads input i_pos, or -1 when none does."""
    q = i_pos + pad - k * dil
    if q < 0 or q % stride:
        return -1
    q //= stride
    return q if q < n_out else -1


@cuda.jit(device=True)
def tree_sum(buf, tid):
    """Sum of buf[0:THREADS] (shared, one value per thread); every thread gets it."""
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if tid < step:
            buf[tid] += buf[tid + step]
        cuda.syncthreads()
        step //= 2
    total = buf[0]
    cuda.syncthreads()
    return total
