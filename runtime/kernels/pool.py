"""Pooling kernels over planes: x [A, B, H, W] pools each of its A*B planes alone, so
the kernels serve NCHW and channel-major [C, N, H, W] alike. Max pooling keeps the
window-local argmax (uint8); average pooling counts padded cells in the divisor or not,
with ceil mode through the output size; global average pooling is a mean per plane."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .dispatch import kernel
from .elementwise import spread


@kernel
def maxpool_fwd(x, y, arg, kh, kw, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    """y = window maxima of x (first maximum wins); arg = its index i*kw + j in the window."""
    nb, nc, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    for t in prange(nb * nc):
        n, c = t // nc, t % nc
        for oy in range(ho):
            for ox in range(wo):
                best = -np.inf
                at = 0
                for i in range(kh):
                    iy = oy * sh - pt + i * dh
                    if iy < 0 or iy >= h:
                        continue
                    for j in range(kw):
                        ix = ox * sw - pl + j * dw
                        if 0 <= ix < w and x[n, c, iy, ix] > best:
                            best = x[n, c, iy, ix]
                            at = i * kw + j
                y[n, c, oy, ox] = best
                arg[n, c, oy, ox] = at


@kernel
def maxpool_bwd(gy, arg, gx, kh, kw, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    """gx = gy routed to each window's argmax (overwrites gx). A scatter: it needs no
    window height `kh` (CUDA's gather does; the signature is shared)."""
    nb, nc, ho, wo = gy.shape
    for t in prange(nb * nc):
        n, c = t // nc, t % nc
        gx[n, c] = 0.0
        for oy in range(ho):
            for ox in range(wo):
                a = int(arg[n, c, oy, ox])
                iy = oy * sh - pt + (a // kw) * dh
                ix = ox * sw - pl + (a % kw) * dw
                if 0 <= iy < gx.shape[2] and 0 <= ix < gx.shape[3]:
                    gx[n, c, iy, ix] += gy[n, c, oy, ox]


@njit(cache=True, inline="always")
def _window(o, stride, pad, k, size, pad_end):
    """Clipped window [lo, hi) of output o and its divisor with padded cells counted."""
    start = o * stride - pad
    end = min(start + k, size + pad_end)
    full = end - start
    return max(start, 0), min(end, size), full


@kernel
def avgpool_fwd(x, y, kh, kw, sh, sw, pt, pl, pb, pr, include_pad):  # pragma: no cover
    """y = window means of x; the divisor counts padded cells when include_pad."""
    nb, nc, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    for t in prange(nb * nc):
        n, c = t // nc, t % nc
        for oy in range(ho):
            y0, y1, fy = _window(oy, sh, pt, kh, h, pb)
            for ox in range(wo):
                x0, x1, fx = _window(ox, sw, pl, kw, w, pr)
                acc = 0.0
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        acc += x[n, c, iy, ix]
                div = fy * fx if include_pad else (y1 - y0) * (x1 - x0)
                y[n, c, oy, ox] = acc / div


@kernel
def avgpool_bwd(gy, gx, kh, kw, sh, sw, pt, pl, pb, pr, include_pad):  # pragma: no cover
    """gx = the input gradient of avgpool_fwd (overwrites gx)."""
    nb, nc, h, w = gx.shape
    ho, wo = gy.shape[2], gy.shape[3]
    for t in prange(nb * nc):
        n, c = t // nc, t % nc
        gx[n, c] = 0.0
        for oy in range(ho):
            y0, y1, fy = _window(oy, sh, pt, kh, h, pb)
            for ox in range(wo):
                x0, x1, fx = _window(ox, sw, pl, kw, w, pr)
                div = fy * fx if include_pad else (y1 - y0) * (x1 - x0)
                v = gy[n, c, oy, ox] / div
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        gx[n, c, iy, ix] += v


def global_avgpool_fwd(x: np.ndarray, y: np.ndarray) -> None:
    """y[n, c, 1, 1...] = mean of x[n, c] over its spatial axes."""
    n, c = x.shape[:2]
    y2 = y.reshape(n, c)
    np.add.reduce(x.reshape(n, c, -1), axis=2, out=y2)
    np.multiply(y2, np.float32(y.size / x.size), out=y2)


def global_avgpool_bwd(gy: np.ndarray, gx: np.ndarray) -> None:
    """gx = gy spread evenly over the spatial axes (overwrites gx)."""
    n, c = gx.shape[:2]
    spread(gy.reshape(n, c), gy.size / gx.size, gx.reshape(n, c, -1))
