"""Pointwise activation kernels (Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu, Elu,
Gelu, Swish/SiLU, Erf) and PRelu, 1-D over stored arrays (the layout does not matter to a
pointwise op). The math is activation_math.py's, shared with the CUDA twin
(cuda/activation.py). Backward recomputes f'(x) from the kept input; the
piecewise-linear ones (LeakyRelu, HardSigmoid) keep a 1-bit mask instead, in the layout
of `codecs.mask_encode` (element i in bit i % 8 of byte i // 8)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import activation_math as M
from .dispatch import kernel

_value = njit(cache=True, inline="always")(M.value)
_slope = njit(cache=True, inline="always")(M.slope)
_inside = njit(cache=True, inline="always")(M.inside)


@kernel
def _fwd(x, y, kind, a, b):  # pragma: no cover - compiled
    for i in prange(x.size):
        y[i] = _value(x[i], kind, a, b)


@kernel
def _bwd(x, gy, gx, kind, a, b):  # pragma: no cover - compiled
    for i in prange(x.size):
        gx[i] = gy[i] * _slope(x[i], kind, a, b)


# Swish and Sigmoid in float32, vectorized: the generic path above runs their exp in
# float64 behind a sign branch, one libm call per element (EfficientNet's Swish was 3/4 of
# its step). These compute exp(-a * x) block by block with Cephes' expf polynomial
# (about 1 ulp) and 2^k assembled from its exponent bits, loops that LLVM vectorizes:
# 10x faster than the generic path (activation_math.exp_split). The argument is clamped
# to [-87, 88], exp's normal float32 range, so s = 1 / (1 + e) is at most 1.2e-38 away
# from its limits.
_F32_MATH = {"nsz", "arcp", "contract", "afn"}
_BLOCK = 2048


_exp_split = njit(cache=True, inline="always", fastmath=_F32_MATH)(M.exp_split)


@njit(cache=True, inline="always", fastmath=_F32_MATH)
def _exp_neg(x, s, m, a, kbuf, e):  # pragma: no cover - compiled
    """e[j] = exp(-a * x[s + j]) for j < m (kbuf: int32 scratch of e's size)."""
    for j in range(m):
        u = min(max(-a * x[s + j], np.float32(M.EXP_MIN)), np.float32(M.EXP_MAX))
        t, e[j] = _exp_split(u)
        kbuf[j] = (np.int32(t) + np.int32(127)) << np.int32(23)
    pow2 = kbuf.view(np.float32)
    for j in range(m):
        e[j] *= pow2[j]


@kernel(fastmath=_F32_MATH)
def _swish_fwd(x, y, a):  # pragma: no cover - compiled
    one = np.float32(1.0)
    for blk in prange((x.size + _BLOCK - 1) // _BLOCK):
        kbuf, e = np.empty(_BLOCK, np.int32), np.empty(_BLOCK, np.float32)
        s = blk * _BLOCK
        m = min(_BLOCK, x.size - s)
        _exp_neg(x, s, m, a, kbuf, e)
        for j in range(m):
            y[s + j] = x[s + j] / (one + e[j])


@kernel(fastmath=_F32_MATH)
def _swish_bwd(x, gy, gx, a):  # pragma: no cover - compiled
    one = np.float32(1.0)
    for blk in prange((x.size + _BLOCK - 1) // _BLOCK):
        kbuf, e = np.empty(_BLOCK, np.int32), np.empty(_BLOCK, np.float32)
        s = blk * _BLOCK
        m = min(_BLOCK, x.size - s)
        _exp_neg(x, s, m, a, kbuf, e)
        for j in range(m):
            g = one / (one + e[j])
            gx[s + j] = gy[s + j] * (g + a * x[s + j] * g * (one - g))


@kernel(fastmath=_F32_MATH)
def _sigmoid_fwd(x, y):  # pragma: no cover - compiled
    one = np.float32(1.0)
    for blk in prange((x.size + _BLOCK - 1) // _BLOCK):
        kbuf, e = np.empty(_BLOCK, np.int32), np.empty(_BLOCK, np.float32)
        s = blk * _BLOCK
        m = min(_BLOCK, x.size - s)
        _exp_neg(x, s, m, one, kbuf, e)
        for j in range(m):
            y[s + j] = one / (one + e[j])


@kernel(fastmath=_F32_MATH)
def _sigmoid_bwd(x, gy, gx):  # pragma: no cover - compiled
    one = np.float32(1.0)
    for blk in prange((x.size + _BLOCK - 1) // _BLOCK):
        kbuf, e = np.empty(_BLOCK, np.int32), np.empty(_BLOCK, np.float32)
        s = blk * _BLOCK
        m = min(_BLOCK, x.size - s)
        _exp_neg(x, s, m, one, kbuf, e)
        for j in range(m):
            g = one / (one + e[j])
            gx[s + j] = gy[s + j] * g * (one - g)


def _f32(*arrays) -> bool:
    return all(a.dtype == np.float32 for a in arrays)


@kernel
def _mask_fwd(x, y, bits, kind, a, b):  # pragma: no cover - compiled
    n = x.size
    for byte in prange((n + 7) // 8):
        acc = np.uint8(0)
        for k in range(min(8, n - 8 * byte)):
            v = x[8 * byte + k]
            y[8 * byte + k] = _value(v, kind, a, b)
            if _inside(v, kind, a, b):
                acc |= np.uint8(1) << np.uint8(k)
        bits[byte] = acc


@kernel
def _mask_bwd(bits, gy, gx, on, off):  # pragma: no cover - compiled
    for i in prange(gy.size):
        gx[i] = gy[i] * (on if (bits[i // 8] >> (i % 8)) & 1 else off)


@kernel
def _prelu_fwd(x, slope, y, nc, inner):  # pragma: no cover - compiled
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else v * slope[(i // inner) % nc]


@kernel
def _prelu_bwd_input(x, slope, gy, gx, nc, inner):  # pragma: no cover - compiled
    for i in prange(x.size):
        v = x[i]
        gx[i] = gy[i] if v > 0 else gy[i] * slope[(i // inner) % nc]


@kernel
def _prelu_bwd_slope(x, gy, gs, nc, inner):  # pragma: no cover - compiled
    outer = x.size // (nc * inner)
    for c in prange(nc):
        acc = 0.0
        for o in range(outer):
            for j in range(inner):
                i = (o * nc + c) * inner + j
                if x[i] <= 0:
                    acc += gy[i] * x[i]
        gs[c] = acc


def _check(*arrays) -> None:
    n = arrays[0].size
    for a in arrays:
        if a.ndim != 1 or a.size != n:
            raise ValueError(
                f"expected 1-D arrays of {n} elements, got {[x.shape for x in arrays]}"
            )


def activation_fwd(x, y, kind: int, a: float, b: float) -> None:
    """y = f(x) for activation `kind` (activation_math) with attributes a, b; 1-D."""
    _check(x, y)
    if kind == M.SWISH and _f32(x, y):
        _swish_fwd(x, y, np.float32(a))
    elif kind == M.SIGMOID and _f32(x, y):
        _sigmoid_fwd(x, y)
    else:
        _fwd(x, y, kind, float(a), float(b))


def activation_bwd(x, gy, gx, kind: int, a: float, b: float) -> None:
    """gx = gy * f'(x), 1-D (gx may be gy)."""
    _check(x, gy, gx)
    if kind == M.SWISH and _f32(x, gy, gx):
        _swish_bwd(x, gy, gx, np.float32(a))
    elif kind == M.SIGMOID and _f32(x, gy, gx):
        _sigmoid_bwd(x, gy, gx)
    else:
        _bwd(x, gy, gx, kind, float(a), float(b))


def activation_mask_fwd(x, y, bits, kind: int, a: float, b: float) -> None:
    """y = f(x) and the 1-bit mask of where x lies in f's first linear piece, 1-D."""
    _check(x, y)
    if bits.size != (x.size + 7) // 8:
        raise ValueError(f"mask of {x.size} elements needs {(x.size + 7) // 8} bytes")
    _mask_fwd(x, y, bits, kind, float(a), float(b))


def mask_select_bwd(bits, gy, gx, on: float, off: float) -> None:
    """gx = gy * (on where the mask bit is set, else off), 1-D (gx may be gy)."""
    _check(gy, gx)
    _mask_bwd(bits, gy, gx, np.float32(on), np.float32(off))


def prelu_fwd(x, slope, y, inner: int) -> None:
    """y = x where x > 0, else slope[c] * x, for x flat with channel c = (i // inner) %
    slope.size (slope.size 1: one slope for all)."""
    _check(x, y)
    _prelu_fwd(x, slope.reshape(-1), y, slope.size, inner)


def prelu_bwd(x, slope, gy, gx, gslope, inner: int) -> None:
    """gx (1-D, may be gy) and gslope[c] = sum of gy * x over channel c where x <= 0;
    either may be None."""
    _check(x, gy, *([] if gx is None else [gx]))
    if gslope is not None:  # first: gx may be gy
        _prelu_bwd_slope(x, gy, gslope.reshape(-1), gslope.size, inner)
    if gx is not None:
        _prelu_bwd_input(x, slope.reshape(-1), gy, gx, slope.size, inner)
