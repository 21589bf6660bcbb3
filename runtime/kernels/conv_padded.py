"""im2col for stride-1 convolutions over zero-padded planes, where each lowered row is one
contiguous copy (memcpy speed) instead of a copy per output row with edge cases.

Channel-major x [C, N, H, W] is copied into `xp` [C, N, Hp*Wp + slack], each plane
zero-padded to Hp x Wp. Output (oy, ox) of kernel tap (i, j) reads xp at q + i*dh*Wp +
j*dw with q = oy*Wp + ox, so the lowered row of (c, i, j) for sample n is the slice
xp[c, n, off : off + Ho*Wp]. The matmul then yields `yp` [M, N*Ho*Wp] whose last Wp - Wo
columns per output row are garbage that `crop` drops; backward pads gy with zero columns
there, so the garbage contributes nothing to input or weight gradients.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .dispatch import kernel


@njit(cache=True, inline="always")
def uidx(i):
    """i (known >= 0) as an unsigned index: numba then skips its negative-index
    wraparound, which keeps inner loops vectorizable."""
    return np.uint64(i)


@kernel
def pad_planes(x, xp, top, left, wp):  # pragma: no cover - compiled
    """xp[a, b] = x[a, b] placed at (top, left) of a zero plane of width wp."""
    na, nb, h, w = x.shape
    for t in prange(na * nb):
        a, b = t // nb, t % nb
        for q in range(xp.shape[2]):
            xp[a, b, q] = 0.0
        for iy in range(h):
            base = (iy + top) * wp + left
            for ix in range(w):
                xp[a, b, uidx(base + ix)] = x[a, b, iy, ix]


@kernel
def crop(xp, x, top, left, wp):  # pragma: no cover - compiled
    """x[a, b] = the window at (top, left) of the planes of width wp in xp."""
    na, nb, h, w = x.shape
    for t in prange(na * nb):
        a, b = t // nb, t % nb
        for iy in range(h):
            base = (iy + top) * wp + left
            for ix in range(w):
                x[a, b, iy, ix] = xp[a, b, uidx(base + ix)]


@kernel
def im2col_padded(xp, cols, kh, kw, dh, dw, wp, nq):  # pragma: no cover - compiled
    """cols[(c*kh + i)*kw + j, n*nq + q] = xp[c, n, q + i*dh*wp + j*dw], q < nq."""
    nc, nb = xp.shape[0], xp.shape[1]
    for t in prange(nc * nb):
        c, n = t // nb, t % nb
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                off = i * dh * wp + j * dw
                for q in range(nq):
                    cols[r, n * nq + q] = xp[c, n, uidx(q + off)]


@kernel
def col2im_padded(cols, gxp, kh, kw, dh, dw, wp, nq):  # pragma: no cover - compiled
    """gxp = the adjoint of im2col_padded applied to cols (overwrites gxp)."""
    nc, nb = gxp.shape[0], gxp.shape[1]
    for t in prange(nc * nb):
        c, n = t // nb, t % nb
        for q in range(gxp.shape[2]):
            gxp[c, n, q] = 0.0
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                off = i * dh * wp + j * dw
                for q in range(nq):
                    gxp[c, n, uidx(q + off)] += cols[r, n * nq + q]
