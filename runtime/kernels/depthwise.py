"""Depthwise convolution (groups == C_in, any channel multiplier) over channel-major
activations: x [C, N, H, W], w [M, 1, kh, kw], y [M, N, Ho, Wo], M a multiple of C.

Forward and input gradient run plane by plane through two scratch rows that stay in L1:
the input plane is copied, zero-padded, into a row of Hp x Wp (plus slack), and each
kernel tap (i, j) is then one long multiply-add of that row shifted by i*dh*Wp + j*dw into
an output row of stride-1 positions, Hs x Wp; the output plane is read off it (stride and
bias applied). Rows of a few hundred values vectorize where rows of Wo do not. The input
gradient runs the same sums transposed. Scratch rows are per prange chunk (`CHUNKS` of
them, `depthwise_workspace`), so kernels allocate nothing.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .conv_padded import CHUNKS, _place, _span, uidx
from .dispatch import REASSOC, kernel


@njit(cache=True)
def _rows(kh: int, kw: int, dh: int, dw: int, hp: int, wp: int) -> tuple[int, int]:
    """(padded row length, stride-1 output row length) of one plane."""
    return hp * wp + (kw - 1) * dw, (hp - dh * (kh - 1)) * wp


def depthwise_workspace(g, h: int, w: int) -> tuple[int, int]:
    """Shape (float32) of the scratch rows of a depthwise convolution of geometry g over
    h x w input planes."""
    p, q = _rows(g.kh, g.kw, g.dh, g.dw, h + g.pt + g.pb, w + g.pl + g.pr)
    return CHUNKS, p + q


@kernel
def depthwise_fwd(x, w, b, y, sh, sw, pt, pl, pb, pr, dh, dw, scratch):  # pragma: no cover
    """y[m, n] = sum_ij w[m, 0, i, j] * x[m // mult, n, shifted by (i, j)] + b[m] (b may
    be empty)."""
    nm, nb, ho, wo = y.shape
    nc, _, h, wd = x.shape
    kh, kw = w.shape[2], w.shape[3]
    mult = nm // nc
    hp, wp = h + pt + pb, wd + pl + pr
    np_, nq = _rows(kh, kw, dh, dw, hp, wp)
    for k in prange(CHUNKS):
        pad, acc = scratch[k, :np_], scratch[k, np_ : np_ + nq]
        for t in range(k, nm * nb, CHUNKS):
            m, n = t // nb, t % nb
            pad[:] = 0.0
            _place(x[m // mult, n], pad, pt, pl, wp, 1, 1)
            acc[:] = 0.0
            for i in range(kh):
                for j in range(kw):
                    off, wv = i * dh * wp + j * dw, w[m, 0, i, j]
                    for q in range(nq):
                        acc[q] += wv * pad[uidx(q + off)]
            bias = b[m] if b.size else np.float32(0.0)
            for oy in range(ho):
                base = oy * sh * wp
                for ox in range(wo):
                    y[m, n, oy, ox] = acc[uidx(base + ox * sw)] + bias


@kernel
def depthwise_bwd_input(gy, w, gx, sh, sw, pt, pl, pb, pr, dh, dw, scratch):  # pragma: no cover
    """gx = the input gradient of depthwise_fwd (overwrites gx)."""
    nm, nb, ho, wo = gy.shape
    nc, _, h, wd = gx.shape
    kh, kw = w.shape[2], w.shape[3]
    mult = nm // nc
    hp, wp = h + pt + pb, wd + pl + pr
    np_, nq = _rows(kh, kw, dh, dw, hp, wp)
    for k in prange(CHUNKS):
        pad, acc = scratch[k, :np_], scratch[k, np_ : np_ + nq]
        for t in range(k, nc * nb, CHUNKS):
            c, n = t // nb, t % nb
            pad[:] = 0.0
            for m in range(c * mult, (c + 1) * mult):
                acc[:] = 0.0
                _place(gy[m, n], acc, 0, 0, wp, sh, sw)
                for i in range(kh):
                    for j in range(kw):
                        off, wv = i * dh * wp + j * dw, w[m, 0, i, j]
                        for q in range(nq):
                            pad[uidx(q + off)] += wv * acc[q]
            for iy in range(h):
                base = (iy + pt) * wp + pl
                for ix in range(wd):
                    gx[c, n, iy, ix] = pad[uidx(base + ix)]


@kernel(fastmath=REASSOC)
def depthwise_bwd_weight(gy, x, gw, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    """gw = the weight gradient of depthwise_fwd (overwrites gw), summed in float64."""
    nm, nb, ho, wo = gy.shape
    nc, _, h, wd = x.shape
    kh, kw = gw.shape[2], gw.shape[3]
    mult = nm // nc
    for m in prange(nm):
        for i in range(kh):
            ylo, yhi = _span(i * dh - pt, sh, h, ho)
            for j in range(kw):
                xlo, xhi = _span(j * dw - pl, sw, wd, wo)
                acc = 0.0
                for n in range(nb):
                    src = x[m // mult, n]
                    for oy in range(ylo, yhi):
                        srow = src[oy * sh + i * dh - pt]
                        grow = gy[m, n, oy]
                        for ox in range(xlo, xhi):
                            acc += grow[ox] * srow[uidx(ox * sw + j * dw - pl)]
                gw[m, 0, i, j] = acc
