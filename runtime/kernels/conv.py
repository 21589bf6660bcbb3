"""2-D convolution, NCHW: im2col/col2im lowering onto BLAS matmuls, and a direct path for
depthwise convolutions (groups == C_in), where per-channel matmuls would be tiny.

Shapes: x [N, C, H, W], w [M, C/groups, kh, kw], y [N, M, Ho, Wo]. Workspaces the caller
gives: `cols` [N, C*kh*kw, Ho*Wo] (im2col, both directions) and `wsum` [N, M, C/groups*kh*kw]
(per-sample weight gradients before their sum). A pointwise convolution (1x1, stride 1,
no padding) needs neither `cols` nor col2im: it is one matmul per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .elementwise import add_bias


@dataclass(frozen=True)
class ConvGeom:
    """Kernel size, strides, pads (top, left, bottom, right), dilations and groups."""

    kh: int
    kw: int
    sh: int = 1
    sw: int = 1
    pt: int = 0
    pl: int = 0
    pb: int = 0
    pr: int = 0
    dh: int = 1
    dw: int = 1
    groups: int = 1
    ceil: bool = False  # pooling's ceil_mode: a last, partial window counts

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """Output height and width for an input of height h and width w."""
        return (
            _out_size(h, self.kh, self.sh, self.pt, self.pb, self.dh, self.ceil),
            _out_size(w, self.kw, self.sw, self.pl, self.pr, self.dw, self.ceil),
        )

    @property
    def pointwise(self) -> bool:
        """1x1, stride 1, no padding: the convolution is a plain matmul per sample."""
        pads = (self.pt, self.pl, self.pb, self.pr)
        return self.kh == self.kw == self.sh == self.sw == 1 and not any(pads)

    def depthwise(self, c_in: int) -> bool:
        """One group per input channel (any channel multiplier)."""
        return self.groups == c_in and c_in > 1


def _out_size(size: int, k: int, s: int, p0: int, p1: int, d: int, ceil: bool) -> int:
    span = size + p0 + p1 - d * (k - 1) - 1
    out = (span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p0:
        out -= 1
    return out


@njit(cache=True, inline="always")
def _span(off: int, stride: int, size: int, n_out: int) -> tuple[int, int]:
    """Outputs o in [lo, hi) read input o*stride + off inside [0, size)."""
    lo = 0 if off >= 0 else (-off + stride - 1) // stride
    hi = min((size - 1 - off) // stride + 1, n_out)
    hi = max(hi, 0)
    return min(lo, hi), hi


@njit(cache=True, parallel=True)
def im2col(x, cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):  # pragma: no cover - compiled
    """cols[n, (c*kh + i)*kw + j, oy*wo + ox] = x[n, c, oy*sh + i*dh - pt, ox*sw + j*dw - pl]
    (zero outside x)."""
    nb, nc, h, w = x.shape
    for t in prange(nb * nc):
        n, c = t // nc, t % nc
        for i in range(kh):
            ylo, yhi = _span(i * dh - pt, sh, h, ho)
            for j in range(kw):
                xlo, xhi = _span(j * dw - pl, sw, w, wo)
                row = cols[n, (c * kh + i) * kw + j]
                for oy in range(ho):
                    base = oy * wo
                    if oy < ylo or oy >= yhi:
                        row[base : base + wo] = 0.0
                        continue
                    src = x[n, c, oy * sh + i * dh - pt]
                    row[base : base + xlo] = 0.0
                    for ox in range(xlo, xhi):
                        row[base + ox] = src[ox * sw + j * dw - pl]
                    row[base + xhi : base + wo] = 0.0


@njit(cache=True, parallel=True)
def col2im(cols, gx, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):  # pragma: no cover - compiled
    """gx = the adjoint of im2col applied to cols (overwrites gx)."""
    nb, nc, h, w = gx.shape
    for t in prange(nb * nc):
        n, c = t // nc, t % nc
        plane = gx[n, c]
        plane[:, :] = 0.0
        for i in range(kh):
            ylo, yhi = _span(i * dh - pt, sh, h, ho)
            for j in range(kw):
                xlo, xhi = _span(j * dw - pl, sw, w, wo)
                row = cols[n, (c * kh + i) * kw + j]
                for oy in range(ylo, yhi):
                    dst = plane[oy * sh + i * dh - pt]
                    base = oy * wo
                    for ox in range(xlo, xhi):
                        dst[ox * sw + j * dw - pl] += row[base + ox]


@njit(cache=True, parallel=True)
def depthwise_fwd(x, w, y, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    """y[n, m] = sum_ij w[m, 0, i, j] * x[n, m // mult, shifted by (i, j)]."""
    nb, nm, ho, wo = y.shape
    _, nc, h, wd = x.shape
    kh, kw = w.shape[2], w.shape[3]
    mult = nm // nc
    for t in prange(nb * nm):
        n, m = t // nm, t % nm
        out = y[n, m]
        src = x[n, m // mult]
        out[:, :] = 0.0
        for i in range(kh):
            ylo, yhi = _span(i * dh - pt, sh, h, ho)
            for j in range(kw):
                xlo, xhi = _span(j * dw - pl, sw, wd, wo)
                wv = w[m, 0, i, j]
                for oy in range(ylo, yhi):
                    srow = src[oy * sh + i * dh - pt]
                    orow = out[oy]
                    for ox in range(xlo, xhi):
                        orow[ox] += wv * srow[ox * sw + j * dw - pl]


@njit(cache=True, parallel=True)
def depthwise_bwd_input(gy, w, gx, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    """gx = the input gradient of depthwise_fwd (overwrites gx)."""
    nb, nm, ho, wo = gy.shape
    _, nc, h, wd = gx.shape
    kh, kw = w.shape[2], w.shape[3]
    mult = nm // nc
    for t in prange(nb * nc):
        n, c = t // nc, t % nc
        dst = gx[n, c]
        dst[:, :] = 0.0
        for m in range(c * mult, (c + 1) * mult):
            g = gy[n, m]
            for i in range(kh):
                ylo, yhi = _span(i * dh - pt, sh, h, ho)
                for j in range(kw):
                    xlo, xhi = _span(j * dw - pl, sw, wd, wo)
                    wv = w[m, 0, i, j]
                    for oy in range(ylo, yhi):
                        drow = dst[oy * sh + i * dh - pt]
                        grow = g[oy]
                        for ox in range(xlo, xhi):
                            drow[ox * sw + j * dw - pl] += wv * grow[ox]


@njit(cache=True, parallel=True)
def depthwise_bwd_weight(gy, x, gw, sh, sw, pt, pl, dh, dw):  # pragma: no cover - compiled
    """gw = the weight gradient of depthwise_fwd (overwrites gw), summed in float64."""
    nb, nm, ho, wo = gy.shape
    _, nc, h, wd = x.shape
    kh, kw = gw.shape[2], gw.shape[3]
    mult = nm // nc
    for m in prange(nm):
        for i in range(kh):
            ylo, yhi = _span(i * dh - pt, sh, h, ho)
            for j in range(kw):
                xlo, xhi = _span(j * dw - pl, sw, wd, wo)
                acc = 0.0
                for n in range(nb):
                    src = x[n, m // mult]
                    for oy in range(ylo, yhi):
                        srow = src[oy * sh + i * dh - pt]
                        grow = gy[n, m, oy]
                        for ox in range(xlo, xhi):
                            acc += grow[ox] * srow[ox * sw + j * dw - pl]
                gw[m, 0, i, j] = acc


@njit(cache=True, parallel=True)
def channel_sum(g, out):  # pragma: no cover - compiled
    """out[c] = sum over n and p of g[n, c, p], accumulated in float64."""
    nb, nc, npix = g.shape
    for c in prange(nc):
        acc = 0.0
        for n in range(nb):
            for p in range(npix):
                acc += g[n, c, p]
        out[c] = acc


def _geom_args(g: ConvGeom, ho: int, wo: int) -> tuple:
    return g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw, ho, wo


def _check(x_shape: tuple, w_shape: tuple, y_shape: tuple, g: ConvGeom) -> None:
    n, c, h, wd = x_shape
    m, cg, kh, kw = w_shape
    expect = (n, m, *g.out_hw(h, wd))
    if (cg * g.groups, kh, kw) != (c, g.kh, g.kw) or y_shape != expect or m % g.groups:
        raise ValueError(f"conv2d: x {x_shape}, w {w_shape}, y {y_shape} disagree with {g}")


def _grouped(a: np.ndarray, groups: int) -> np.ndarray:
    """[N, G*k, P] -> [N, G, k, P]."""
    n, gk, p = a.shape
    return a.reshape(n, groups, gk // groups, p)


def conv2d_fwd(x, w, b, y, cols, g: ConvGeom) -> None:
    """y = conv(x, w) + b; b may be None; `cols` is unused for pointwise convolutions."""
    _check(x.shape, w.shape, y.shape, g)
    n, m, ho, wo = y.shape
    y3 = y.reshape(n, m, ho * wo)
    if g.depthwise(x.shape[1]):
        depthwise_fwd(x, w, y, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw)
    elif g.pointwise and g.groups == 1:
        np.matmul(w.reshape(m, -1), x.reshape(n, x.shape[1], -1), out=y3)
    else:
        im2col(x, cols, *_geom_args(g, ho, wo))
        w3 = w.reshape(g.groups, m // g.groups, -1)
        np.matmul(w3, _grouped(cols, g.groups), out=_grouped(y3, g.groups))
    if b is not None:
        add_bias(y3, b)


def conv2d_bwd_input(gy, w, gx, cols, g: ConvGeom) -> None:
    """gx = d conv(x, w) / dx applied to gy (overwrites gx); `cols` is col2im's workspace."""
    _check(gx.shape, w.shape, gy.shape, g)
    n, m, ho, wo = gy.shape
    gy3 = gy.reshape(n, m, ho * wo)
    if g.depthwise(gx.shape[1]):
        depthwise_bwd_input(gy, w, gx, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw)
    elif g.pointwise and g.groups == 1:
        np.matmul(w.reshape(m, -1).T, gy3, out=gx.reshape(n, gx.shape[1], -1))
    else:
        w3 = w.reshape(g.groups, m // g.groups, -1)
        np.matmul(w3.transpose(0, 2, 1), _grouped(gy3, g.groups), out=_grouped(cols, g.groups))
        col2im(cols, gx, *_geom_args(g, ho, wo))


def conv2d_bwd_weight(gy, x, gw, gb, cols, wsum, g: ConvGeom) -> None:
    """gw = d loss / d w and gb = d loss / d b (either may be None) from gy and the input x;
    `cols` holds im2col(x), `wsum` the per-sample weight gradients."""
    n, m, ho, wo = gy.shape
    gy3 = gy.reshape(n, m, ho * wo)
    if gb is not None:
        channel_sum(gy3, gb)
    if gw is None:
        return
    _check(x.shape, gw.shape, gy.shape, g)
    if g.depthwise(x.shape[1]):
        depthwise_bwd_weight(gy, x, gw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw)
        return
    if g.pointwise and g.groups == 1:
        src = x.reshape(n, x.shape[1], -1)
    else:
        im2col(x, cols, *_geom_args(g, ho, wo))
        src = cols
    gs = _grouped(src, g.groups)
    ws4 = wsum.reshape(n, g.groups, m // g.groups, -1)
    np.matmul(_grouped(gy3, g.groups), gs.transpose(0, 1, 3, 2), out=ws4)
    np.add.reduce(wsum, axis=0, out=gw.reshape(wsum.shape[1:]))
