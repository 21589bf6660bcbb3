"""Pointwise activation kernels on CUDA, mirroring runtime/kernels/activation.py: the
same math (activation_math.py, compiled as device functions), 1-D grid-stride loops, the
1-bit masks of LeakyRelu and HardSigmoid, and PRelu with its per-channel slope gradient
summed one block per channel.

Swish and Sigmoid on float32 run in float32 as on the CPU: the CPU's exp (Cephes' expf
polynomial, activation_math.exp_split) with 2^t from ldexp, the argument clamped to
exp's normal float32 range, and the CPU's formulas, so both backends agree to a few ulp.
The generic path would compute them in float64 (its attributes are float64)."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

from .. import activation_math as M
from ..activation import _check, _f32
from .launch import THREADS, blocks, tree_sum

_value = cuda.jit(device=True, inline=True)(M.value)
_slope = cuda.jit(device=True, inline=True)(M.slope)
_inside = cuda.jit(device=True, inline=True)(M.inside)
_exp_split = cuda.jit(device=True, inline=True)(M.exp_split)


@cuda.jit(cache=True)
def _fwd(x, y, kind, a, b):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        y[i] = _value(x[i], kind, a, b)


@cuda.jit(cache=True)
def _bwd(x, gy, gx, kind, a, b):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        gx[i] = gy[i] * _slope(x[i], kind, a, b)


@cuda.jit(device=True, inline=True)
def _one_plus_exp_neg(v, a):  # pragma: no cover - compiled
    """1 + exp(-a * v) in float32."""
    u = min(max(-a * v, float32(M.EXP_MIN)), float32(M.EXP_MAX))
    t, p = _exp_split(u)
    return float32(1.0) + float32(math.ldexp(p, int(t)))


@cuda.jit(cache=True)
def _logistic_fwd(x, y, a, swish):  # pragma: no cover - compiled
    """y = x * sigmoid(a x) (swish) or sigmoid(x) (a is 1), float32."""
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        y[i] = (v if swish else float32(1.0)) / _one_plus_exp_neg(v, a)


@cuda.jit(cache=True)
def _logistic_bwd(x, gy, gx, a, swish):  # pragma: no cover - compiled
    one = float32(1.0)
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        g = one / _one_plus_exp_neg(v, a)
        gx[i] = gy[i] * ((g + a * v * g * (one - g)) if swish else g * (one - g))


def _logistic(kind: int, a: float, *arrays) -> tuple | None:
    """(a, swish) for the float32 kernels when `kind` is Swish or Sigmoid on float32
    arrays; None for the generic path."""
    if kind not in (M.SWISH, M.SIGMOID) or not _f32(*arrays):
        return None
    return np.float32(a if kind == M.SWISH else 1.0), kind == M.SWISH


@cuda.jit(cache=True)
def _mask_fwd(x, y, bits, kind, a, b):  # pragma: no cover - compiled
    n = x.size
    for byte in range(cuda.grid(1), (n + 7) // 8, cuda.gridsize(1)):
        acc = 0
        for k in range(min(8, n - 8 * byte)):
            v = x[8 * byte + k]
            y[8 * byte + k] = _value(v, kind, a, b)
            if _inside(v, kind, a, b):
                acc |= 1 << k
        bits[byte] = acc


@cuda.jit(cache=True)
def _mask_bwd(bits, gy, gx, on, off):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), gy.size, cuda.gridsize(1)):
        gx[i] = gy[i] * (on if (bits[i // 8] >> (i % 8)) & 1 else off)


@cuda.jit(cache=True)
def _prelu_fwd(x, slope, y, nc, inner):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        y[i] = v if v > 0 else v * slope[(i // inner) % nc]


@cuda.jit(cache=True)
def _prelu_bwd_input(x, slope, gy, gx, nc, inner):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        gx[i] = gy[i] if v > 0 else gy[i] * slope[(i // inner) % nc]


@cuda.jit(cache=True)
def _prelu_bwd_slope(x, gy, gs, nc, inner):  # pragma: no cover - compiled
    buf = cuda.shared.array(THREADS, float64)
    tid = cuda.threadIdx.x
    count = x.size // nc
    for c in range(cuda.blockIdx.x, nc, cuda.gridDim.x):
        acc = float64(0.0)
        for q in range(tid, count, THREADS):
            i = ((q // inner) * nc + c) * inner + q % inner
            if x[i] <= 0:
                acc += gy[i] * x[i]
        buf[tid] = acc
        total = tree_sum(buf, tid)
        if tid == 0:
            gs[c] = total


def activation_fwd(x, y, kind: int, a: float, b: float) -> None:
    """y = f(x) for activation `kind` (activation_math) with attributes a, b; 1-D."""
    _check(x, y)
    fast = _logistic(kind, a, x, y)
    if fast:
        _logistic_fwd[blocks(x.size), THREADS](x, y, *fast)
    else:
        _fwd[blocks(x.size), THREADS](x, y, kind, float(a), float(b))


def activation_bwd(x, gy, gx, kind: int, a: float, b: float) -> None:
    """gx = gy * f'(x), 1-D (gx may be gy)."""
    _check(x, gy, gx)
    fast = _logistic(kind, a, x, gy, gx)
    if fast:
        _logistic_bwd[blocks(x.size), THREADS](x, gy, gx, *fast)
    else:
        _bwd[blocks(x.size), THREADS](x, gy, gx, kind, float(a), float(b))


def activation_mask_fwd(x, y, bits, kind: int, a: float, b: float) -> None:
    """y = f(x) and the 1-bit mask of where x lies in f's first linear piece, 1-D."""
    _check(x, y)
    if bits.size != (x.size + 7) // 8:
        raise ValueError(f"mask of {x.size} elements needs {(x.size + 7) // 8} bytes")
    _mask_fwd[blocks((x.size + 7) // 8), THREADS](x, y, bits, kind, float(a), float(b))


def mask_select_bwd(bits, gy, gx, on: float, off: float) -> None:
    """gx = gy * (on where the mask bit is set, else off), 1-D (gx may be gy)."""
    _check(gy, gx)
    _mask_bwd[blocks(gy.size), THREADS](bits, gy, gx, np.float32(on), np.float32(off))


def prelu_fwd(x, slope, y, inner: int) -> None:
    """y = x where x > 0, else slope[c] * x, for x flat with channel c = (i // inner) %
    slope.size (slope.size 1: one slope for all)."""
    _check(x, y)
    _prelu_fwd[blocks(x.size), THREADS](x, slope.reshape(-1), y, slope.size, inner)


def prelu_bwd(x, slope, gy, gx, gslope, inner: int) -> None:
    """gx (1-D, may be gy) and gslope[c] = sum of gy * x over channel c where x <= 0;
    either may be None."""
    _check(x, gy, *([] if gx is None else [gx]))
    if gslope is not None:
        n = gslope.size
        _prelu_bwd_slope[min(n, 4096), THREADS](x, gy, gslope.reshape(-1), n, inner)
    if gx is not None:
        _prelu_bwd_input[blocks(x.size), THREADS](x, slope.reshape(-1), gy, gx, slope.size, inner)
