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


@kernel
def groupnorm_stats(x, cm, groups, eps, stats):  # pragma: no cover - compiled
    """stats[:, n * groups + g] = (mean, 1 / sqrt(variance + eps)) of group g of sample n,
    for x stored [C, N, S] (`cm`, channel-major) or [N, C, S]."""
    nc, nb = (x.shape[0], x.shape[1]) if cm else (x.shape[1], x.shape[0])
    per, npix = nc // groups, x.shape[2]
    count = per * npix
    for t in prange(nb * groups):
        n, g = t // groups, t % groups
        m = 0.0
        for c in range(g * per, (g + 1) * per):
            for p in range(npix):
                m += x[c, n, p] if cm else x[n, c, p]
        m /= count
        v = 0.0
        for c in range(g * per, (g + 1) * per):
            for p in range(npix):
                d = (x[c, n, p] if cm else x[n, c, p]) - m
                v += d * d
        stats[0, t] = m
        stats[1, t] = 1.0 / np.sqrt(v / count + eps)


@kernel
def _gn_fwd(x, cm, groups, scale, bias, has_scale, has_bias, stats, y):  # pragma: no cover
    nc, nb = (x.shape[0], x.shape[1]) if cm else (x.shape[1], x.shape[0])
    per, npix = nc // groups, x.shape[2]
    for t in prange(nb * groups):
        n, g = t // groups, t % groups
        m, inv = stats[0, t], stats[1, t]
        for c in range(g * per, (g + 1) * per):
            a = inv * (scale[c] if has_scale else 1.0)
            b = (bias[c] if has_bias else 0.0) - m * a
            for p in range(npix):
                if cm:
                    y[c, n, p] = x[c, n, p] * a + b
                else:
                    y[n, c, p] = x[n, c, p] * a + b


def groupnorm_fwd(x, cm, groups, scale, bias, stats, y) -> None:
    """y = (x - mean) / std of each group, times scale[c] plus bias[c] (either None)."""
    s = x.reshape(-1) if scale is None else scale
    args = (s, s if bias is None else bias, scale is not None, bias is not None)
    _gn_fwd(x, cm, groups, *args, stats, y)


@kernel
def _gn_bwd_input(gy, x, cm, groups, scale, has_scale, stats, gx):  # pragma: no cover
    nc, nb = (x.shape[0], x.shape[1]) if cm else (x.shape[1], x.shape[0])
    per, npix = nc // groups, x.shape[2]
    count = per * npix
    for t in prange(nb * groups):
        n, g = t // groups, t % groups
        m, inv = stats[0, t], stats[1, t]
        a = 0.0
        b = 0.0
        for c in range(g * per, (g + 1) * per):
            w = scale[c] if has_scale else 1.0
            for p in range(npix):
                d = gy[c, n, p] * w if cm else gy[n, c, p] * w
                a += d
                b += d * ((x[c, n, p] if cm else x[n, c, p]) - m) * inv
        a /= count
        b /= count
        for c in range(g * per, (g + 1) * per):
            w = scale[c] if has_scale else 1.0
            for p in range(npix):
                if cm:
                    gx[c, n, p] = inv * (gy[c, n, p] * w - a - (x[c, n, p] - m) * inv * b)
                else:
                    gx[n, c, p] = inv * (gy[n, c, p] * w - a - (x[n, c, p] - m) * inv * b)


def groupnorm_bwd_input(gy, x, cm, groups, scale, stats, gx) -> None:
    """gx = d groupnorm(x) / dx applied to gy (overwrites gx; scale may be None)."""
    s = x.reshape(-1) if scale is None else scale
    _gn_bwd_input(gy, x, cm, groups, s, scale is not None, stats, gx)


@kernel
def _gn_bwd_params(gy, x, cm, groups, stats, gscale, gbias, need_s, need_b):  # pragma: no cover
    nc, nb = (x.shape[0], x.shape[1]) if cm else (x.shape[1], x.shape[0])
    per, npix = nc // groups, x.shape[2]
    for c in prange(nc):
        s = 0.0
        b = 0.0
        for n in range(nb):
            t = n * groups + c // per
            m, inv = stats[0, t], stats[1, t]
            for p in range(npix):
                d = gy[c, n, p] if cm else gy[n, c, p]
                b += d
                if need_s:
                    s += d * ((x[c, n, p] if cm else x[n, c, p]) - m) * inv
        if need_s:
            gscale[c] = s
        if need_b:
            gbias[c] = b


def groupnorm_bwd_params(gy, x, cm, groups, stats, gscale, gbias) -> None:
    """gscale[c] = sum of gy * normalized x over samples and positions of channel c,
    gbias[c] = sum of gy (either may be None; x is read only for gscale)."""
    if gscale is None and gbias is None:
        return
    gs, gb = (gbias if gscale is None else gscale), (gscale if gbias is None else gbias)
    _gn_bwd_params(gy, x, cm, groups, stats, gs, gb, gscale is not None, gbias is not None)
