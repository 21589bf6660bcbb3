"""Zero-padded planes for convolutions, in scratch and workspace rows.

- `to_planes`/`from_planes` lay a channel-major tensor out as padded planes one after
  another in a row per channel (and back, adding a bias), for the shifted-matmul path of
  kernels/conv.py.
- `im2col_planes`/`col2im_planes` lower k x k convolutions of any stride through a
  zero-padded copy of one plane at a time in a scratch row (`CHUNKS` rows, one per prange
  chunk, so kernels allocate nothing): no edge cases per output row.
- Without a BLAS sgemm that takes leading dimensions, stride-1 convolutions with wide
  planes take im2col over padded planes, where each lowered row is one contiguous copy:
  channel-major x [C, N, H, W] is copied into `xp` [C, N, Hp*Wp + slack], each plane
  zero-padded to Hp x Wp. Output (oy, ox) of kernel tap (i, j) reads xp at q + i*dh*Wp +
  j*dw with q = oy*Wp + ox, so the lowered row of (c, i, j) for sample n is the slice
  xp[c, n, off : off + Ho*Wp]. The matmul then yields `yp` [M, N*Ho*Wp] whose last
  Wp - Wo columns per output row are garbage that `crop` drops; backward pads gy with zero
  columns there, so the garbage contributes nothing to input or weight gradients.
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


@njit(cache=True, inline="always")
def _span(off: int, stride: int, size: int, n_out: int) -> tuple[int, int]:
    """Outputs o in [lo, hi) read input o*stride + off inside [0, size)."""
    lo = 0 if off >= 0 else (-off + stride - 1) // stride
    hi = min((size - 1 - off) // stride + 1, n_out)
    hi = max(hi, 0)
    return min(lo, hi), hi


CHUNKS = 16  # scratch rows of the *_planes kernels: planes go round-robin to this many


@njit(cache=True, inline="always")
def _place(src, row, top, left, wp, sy, sx):
    """row[(top + iy*sy)*wp + left + ix*sx] = src[iy, ix] (the rest of row untouched)."""
    h, w = src.shape
    for iy in range(h):
        base = (top + iy * sy) * wp + left
        for ix in range(w):
            row[uidx(base + ix * sx)] = src[iy, ix]


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


@kernel
def to_planes(x, xp, top, left, hp, wp):  # pragma: no cover - compiled
    """xp[a, b*hp*wp + (iy + top)*wp + left + ix] = x[a, b, iy, ix]: the planes of x, each
    placed at (top, left) of a zero hp x wp plane, one after another along a row of xp;
    the rest of the row (its tail after the last plane) is zeroed too."""
    na, nb, h, w = x.shape
    plane = hp * wp
    for t in prange(na * nb):
        a, b = t // nb, t % nb
        stop = (b + 1) * plane if b < nb - 1 else xp.shape[1]
        for q in range(b * plane, stop):
            xp[a, uidx(q)] = 0.0
        for iy in range(h):
            base = b * plane + (iy + top) * wp + left
            for ix in range(w):
                xp[a, uidx(base + ix)] = x[a, b, iy, ix]


@kernel
def from_planes(xp, x, top, left, hp, wp, bias):  # pragma: no cover - compiled
    """x[a, b, iy, ix] = xp[a, b*hp*wp + (iy + top)*wp + left + ix] (+ bias[a] when bias
    is not empty): the inverse of to_planes, with a per-row bias added on the way."""
    na, nb, h, w = x.shape
    plane = hp * wp
    for t in prange(na * nb):
        a, b = t // nb, t % nb
        add = bias[a] if bias.size else np.float32(0.0)
        for iy in range(h):
            base = b * plane + (iy + top) * wp + left
            for ix in range(w):
                x[a, b, iy, ix] = xp[a, uidx(base + ix)] + add


@kernel
def im2col_planes(  # pragma: no cover - compiled
    x, cols, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, ho, wo, rows
):
    """im2col (cols[(c*kh + i)*kw + j, (n*ho + oy)*wo + ox] = x[c, n, oy*sh + i*dh - pt,
    ox*sw + j*dw - pl], zero outside x) through a zero-padded copy of each plane in a
    scratch row (`CHUNKS` rows of (h + pt + pb) * (w + pl + pr)): no edge cases per row."""
    nc, nb, h, w = x.shape
    wp = w + pl + pr
    plane = (h + pt + pb) * wp
    for k in prange(CHUNKS):
        pad = rows[k, :plane]
        for t in range(k, nc * nb, CHUNKS):
            c, n = t // nb, t % nb
            pad[:] = 0.0
            _place(x[c, n], pad, pt, pl, wp, 1, 1)
            for i in range(kh):
                for j in range(kw):
                    row = cols[(c * kh + i) * kw + j, n * ho * wo : (n + 1) * ho * wo]
                    off = i * dh * wp + j * dw
                    for oy in range(ho):
                        src = oy * sh * wp + off
                        for ox in range(wo):
                            row[oy * wo + ox] = pad[uidx(src + ox * sw)]


@kernel
def col2im_planes(  # pragma: no cover - compiled
    cols, gx, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, ho, wo, rows
):
    """gx = the adjoint of im2col_planes applied to cols (overwrites gx)."""
    nc, nb, h, w = gx.shape
    wp = w + pl + pr
    plane = (h + pt + pb) * wp
    for k in prange(CHUNKS):
        pad = rows[k, :plane]
        for t in range(k, nc * nb, CHUNKS):
            c, n = t // nb, t % nb
            pad[:] = 0.0
            for i in range(kh):
                for j in range(kw):
                    row = cols[(c * kh + i) * kw + j, n * ho * wo : (n + 1) * ho * wo]
                    off = i * dh * wp + j * dw
                    for oy in range(ho):
                        src = oy * sh * wp + off
                        for ox in range(wo):
                            pad[uidx(src + ox * sw)] += row[oy * wo + ox]
            for iy in range(h):
                base = (iy + pt) * wp + pl
                for ix in range(w):
                    gx[c, n, iy, ix] = pad[uidx(base + ix)]
