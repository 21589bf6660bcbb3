"""Pooling kernels on CUDA over planes, mirroring runtime/kernels/pool.py: x [A, B, H, W]
pools each of its A*B planes alone (NCHW and channel-major alike). Max pooling keeps the
window-local argmax (uint8); backward passes are gathers (each input cell sums the
outputs whose window holds it), so no two threads write one cell."""

from __future__ import annotations

import math

from numba import cuda, float64

from .elementwise import spread
from .launch import THREADS, blocks, source_of, tree_sum, unravel4


@cuda.jit(cache=True)
def _maxpool_fwd(x, y, arg, kh, kw, sh, sw, pt, pl, dh, dw):  # pragma: no cover
    na, nb, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        a, b, oy, ox = unravel4(t, nb, ho, wo)
        best = -math.inf
        at = 0
        for i in range(kh):
            iy = oy * sh - pt + i * dh
            if iy < 0 or iy >= h:
                continue
            for j in range(kw):
                ix = ox * sw - pl + j * dw
                if 0 <= ix < w and x[a, b, iy, ix] > best:
                    best = x[a, b, iy, ix]
                    at = i * kw + j
        y[a, b, oy, ox] = best
        arg[a, b, oy, ox] = at


@cuda.jit(cache=True)
def _maxpool_bwd(gy, arg, gx, kh, kw, sh, sw, pt, pl, dh, dw):  # pragma: no cover
    na, nb, h, w = gx.shape
    ho, wo = gy.shape[2], gy.shape[3]
    for t in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        a, b, iy, ix = unravel4(t, nb, h, w)
        acc = float64(0.0)
        for i in range(kh):
            if iy + pt - i * dh < 0:
                break
            oy = source_of(iy, i, sh, dh, pt, ho)
            for j in range(kw):
                ox = source_of(ix, j, sw, dw, pl, wo)
                if oy >= 0 and ox >= 0 and arg[a, b, oy, ox] == i * kw + j:
                    acc += gy[a, b, oy, ox]
        gx[a, b, iy, ix] = acc


@cuda.jit(device=True, inline=True)
def _window(o, stride, pad, k, size, pad_end):
    """Clipped window [lo, hi) of output o and its divisor with padded cells counted."""
    start = o * stride - pad
    end = min(start + k, size + pad_end)
    return max(start, 0), min(end, size), end - start


@cuda.jit(cache=True)
def _avgpool_fwd(x, y, kh, kw, sh, sw, pt, pl, pb, pr, include_pad):  # pragma: no cover
    na, nb, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        a, b, oy, ox = unravel4(t, nb, ho, wo)
        y0, y1, fy = _window(oy, sh, pt, kh, h, pb)
        x0, x1, fx = _window(ox, sw, pl, kw, w, pr)
        acc = float64(0.0)
        for iy in range(y0, y1):
            for ix in range(x0, x1):
                acc += x[a, b, iy, ix]
        div = fy * fx if include_pad else (y1 - y0) * (x1 - x0)
        y[a, b, oy, ox] = acc / div


@cuda.jit(cache=True)
def _avgpool_bwd(gy, gx, kh, kw, sh, sw, pt, pl, pb, pr, include_pad):  # pragma: no cover
    na, nb, h, w = gx.shape
    ho, wo = gy.shape[2], gy.shape[3]
    for t in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        a, b, iy, ix = unravel4(t, nb, h, w)
        acc = float64(0.0)
        for oy in range(max(0, (iy + pt - kh + sh) // sh), min(ho, (iy + pt) // sh + 1)):
            y0, y1, fy = _window(oy, sh, pt, kh, h, pb)
            if iy < y0 or iy >= y1:
                continue
            for ox in range(max(0, (ix + pl - kw + sw) // sw), min(wo, (ix + pl) // sw + 1)):
                x0, x1, fx = _window(ox, sw, pl, kw, w, pr)
                if x0 <= ix < x1:
                    div = fy * fx if include_pad else (y1 - y0) * (x1 - x0)
                    acc += gy[a, b, oy, ox] / div
        gx[a, b, iy, ix] = acc


@cuda.jit(cache=True)
def _plane_mean(x, y, scale):  # pragma: no cover - compiled
    buf = cuda.shared.array(THREADS, float64)
    tid = cuda.threadIdx.x
    npix = x.shape[1]
    for r in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        acc = float64(0.0)
        for p in range(tid, npix, THREADS):
            acc += x[r, p]
        buf[tid] = acc
        total = tree_sum(buf, tid)
        if tid == 0:
            y[r] = total * scale


def maxpool_fwd(x, y, arg, kh, kw, sh, sw, pt, pl, dh, dw) -> None:
    """y = window maxima of x (first maximum wins); arg = its index i*kw + j in the window."""
    _maxpool_fwd[blocks(y.size), THREADS](x, y, arg, kh, kw, sh, sw, pt, pl, dh, dw)


def maxpool_bwd(gy, arg, gx, kh, kw, sh, sw, pt, pl, dh, dw) -> None:
    """gx = gy routed to each window's argmax (overwrites gx), as a gather over the
    kh x kw taps that can reach each input cell."""
    _maxpool_bwd[blocks(gx.size), THREADS](gy, arg, gx, kh, kw, sh, sw, pt, pl, dh, dw)


def avgpool_fwd(x, y, kh, kw, sh, sw, pt, pl, pb, pr, include_pad) -> None:
    """y = window means of x; the divisor counts padded cells when include_pad."""
    args = (kh, kw, sh, sw, pt, pl, pb, pr, bool(include_pad))
    _avgpool_fwd[blocks(y.size), THREADS](x, y, *args)


def avgpool_bwd(gy, gx, kh, kw, sh, sw, pt, pl, pb, pr, include_pad) -> None:
    """gx = the input gradient of avgpool_fwd (overwrites gx)."""
    args = (kh, kw, sh, sw, pt, pl, pb, pr, bool(include_pad))
    _avgpool_bwd[blocks(gx.size), THREADS](gy, gx, *args)


def global_avgpool_fwd(x, y) -> None:
    """y[n, c, 1, 1...] = mean of x[n, c] over its spatial axes."""
    planes = x.shape[0] * x.shape[1]
    x2 = x.reshape(planes, -1)
    _plane_mean[blocks(planes * THREADS), THREADS](x2, y.reshape(-1), y.size / x.size)


def global_avgpool_bwd(gy, gx) -> None:
    """gx = gy spread evenly over the spatial axes (overwrites gx)."""
    n, c = gx.shape[:2]
    spread(gy.reshape(n, c), gy.size / gx.size, gx.reshape(n, c, -1))
