"""2-D convolution over channel-major activations on CUDA, mirroring
runtime/kernels/conv.py: x [C, N, H, W], w [M, C/groups, kh, kw], y [M, N, Ho, Wo].

Paths: a plain matmul for pointwise convolutions (1x1, stride 1, no padding); im2col
onto the tiled matmul (per group) for everything else but depthwise, which has direct
kernels. Backward of the input is a matmul then col2im written as a gather (each input
cell sums the columns that read it), so no two threads write one cell and results do not
depend on scheduling. Weight and bias sums accumulate in float64, one block per output.
"""

from __future__ import annotations

from numba import cuda, float64

from ..conv import ConvGeom, _check
from .elementwise import add_bias
from .gemm import matmul
from .launch import THREADS, blocks, source_of, tap, tree_sum, unravel4


@cuda.jit(cache=True)
def _im2col(x, cols, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):  # pragma: no cover
    nc, nb, h, w = x.shape
    ncols = cols.shape[1]
    for t in range(cuda.grid(1), cols.size, cuda.gridsize(1)):
        r, q = t // ncols, t % ncols
        c, ij = r // (kh * kw), r % (kh * kw)
        n, p = q // (ho * wo), q % (ho * wo)
        iy = tap(p // wo, ij // kw, sh, dh, pt, h)
        ix = tap(p % wo, ij % kw, sw, dw, pl, w)
        cols[r, q] = x[c, n, iy, ix] if iy >= 0 and ix >= 0 else 0.0


@cuda.jit(cache=True)
def _col2im(cols, gx, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo):  # pragma: no cover
    nc, nb, h, w = gx.shape
    for t in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        c, n, iy, ix = unravel4(t, nb, h, w)
        acc = float64(0.0)
        for i in range(kh):
            oy = source_of(iy, i, sh, dh, pt, ho)
            if oy < 0:
                continue
            for j in range(kw):
                ox = source_of(ix, j, sw, dw, pl, wo)
                if ox >= 0:
                    acc += cols[(c * kh + i) * kw + j, (n * ho + oy) * wo + ox]
        gx[c, n, iy, ix] = acc


@cuda.jit(cache=True)
def _depthwise_fwd(x, w, y, sh, sw, pt, pl, dh, dw):  # pragma: no cover
    nm, nb, ho, wo = y.shape
    nc, _, h, wd = x.shape
    kh, kw, mult = w.shape[2], w.shape[3], nm // nc
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        m, n, oy, ox = unravel4(t, nb, ho, wo)
        acc = float64(0.0)
        for i in range(kh):
            iy = tap(oy, i, sh, dh, pt, h)
            for j in range(kw):
                ix = tap(ox, j, sw, dw, pl, wd)
                if iy >= 0 and ix >= 0:
                    acc += w[m, 0, i, j] * x[m // mult, n, iy, ix]
        y[m, n, oy, ox] = acc


@cuda.jit(cache=True)
def _depthwise_bwd_input(gy, w, gx, sh, sw, pt, pl, dh, dw):  # pragma: no cover
    nm, nb, ho, wo = gy.shape
    nc, _, h, wd = gx.shape
    kh, kw, mult = w.shape[2], w.shape[3], nm // nc
    for t in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        c, n, iy, ix = unravel4(t, nb, h, wd)
        acc = float64(0.0)
        for m in range(c * mult, (c + 1) * mult):
            for i in range(kh):
                oy = source_of(iy, i, sh, dh, pt, ho)
                for j in range(kw):
                    ox = source_of(ix, j, sw, dw, pl, wo)
                    if oy >= 0 and ox >= 0:
                        acc += w[m, 0, i, j] * gy[m, n, oy, ox]
        gx[c, n, iy, ix] = acc


@cuda.jit(cache=True)
def _depthwise_bwd_weight(gy, x, gw, sh, sw, pt, pl, dh, dw):  # pragma: no cover
    buf = cuda.shared.array(THREADS, float64)
    tid = cuda.threadIdx.x
    nm, nb, ho, wo = gy.shape
    nc, _, h, wd = x.shape
    kh, kw, mult = gw.shape[2], gw.shape[3], nm // nc
    for r in range(cuda.blockIdx.x, gw.size, cuda.gridDim.x):
        m, i, j = r // (kh * kw), (r // kw) % kh, r % kw
        acc = float64(0.0)
        for q in range(tid, nb * ho * wo, THREADS):
            n, oy, ox = q // (ho * wo), (q // wo) % ho, q % wo
            iy, ix = tap(oy, i, sh, dh, pt, h), tap(ox, j, sw, dw, pl, wd)
            if iy >= 0 and ix >= 0:
                acc += gy[m, n, oy, ox] * x[m // mult, n, iy, ix]
        buf[tid] = acc
        total = tree_sum(buf, tid)
        if tid == 0:
            gw[m, 0, i, j] = total


@cuda.jit(cache=True)
def _channel_sum(g, out):  # pragma: no cover - compiled
    buf = cuda.shared.array(THREADS, float64)
    tid = cuda.threadIdx.x
    na, nc, npix = g.shape
    for c in range(cuda.blockIdx.x, nc, cuda.gridDim.x):
        acc = float64(0.0)
        for q in range(tid, na * npix, THREADS):
            acc += g[q // npix, c, q % npix]
        buf[tid] = acc
        total = tree_sum(buf, tid)
        if tid == 0:
            out[c] = total


def channel_sum(g, out) -> None:
    """out[c] = sum over a and p of g[a, c, p], accumulated in float64."""
    _channel_sum[blocks(g.shape[1] * THREADS), THREADS](g, out)


def conv_path(g: ConvGeom, c_in: int) -> str:
    """Which implementation runs a convolution on CUDA: pointwise, im2col or depthwise."""
    if g.depthwise(c_in):
        return "depthwise"
    return "pointwise" if g.pointwise and g.groups == 1 else "im2col"


def conv_workspace(g: ConvGeom, x_shape: tuple, y_shape: tuple) -> dict[str, tuple]:
    """Workspace shapes (float32) of a convolution of logical NCHW shapes x -> y."""
    n, c = x_shape[:2]
    if conv_path(g, c) != "im2col":
        return {}
    return {"cols": (c * g.kh * g.kw, n * y_shape[2] * y_shape[3])}


def _cols(ws: dict, g: ConvGeom, c: int, n: int, ho: int, wo: int):
    """The im2col matrix [C*kh*kw, N*Ho*Wo] over the front of ws["cols"]."""
    rows, cols = c * g.kh * g.kw, n * ho * wo
    return ws["cols"].reshape(-1)[: rows * cols].reshape(rows, cols)


def _by_group(a, groups: int):
    """[G*k, ...] -> [G, k, prod(...)] (a contiguous device array)."""
    return a.reshape(groups, a.shape[0] // groups, -1)


def _geom(g: ConvGeom) -> tuple:
    return g.sh, g.sw, g.pt, g.pl, g.dh, g.dw


def _lower(kernel, src, dst, g: ConvGeom, ho: int, wo: int, size: int) -> None:
    args = (g.kh, g.kw, *_geom(g), ho, wo)
    kernel[blocks(size), THREADS](src, dst, *args)


def conv2d_fwd(x, w, b, y, ws: dict, g: ConvGeom) -> None:
    """y = conv(x, w) + b (b may be None) using the workspace arrays `ws`."""
    _check(x.shape, w.shape, y.shape, g)
    m, n, ho, wo = y.shape
    path = conv_path(g, x.shape[0])
    if path == "depthwise":
        _depthwise_fwd[blocks(y.size), THREADS](x, w, y, *_geom(g))
    elif path == "pointwise":
        matmul(w.reshape(m, -1), x.reshape(x.shape[0], -1), y.reshape(m, -1))
    else:
        cols = _cols(ws, g, x.shape[0], n, ho, wo)
        _lower(_im2col, x, cols, g, ho, wo, cols.size)
        gs = g.groups
        matmul(_by_group(w, gs), _by_group(cols, gs), _by_group(y, gs))
    if b is not None:
        add_bias(y.reshape(1, m, -1), b)


def conv2d_bwd_input(gy, w, gx, ws: dict, g: ConvGeom) -> None:
    """gx = d conv(x, w) / dx applied to gy (overwrites gx)."""
    _check(gx.shape, w.shape, gy.shape, g)
    m, n, ho, wo = gy.shape
    path = conv_path(g, gx.shape[0])
    if path == "depthwise":
        _depthwise_bwd_input[blocks(gx.size), THREADS](gy, w, gx, *_geom(g))
    elif path == "pointwise":
        matmul(w.reshape(m, -1), gy.reshape(m, -1), gx.reshape(gx.shape[0], -1), ta=True)
    else:
        cols = _cols(ws, g, gx.shape[0], n, ho, wo)
        gs = g.groups
        matmul(_by_group(w, gs), _by_group(gy, gs), _by_group(cols, gs), ta=True)
        _lower(_col2im, cols, gx, g, ho, wo, gx.size)


def conv2d_bwd_weight(gy, x, gw, gb, ws: dict, g: ConvGeom) -> None:
    """gw = d loss / d w and gb = d loss / d b (either may be None) from gy and the
    input x."""
    m = gy.shape[0]
    if gb is not None:
        channel_sum(gy.reshape(1, m, -1), gb)
    if gw is None:
        return
    _check(x.shape, gw.shape, gy.shape, g)
    n, ho, wo = gy.shape[1:]
    path = conv_path(g, x.shape[0])
    if path == "depthwise":
        _depthwise_bwd_weight[blocks(gw.size * THREADS), THREADS](gy, x, gw, *_geom(g))
        return
    src = x.reshape(x.shape[0], -1)
    if path == "im2col":
        src = _cols(ws, g, x.shape[0], n, ho, wo)
        _lower(_im2col, x, src, g, ho, wo, src.size)
    gs = g.groups
    matmul(_by_group(gy, gs), _by_group(src, gs), _by_group(gw, gs), tb=True)
