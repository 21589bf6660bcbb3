"""2-D convolution over channel-major activations: x is stored [C, N, H, W] (the NCHW
tensor with its first two axes swapped), so that a whole batch is one matrix [C, N*H*W]
and a convolution is one BLAS matmul per direction. Paths (`conv_path`): a plain matmul
for pointwise convolutions (1x1, stride 1, no padding); im2col/col2im lowering onto a
matmul for k x k; for stride-1 k x k whose padded planes are not much larger than the
output ("shifted"), no lowering at all: the input is laid out once as zero-padded planes
in a row per channel (kernels/conv_padded.py), and each kernel tap (i, j) is one BLAS
sgemm (kernels/blas.py) of its weight slice with that row shifted by i*dh*Wp + j*dw,
summed into the output planes (beta = 1), whose garbage border is then cropped (bias
added on the way). Backward runs the same sums transposed. Without that sgemm, wide
stride-1 planes take im2col over padded planes ("padded") instead. 3x3 stride-1
convolutions of at least WINOGRAD_MIN_CHANNELS input channels take Winograd F(2x2, 3x3)
(kernels/winograd.py): 16 matmuls of 4/9 the work, between transforms of the tiles.
Depthwise convolutions (groups == C_in) have kernels of their own (kernels/depthwise.py).

Shapes: x [C, N, H, W], w [M, C/groups, kh, kw] (as ONNX), y [M, N, Ho, Wo]. The
workspace each path needs is `conv_workspace(...)`, given back as a dict of arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import prange

from . import blas, winograd
from . import conv_padded as padded
from .conv_padded import _span, uidx
from .depthwise import (
    depthwise_bwd_input,
    depthwise_bwd_weight,
    depthwise_fwd,
    depthwise_workspace,
)
from .dispatch import REASSOC, kernel
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


@kernel
def im2col(x, cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):  # pragma: no cover - compiled
    """cols[(c*kh + i)*kw + j, (n*ho + oy)*wo + ox] = x[c, n, oy*sh + i*dh - pt,
    ox*sw + j*dw - pl] (zero outside x)."""
    nc, nb, h, w = x.shape
    for t in prange(nc * nb):
        c, n = t // nb, t % nb
        for i in range(kh):
            ylo, yhi = _span(i * dh - pt, sh, h, ho)
            for j in range(kw):
                r = (c * kh + i) * kw + j
                off = j * dw - pl
                xlo, xhi = _span(off, sw, w, wo)
                for oy in range(ho):
                    base = (n * ho + oy) * wo
                    if oy < ylo or oy >= yhi:
                        for ox in range(wo):
                            cols[r, base + ox] = 0.0
                        continue
                    iy = oy * sh + i * dh - pt
                    for ox in range(xlo):
                        cols[r, base + ox] = 0.0
                    if sw == 1:  # unit stride: a vectorizable copy
                        for ox in range(xlo, xhi):
                            cols[r, base + ox] = x[c, n, iy, uidx(ox + off)]
                    else:
                        for ox in range(xlo, xhi):
                            cols[r, base + ox] = x[c, n, iy, uidx(ox * sw + off)]
                    for ox in range(xhi, wo):
                        cols[r, base + ox] = 0.0


@kernel
def col2im(cols, gx, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):  # pragma: no cover - compiled
    """gx = the adjoint of im2col applied to cols (overwrites gx)."""
    nc, nb, h, w = gx.shape
    for t in prange(nc * nb):
        c, n = t // nb, t % nb
        for iy in range(h):
            for ix in range(w):
                gx[c, n, iy, ix] = 0.0
        for i in range(kh):
            ylo, yhi = _span(i * dh - pt, sh, h, ho)
            for j in range(kw):
                r = (c * kh + i) * kw + j
                off = j * dw - pl
                xlo, xhi = _span(off, sw, w, wo)
                for oy in range(ylo, yhi):
                    base = (n * ho + oy) * wo
                    iy = oy * sh + i * dh - pt
                    if sw == 1:
                        for ox in range(xlo, xhi):
                            gx[c, n, iy, uidx(ox + off)] += cols[r, base + ox]
                    else:
                        for ox in range(xlo, xhi):
                            gx[c, n, iy, uidx(ox * sw + off)] += cols[r, base + ox]


@kernel(fastmath=REASSOC)
def channel_sum(g, out):  # pragma: no cover - compiled
    """out[c] = sum over a and p of g[a, c, p], accumulated in float64."""
    na, nc, npix = g.shape
    for c in prange(nc):
        acc = 0.0
        for a in range(na):
            for p in range(npix):
                acc += g[a, c, p]
        out[c] = acc


def _dw_args(g: ConvGeom) -> tuple:
    return g.sh, g.sw, g.pt, g.pl, g.pb, g.pr, g.dh, g.dw


def _planes_args(g: ConvGeom, ho: int, wo: int) -> tuple:
    return g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.pb, g.pr, g.dh, g.dw, ho, wo


def _im2col(x, cols, ws: dict, g: ConvGeom, ho: int, wo: int) -> None:
    """cols = im2col of x: through padded planes in scratch rows where the kernel has
    taps to shift (several times faster on small planes), else directly (1x1 strided)."""
    if "planes" in ws:
        padded.im2col_planes(x, cols, *_planes_args(g, ho, wo), ws["planes"])
    else:
        im2col(x, cols, *_geom_args(g, ho, wo))


def _geom_args(g: ConvGeom, ho: int, wo: int) -> tuple:
    return g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw, ho, wo


def _check(x_shape: tuple, w_shape: tuple, y_shape: tuple, g: ConvGeom) -> None:
    c, n, h, wd = x_shape
    m, cg, kh, kw = w_shape
    expect = (m, n, *g.out_hw(h, wd))
    if (cg * g.groups, kh, kw) != (c, g.kh, g.kw) or y_shape != expect or m % g.groups:
        raise ValueError(f"conv2d: x {x_shape}, w {w_shape}, y {y_shape} disagree with {g}")


PADDED_MIN_WIDTH = 16  # output columns from which padded-plane im2col beats plain im2col
SHIFTED_MAX_WASTE = 1.6  # padded plane / output plane area up to which shifted wins
SHIFTED_MIN_CHANNELS = 8  # input channels (each tap's matmul depth) from which it wins
WINOGRAD_MIN_CHANNELS = 32  # input channels from which Winograd's transforms pay off
NO_BIAS = np.zeros(0, np.float32)


def conv_path(g: ConvGeom, c_in: int, wo: int, hw: tuple[int, int] = (0, 0)) -> str:
    """Which implementation runs a convolution: pointwise, winograd, shifted, im2col,
    padded or depthwise. `hw` is the input's height and width (it decides for shifted)."""
    if g.depthwise(c_in):
        return "depthwise"
    if g.pointwise and g.groups == 1:
        return "pointwise"
    if _winograd_fits(g) and c_in >= WINOGRAD_MIN_CHANNELS:
        return "winograd"
    if g.groups == 1 and g.sh == g.sw == 1:
        hp, wp = _padded_hw(g, *hw)
        ho, wo_ = g.out_hw(*hw)
        fits = hp * wp <= SHIFTED_MAX_WASTE * ho * wo_ and c_in >= SHIFTED_MIN_CHANNELS
        if blas.has_sgemm() and fits:
            return "shifted"
        if wo >= PADDED_MIN_WIDTH:
            return "padded"
    return "im2col"


def _winograd_fits(g: ConvGeom) -> bool:
    """3x3, stride 1, no dilation or groups, pads up to 2 (the input gradient's are 2 - p)."""
    pads = (g.pt, g.pl, g.pb, g.pr)
    plain = g.groups == 1 and g.sh == g.sw == g.dh == g.dw == 1 and not g.ceil
    return plain and g.kh == g.kw == 3 and max(pads) <= 2


def _pads(g: ConvGeom) -> tuple[int, int, int, int]:
    return g.pt, g.pl, g.pb, g.pr


def _padded_hw(g: ConvGeom, h: int, w: int) -> tuple[int, int]:
    return h + g.pt + g.pb, w + g.pl + g.pr


def conv_workspace(g: ConvGeom, x_shape: tuple, y_shape: tuple) -> dict[str, tuple]:
    """Workspace shapes (float32) of a convolution of logical NCHW shapes x -> y."""
    n, c, h, w = x_shape
    m, ho, wo = y_shape[1:]
    path = conv_path(g, c, wo, (h, w))
    if path == "depthwise":
        return {"planes": depthwise_workspace(g, h, w)}
    if path == "winograd":
        return winograd.workspace(c, m, n, (h, w), (ho, wo))
    if path == "shifted":
        hp, wp = _padded_hw(g, h, w)
        return {
            "xpad": (c, n * hp * wp + _slack(g, wp)),
            "ypad": (m, n * hp * wp),
            "wtap": (g.kh * g.kw, m, c),
        }
    if path == "im2col":
        cols = {"cols": (c * g.kh * g.kw, n * ho * wo)}
        if g.kh * g.kw == 1:
            return cols
        return cols | {"planes": (padded.CHUNKS, (h + g.pt + g.pb) * (w + g.pl + g.pr))}
    if path == "padded":
        hp, wp = h + g.pt + g.pb, w + g.pl + g.pr
        return {
            "xpad": (c, n, hp * wp + (g.kw - 1) * g.dw),
            "cols": (c * g.kh * g.kw, n * ho * wp),
            "ypad": (m, n * ho * wp),
        }
    return {}


def _slack(g: ConvGeom, wp: int) -> int:
    """Zero columns after the last padded plane: the farthest tap's shift."""
    return (g.kh - 1) * g.dh * wp + (g.kw - 1) * g.dw


def _taps(g: ConvGeom, wp: int):
    """(tap index, shift along a row of padded planes) of each kernel tap (i, j)."""
    for i in range(g.kh):
        for j in range(g.kw):
            yield i * g.kw + j, i * g.dh * wp + j * g.dw


def _shifted_fwd(x, w, b, y, ws: dict, g: ConvGeom) -> None:
    c, n, h, wd = x.shape
    m = y.shape[0]
    (hp, wp), xpad, ypad, wtap = _padded_hw(g, h, wd), ws["xpad"], ws["ypad"], ws["wtap"]
    padded.to_planes(x, xpad, g.pt, g.pl, hp, wp)
    np.copyto(wtap.reshape(g.kh, g.kw, m, c), w.transpose(2, 3, 0, 1))
    nq, ldx = ypad.shape[1], xpad.shape[1]
    x0, w0, y0 = xpad.ctypes.data, wtap.ctypes.data, ypad.ctypes.data
    for t, off in _taps(g, wp):
        beta = 1.0 if t else 0.0
        blas.sgemm(False, False, m, nq, c, w0 + 4 * t * m * c, c, x0 + 4 * off, ldx, beta, y0, nq)
    padded.from_planes(ypad, y, 0, 0, hp, wp, NO_BIAS if b is None else b)


def _shifted_bwd_input(gy, w, gx, ws: dict, g: ConvGeom) -> None:
    c, n, h, wd = gx.shape
    m = gy.shape[0]
    (hp, wp), gxpad, gypad, wtap = _padded_hw(g, h, wd), ws["xpad"], ws["ypad"], ws["wtap"]
    padded.to_planes(gy, gypad, 0, 0, hp, wp)
    np.copyto(wtap.reshape(g.kh, g.kw, m, c), w.transpose(2, 3, 0, 1))
    nq, ldx = gypad.shape[1], gxpad.shape[1]
    gxpad[:, nq:] = 0.0  # tap 0 (shift 0) writes the first nq columns, the rest add on
    x0, w0, y0 = gxpad.ctypes.data, wtap.ctypes.data, gypad.ctypes.data
    for t, off in _taps(g, wp):
        beta = 1.0 if t else 0.0
        blas.sgemm(True, False, c, nq, m, w0 + 4 * t * m * c, c, y0, nq, beta, x0 + 4 * off, ldx)
    padded.from_planes(gxpad, gx, g.pt, g.pl, hp, wp, NO_BIAS)


def _shifted_bwd_weight(gy, x, gw, ws: dict, g: ConvGeom) -> None:
    c, n, h, wd = x.shape
    m = gy.shape[0]
    (hp, wp), xpad, gypad, gtap = _padded_hw(g, h, wd), ws["xpad"], ws["ypad"], ws["wtap"]
    padded.to_planes(x, xpad, g.pt, g.pl, hp, wp)
    padded.to_planes(gy, gypad, 0, 0, hp, wp)
    nq, ldx = gypad.shape[1], xpad.shape[1]
    x0, g0, y0 = xpad.ctypes.data, gtap.ctypes.data, gypad.ctypes.data
    for t, off in _taps(g, wp):
        blas.sgemm(False, True, m, c, nq, y0, nq, x0 + 4 * off, ldx, 0.0, g0 + 4 * t * m * c, c)
    np.copyto(gw, gtap.reshape(g.kh, g.kw, m, c).transpose(2, 3, 0, 1))


def _by_group(a: np.ndarray, groups: int) -> np.ndarray:
    """[G*k, ...] -> [G, k, prod(...)]."""
    return a.reshape(groups, a.shape[0] // groups, -1)


def _wp(g: ConvGeom, w: int) -> int:
    return w + g.pl + g.pr


def _lower_padded(x: np.ndarray, ws: dict, g: ConvGeom, wp: int, ho: int) -> None:
    """ws["cols"] = the padded-plane im2col of x (through ws["xpad"])."""
    padded.pad_planes(x, ws["xpad"], g.pt, g.pl, wp)
    padded.im2col_padded(ws["xpad"], ws["cols"], g.kh, g.kw, g.dh, g.dw, wp, ho * wp)


def conv2d_fwd(x, w, b, y, ws: dict, g: ConvGeom) -> None:
    """y = conv(x, w) + b (b may be None) using the workspace arrays `ws`."""
    _check(x.shape, w.shape, y.shape, g)
    m, n, ho, wo = y.shape
    path = conv_path(g, x.shape[0], wo, x.shape[2:])
    if path == "shifted":
        _shifted_fwd(x, w, b, y, ws, g)
        return
    bias = NO_BIAS if b is None else b
    if path == "winograd":
        winograd.conv_fwd(x, w, bias, y, ws, _pads(g))
        return
    if path == "depthwise":
        depthwise_fwd(x, w, bias, y, *_dw_args(g), ws["planes"])
        return
    if path == "padded":
        wp = _wp(g, x.shape[3])
        _lower_padded(x, ws, g, wp, ho)
        np.matmul(w.reshape(m, -1), ws["cols"], out=ws["ypad"])
        padded.from_planes(ws["ypad"], y, 0, 0, ho, wp, bias)
        return
    if path == "pointwise":
        np.matmul(w.reshape(m, -1), x.reshape(x.shape[0], -1), out=y.reshape(m, -1))
    else:
        cols = ws["cols"]
        _im2col(x, cols, ws, g, ho, wo)
        np.matmul(_by_group(w, g.groups), _by_group(cols, g.groups), out=_by_group(y, g.groups))
    if b is not None:
        add_bias(y.reshape(1, m, -1), b)


def conv2d_bwd_input(gy, w, gx, ws: dict, g: ConvGeom) -> None:
    """gx = d conv(x, w) / dx applied to gy (overwrites gx)."""
    _check(gx.shape, w.shape, gy.shape, g)
    m, n, ho, wo = gy.shape
    path = conv_path(g, gx.shape[0], wo, gx.shape[2:])
    if path == "shifted":
        _shifted_bwd_input(gy, w, gx, ws, g)
    elif path == "winograd":
        winograd.conv_bwd_input(gy, w, gx, ws, _pads(g))
    elif path == "depthwise":
        depthwise_bwd_input(gy, w, gx, *_dw_args(g), ws["planes"])
    elif path == "pointwise":
        np.matmul(w.reshape(m, -1).T, gy.reshape(m, -1), out=gx.reshape(gx.shape[0], -1))
    elif path == "padded":
        wp = _wp(g, gx.shape[3])
        padded.pad_planes(gy, ws["ypad"].reshape(m, n, -1), 0, 0, wp)
        np.matmul(w.reshape(m, -1).T, ws["ypad"], out=ws["cols"])
        args = (g.kh, g.kw, g.dh, g.dw, wp, ho * wp)
        padded.col2im_padded(ws["cols"], ws["xpad"], *args)
        padded.crop(ws["xpad"], gx, g.pt, g.pl, wp)
    else:
        cols = ws["cols"]
        wt = _by_group(w, g.groups).transpose(0, 2, 1)
        np.matmul(wt, _by_group(gy, g.groups), out=_by_group(cols, g.groups))
        if "planes" in ws:
            padded.col2im_planes(cols, gx, *_planes_args(g, ho, wo), ws["planes"])
        else:
            col2im(cols, gx, *_geom_args(g, ho, wo))


def conv2d_bwd_weight(gy, x, gw, gb, ws: dict, g: ConvGeom) -> None:
    """gw = d loss / d w and gb = d loss / d b (either may be None) from gy and the
    input x."""
    m = gy.shape[0]
    if gb is not None:
        channel_sum(gy.reshape(1, m, -1), gb)
    if gw is None:
        return
    _check(x.shape, gw.shape, gy.shape, g)
    path = conv_path(g, x.shape[0], gy.shape[3], x.shape[2:])
    if path == "shifted":
        _shifted_bwd_weight(gy, x, gw, ws, g)
        return
    if path == "winograd":
        winograd.conv_bwd_weight(gy, x, gw, ws, _pads(g))
        return
    if path == "depthwise":
        depthwise_bwd_weight(gy, x, gw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw)
        return
    if path == "padded":
        wp = _wp(g, x.shape[3])
        _lower_padded(x, ws, g, wp, gy.shape[2])
        padded.pad_planes(gy, ws["ypad"].reshape(m, gy.shape[1], -1), 0, 0, wp)
        np.matmul(ws["ypad"], ws["cols"].T, out=gw.reshape(m, -1))
        return
    src = x.reshape(x.shape[0], -1)
    if path == "im2col":
        _im2col(x, ws["cols"], ws, g, gy.shape[2], gy.shape[3])
        src = ws["cols"]
    gs = _by_group(src, g.groups).transpose(0, 2, 1)
    np.matmul(_by_group(gy, g.groups), gs, out=_by_group(gw, g.groups))
