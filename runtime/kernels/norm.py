"""Normalizations over rows: LayerNormalization over the trailing axes of x viewed as
[rows, D] (its statistics, mean and 1/std per row, in a [2, rows] array), and Softmax
along the middle axis of x viewed as [outer, L, inner]. The glue picks the views from
the stored layout (runtime/ops_norm.py); cuda/norm.py has the same functions."""

from __future__ import annotations

import numpy as np
from numba import prange

from .dispatch import kernel


@kernel
def layernorm_stats(x, eps, stats):  # pragma: no cover - compiled
    """stats[0] = mean of each row of x, stats[1] = 1 / sqrt(its variance + eps)."""
    rows, d = x.shape
    for r in prange(rows):
        m = 0.0
        for j in range(d):
            m += x[r, j]
        m /= d
        v = 0.0
        for j in range(d):
            v += (x[r, j] - m) ** 2
        stats[0, r] = m
        stats[1, r] = 1.0 / np.sqrt(v / d + eps)


@kernel
def _ln_fwd(x, scale, bias, has_bias, stats, y):  # pragma: no cover - compiled
    rows, d = x.shape
    for r in prange(rows):
        m, inv = stats[0, r], stats[1, r]
        for j in range(d):
            y[r, j] = (x[r, j] - m) * inv * scale[j] + (bias[j] if has_bias else 0.0)


def layernorm_fwd(x, scale, bias, stats, y) -> None:
    """y = (x - mean) / std * scale + bias per row (bias may be None)."""
    _ln_fwd(x, scale, scale if bias is None else bias, bias is not None, stats, y)


@kernel
def layernorm_bwd_input(gy, x, scale, stats, gx):  # pragma: no cover - compiled
    """gx = d layernorm(x) / dx applied to gy, per row (overwrites gx)."""
    rows, d = x.shape
    for r in prange(rows):
        m, inv = stats[0, r], stats[1, r]
        a = 0.0
        b = 0.0
        for j in range(d):
            g = gy[r, j] * scale[j]
            a += g
            b += g * (x[r, j] - m) * inv
        a /= d
        b /= d
        for j in range(d):
            gx[r, j] = inv * (gy[r, j] * scale[j] - a - (x[r, j] - m) * inv * b)


@kernel
def _ln_bwd_params(gy, x, stats, gscale, gbias, need_scale, need_bias):  # pragma: no cover
    rows, d = x.shape
    for j in prange(d):
        s = 0.0
        b = 0.0
        for r in range(rows):
            s += gy[r, j] * (x[r, j] - stats[0, r]) * stats[1, r]
            b += gy[r, j]
        if need_scale:
            gscale[j] = s
        if need_bias:
            gbias[j] = b


def layernorm_bwd_params(gy, x, stats, gscale, gbias) -> None:
    """gscale = sum over rows of gy * normalized x, gbias = sum of gy (either may be None)."""
    if gscale is None and gbias is None:
        return
    gs, gb = (gbias if gscale is None else gscale), (gscale if gbias is None else gbias)
    _ln_bwd_params(gy, x, stats, gs, gb, gscale is not None, gbias is not None)


@kernel
def softmax_fwd(x, y):  # pragma: no cover - compiled
    """y = softmax of x along axis 1 of [outer, L, inner]."""
    outer, n, inner = x.shape
    for t in prange(outer * inner):
        o, i = t // inner, t % inner
        top = -np.inf
        for j in range(n):
            top = max(top, x[o, j, i])
        total = 0.0
        for j in range(n):
            e = np.exp(x[o, j, i] - top)
            y[o, j, i] = e
            total += e
        for j in range(n):
            y[o, j, i] /= total


@kernel
def softmax_bwd(gy, y, gx):  # pragma: no cover - compiled
    """gx = y * (gy - sum(gy * y)) along axis 1 of [outer, L, inner] (overwrites gx)."""
    outer, n, inner = y.shape
    for t in prange(outer * inner):
        o, i = t // inner, t % inner
        dot = 0.0
        for j in range(n):
            dot += gy[o, j, i] * y[o, j, i]
        for j in range(n):
            gx[o, j, i] = y[o, j, i] * (gy[o, j, i] - dot)
