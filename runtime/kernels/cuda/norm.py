"""Normalizations on CUDA, mirroring runtime/kernels/norm.py: LayerNormalization over the
rows of x viewed as [rows, D] (statistics in a [2, rows] array; one thread per row, and
per column for the scale and bias gradients) and Softmax along axis 1 of [outer, L,
inner] (one thread per lane)."""

from __future__ import annotations

import math

from numba import cuda

from .launch import THREADS, blocks


@cuda.jit(cache=True)
def _stats(x, eps, stats):  # pragma: no cover
    rows, d = x.shape
    for r in range(cuda.grid(1), rows, cuda.gridsize(1)):
        m = 0.0
        for j in range(d):
            m += x[r, j]
        m /= d
        v = 0.0
        for j in range(d):
            v += (x[r, j] - m) * (x[r, j] - m)
        stats[0, r] = m
        stats[1, r] = 1.0 / math.sqrt(v / d + eps)


def layernorm_stats(x, eps, stats) -> None:
    """stats[0] = mean of each row of x, stats[1] = 1 / sqrt(its variance + eps)."""
    _stats[blocks(x.shape[0]), THREADS](x, eps, stats)


@cuda.jit(cache=True)
def _fwd(x, scale, bias, has_bias, stats, y):  # pragma: no cover
    rows, d = x.shape
    for k in range(cuda.grid(1), rows * d, cuda.gridsize(1)):
        r, j = k // d, k % d
        v = (x[r, j] - stats[0, r]) * stats[1, r] * scale[j]
        y[r, j] = v + bias[j] if has_bias else v


def layernorm_fwd(x, scale, bias, stats, y) -> None:
    """y = (x - mean) / std * scale + bias per row (bias may be None)."""
    args = (x, scale, scale if bias is None else bias, bias is not None, stats, y)
    _fwd[blocks(x.size), THREADS](*args)


@cuda.jit(cache=True)
def _bwd_input(gy, x, scale, stats, gx):  # pragma: no cover
    rows, d = x.shape
    for r in range(cuda.grid(1), rows, cuda.gridsize(1)):
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


def layernorm_bwd_input(gy, x, scale, stats, gx) -> None:
    """gx = d layernorm(x) / dx applied to gy, per row (overwrites gx)."""
    _bwd_input[blocks(x.shape[0]), THREADS](gy, x, scale, stats, gx)


@cuda.jit(cache=True)
def _bwd_params(gy, x, stats, gscale, gbias, need_scale, need_bias):  # pragma: no cover
    rows, d = x.shape
    for j in range(cuda.grid(1), d, cuda.gridsize(1)):
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
    args = (gy, x, stats, gs, gb, gscale is not None, gbias is not None)
    _bwd_params[blocks(x.shape[1]), THREADS](*args)


@cuda.jit(cache=True)
def _softmax(x, y):  # pragma: no cover
    outer, n, inner = x.shape
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        o, i = t // inner, t % inner
        top = x[o, 0, i]
        for j in range(1, n):
            top = max(top, x[o, j, i])
        total = 0.0
        for j in range(n):
            e = math.exp(x[o, j, i] - top)
            y[o, j, i] = e
            total += e
        for j in range(n):
            y[o, j, i] /= total


def softmax_fwd(x, y) -> None:
    """y = softmax of x along axis 1 of [outer, L, inner]."""
    _softmax[blocks(x.shape[0] * x.shape[2]), THREADS](x, y)


@cuda.jit(cache=True)
def _softmax_bwd(gy, y, gx):  # pragma: no cover
    outer, n, inner = y.shape
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        o, i = t // inner, t % inner
        dot = 0.0
        for j in range(n):
            dot += gy[o, j, i] * y[o, j, i]
        for j in range(n):
            gx[o, j, i] = y[o, j, i] * (gy[o, j, i] - dot)


def softmax_bwd(gy, y, gx) -> None:
    """gx = y * (gy - sum(gy * y)) along axis 1 of [outer, L, inner] (overwrites gx)."""
    _softmax_bwd[blocks(y.shape[0] * y.shape[2]), THREADS](gy, y, gx)


@cuda.jit(device=True, inline=True)
def _at(a, cm, n, c, p):  # pragma: no cover
    return a[c, n, p] if cm else a[n, c, p]


@cuda.jit(cache=True)
def _gn_stats(x, cm, groups, eps, stats):  # pragma: no cover
    nc, nb = (x.shape[0], x.shape[1]) if cm else (x.shape[1], x.shape[0])
    per, npix = nc // groups, x.shape[2]
    count = per * npix
    for t in range(cuda.grid(1), nb * groups, cuda.gridsize(1)):
        n, g = t // groups, t % groups
        m = 0.0
        for c in range(g * per, (g + 1) * per):
            for p in range(npix):
                m += _at(x, cm, n, c, p)
        m /= count
        v = 0.0
        for c in range(g * per, (g + 1) * per):
            for p in range(npix):
                d = _at(x, cm, n, c, p) - m
                v += d * d
        stats[0, t] = m
        stats[1, t] = 1.0 / math.sqrt(v / count + eps)


def _samples(x, cm: bool) -> int:
    return x.shape[1] if cm else x.shape[0]


def groupnorm_stats(x, cm, groups, eps, stats) -> None:
    """stats[:, n * groups + g] = (mean, 1 / sqrt(variance + eps)) of group g of sample n,
    for x stored [C, N, S] (`cm`, channel-major) or [N, C, S]."""
    _gn_stats[blocks(_samples(x, cm) * groups), THREADS](x, cm, groups, eps, stats)


@cuda.jit(cache=True)
def _gn_fwd(x, cm, groups, scale, bias, has_scale, has_bias, stats, y):  # pragma: no cover
    nc, nb = (x.shape[0], x.shape[1]) if cm else (x.shape[1], x.shape[0])
    per, npix = nc // groups, x.shape[2]
    for k in range(cuda.grid(1), nb * nc * npix, cuda.gridsize(1)):
        n, c, p = k // (nc * npix), (k // npix) % nc, k % npix
        t = n * groups + c // per
        a = stats[1, t] * (scale[c] if has_scale else 1.0)
        v = (_at(x, cm, n, c, p) - stats[0, t]) * a + (bias[c] if has_bias else 0.0)
        if cm:
            y[c, n, p] = v
        else:
            y[n, c, p] = v


def groupnorm_fwd(x, cm, groups, scale, bias, stats, y) -> None:
    """y = (x - mean) / std of each group, times scale[c] plus bias[c] (either None)."""
    s = x.reshape(-1) if scale is None else scale
    args = (s, s if bias is None else bias, scale is not None, bias is not None)
    _gn_fwd[blocks(x.size), THREADS](x, cm, groups, *args, stats, y)


@cuda.jit(cache=True)
def _gn_bwd_input(gy, x, cm, groups, scale, has_scale, stats, gx):  # pragma: no cover
    nc, nb = (x.shape[0], x.shape[1]) if cm else (x.shape[1], x.shape[0])
    per, npix = nc // groups, x.shape[2]
    count = per * npix
    for t in range(cuda.grid(1), nb * groups, cuda.gridsize(1)):
        n, g = t // groups, t % groups
        m, inv = stats[0, t], stats[1, t]
        a = 0.0
        b = 0.0
        for c in range(g * per, (g + 1) * per):
            w = scale[c] if has_scale else 1.0
            for p in range(npix):
                d = _at(gy, cm, n, c, p) * w
                a += d
                b += d * (_at(x, cm, n, c, p) - m) * inv
        a /= count
        b /= count
        for c in range(g * per, (g + 1) * per):
            w = scale[c] if has_scale else 1.0
            for p in range(npix):
                v = inv * (_at(gy, cm, n, c, p) * w - a - (_at(x, cm, n, c, p) - m) * inv * b)
                if cm:
                    gx[c, n, p] = v
                else:
                    gx[n, c, p] = v


def groupnorm_bwd_input(gy, x, cm, groups, scale, stats, gx) -> None:
    """gx = d groupnorm(x) / dx applied to gy (overwrites gx; scale may be None)."""
    s = x.reshape(-1) if scale is None else scale
    args = (gy, x, cm, groups, s, scale is not None, stats, gx)
    _gn_bwd_input[blocks(_samples(x, cm) * groups), THREADS](*args)


@cuda.jit(cache=True)
def _gn_bwd_params(gy, x, cm, groups, stats, gscale, gbias, need_s, need_b):  # pragma: no cover
    nc, nb = (x.shape[0], x.shape[1]) if cm else (x.shape[1], x.shape[0])
    per, npix = nc // groups, x.shape[2]
    for c in range(cuda.grid(1), nc, cuda.gridsize(1)):
        s = 0.0
        b = 0.0
        for n in range(nb):
            t = n * groups + c // per
            for p in range(npix):
                d = _at(gy, cm, n, c, p)
                b += d
                if need_s:
                    s += d * (_at(x, cm, n, c, p) - stats[0, t]) * stats[1, t]
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
    args = (gy, x, cm, groups, stats, gs, gb, gscale is not None, gbias is not None)
    _gn_bwd_params[blocks(x.shape[0] if cm else x.shape[1]), THREADS](*args)
