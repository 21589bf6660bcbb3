"""Pooling kernels over planes: x [A, B, H, W] pools each of its A*B planes alone, so
the kernels serve NCHW and channel-major [C, N, H, W] alike. Max pooling keeps the
window-local argmax (uint8); average pooling counts padded cells in the divisor or not,
with ceil mode through the output size; global average pooling is a mean per plane."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .conv_padded import uidx
from .dispatch import kernel
from .elementwise import spread


@njit(cache=True, inline="always")
def _taps(o, stride, pad, dil, k, size):
    """Taps [lo, hi) of a window (output o) that fall inside [0, size)."""
    start = o * stride - pad
    lo, hi = 0, k
    while lo < k and start + lo * dil < 0:
        lo += 1
    while hi > lo and start + (hi - 1) * dil >= size:
        hi -= 1
    return lo, hi


@kernel
def maxpool_fwd(x, y, arg, kh, kw, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    """y = window maxima of x (first maximum wins); arg = its index i*kw + j in the window.
    Full 2x2 stride-2 windows take a branch-free loop that vectorizes; windows inside x
    test no bounds."""
    nb, nc, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    pairs = kh == kw == sh == sw == 2 and pt == pl == 0 and dh == dw == 1
    for t in prange(nb * nc):
        n, c = t // nc, t % nc
        xp, yp, ap = x[n, c], y[n, c], arg[n, c]
        for oy in range(ho):
            done = 0
            if pairs and 2 * oy + 1 < h:
                done = min(wo, w // 2)
                _max2x2_row(xp, yp, ap, oy, done)
            if done < wo:
                _max_windows(xp, yp, ap, oy, done, kh, kw, sh, sw, pt, pl, dh, dw)


@njit(cache=True, inline="always")
def _max_windows(xp, yp, ap, oy, start, kh, kw, sh, sw, pt, pl, dh, dw):
    """yp[oy, ox], ap[oy, ox] for ox >= start, window by window in window order with a
    strict > (the first maximum wins); windows inside xp read it with no bounds tests."""
    h, w = xp.shape
    y0 = oy * sh - pt
    rows_in = y0 >= 0 and y0 + (kh - 1) * dh < h
    i0, i1 = _taps(oy, sh, pt, dh, kh, h)
    for ox in range(start, yp.shape[1]):
        x0 = ox * sw - pl
        best = np.float32(-np.inf)
        at = 0
        if rows_in and x0 >= 0 and x0 + (kw - 1) * dw < w:
            for i in range(kh):
                for j in range(kw):
                    v = xp[uidx(y0 + i * dh), uidx(x0 + j * dw)]
                    if v > best:
                        best = v
                        at = i * kw + j
        else:
            j0, j1 = _taps(ox, sw, pl, dw, kw, w)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    v = xp[y0 + i * dh, x0 + j * dw]
                    if v > best:
                        best = v
                        at = i * kw + j
        yp[oy, ox] = best
        ap[oy, ox] = at


@njit(cache=True, inline="always")
def _max2x2_row(xp, yp, ap, oy, count):
    """yp[oy, ox], ap[oy, ox] = the max and first argmax of the 2x2 window at (2oy, 2ox)
    of xp, for ox < count (as the general loop: a -inf start, strict >)."""
    for ox in range(count):
        a, b = xp[2 * oy, 2 * ox], xp[2 * oy, 2 * ox + 1]
        c, d = xp[2 * oy + 1, 2 * ox], xp[2 * oy + 1, 2 * ox + 1]
        best, at = np.float32(-np.inf), 0
        at = 0 if a > best else at
        best = a if a > best else best
        at = 1 if b > best else at
        best = b if b > best else best
        at = 2 if c > best else at
        best = c if c > best else best
        at = 3 if d > best else at
        best = d if d > best else best
        yp[oy, ox] = best
        ap[oy, ox] = at


@kernel
def maxpool_bwd(gy, arg, gx, kh, kw, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    """gx = gy routed to each window's argmax (overwrites gx). A scatter: it needs no
    window height `kh` (CUDA's gather does; the signature is shared). Full 2x2 stride-2
    windows, which tile x, write their four cells branch-free instead."""
    nb, nc, ho, wo = gy.shape
    h, w = gx.shape[2], gx.shape[3]
    pairs = kh == kw == sh == sw == 2 and pt == pl == 0 and dh == dw == 1
    for t in prange(nb * nc):
        n, c = t // nc, t % nc
        gp, ap, xp = gy[n, c], arg[n, c], gx[n, c]
        if not (pairs and 2 * ho == h and 2 * wo == w):  # else every cell is written
            xp[:] = 0.0
        for oy in range(ho):
            done = 0
            if pairs and 2 * oy + 1 < h:
                done = min(wo, w // 2)
                _route2x2_row(gp, ap, xp, oy, done)
            for ox in range(done, wo):
                a = int(ap[oy, ox])
                iy = oy * sh - pt + (a // kw) * dh
                ix = ox * sw - pl + (a % kw) * dw
                if 0 <= iy < h and 0 <= ix < w:
                    xp[iy, ix] += gp[oy, ox]


@njit(cache=True, inline="always")
def _route2x2_row(gp, ap, xp, oy, count):
    """Rows 2oy, 2oy + 1 of xp under the 2x2 windows (oy, ox < count): gp where the argmax
    ap points, else 0."""
    zero = np.float32(0.0)
    for ox in range(count):
        g, a = gp[oy, ox], ap[oy, ox]
        xp[2 * oy, 2 * ox] = g if a == 0 else zero
        xp[2 * oy, 2 * ox + 1] = g if a == 1 else zero
        xp[2 * oy + 1, 2 * ox] = g if a == 2 else zero
        xp[2 * oy + 1, 2 * ox + 1] = g if a == 3 else zero


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
