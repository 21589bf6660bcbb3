"""Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions over channel-major activations:
each 2x2 block of output pixels ("tile") is computed from the 4x4 input patch under it
with 16 multiplications per channel pair instead of 36, so a convolution costs 16 BLAS
matmuls of 4/9 the work of im2col's one.

    y_tile = A^T [ sum_c (G g_mc G^T) * (B^T d_c B) ] A      (* elementwise, 4x4)

Forward: `weight_transform` gives U [16, M, C] (U[ab] = (G g G^T)[a, b], one matmul by
GG = G (x) G), `input_transform` V [16, C, T] (V[ab][c, t] = (B^T d B)[a, b] of tile t's
patch of channel c, zero-padded), one matmul per ab gives P [16, M, T] = U @ V, and
`output_transform` yields y (cropped, bias added). Tiles run t = (n*th + ty)*tw + tx over
a th x tw grid covering Ho x Wo.

The input gradient is the same convolution of gy with the kernel rotated by 180 degrees
and transposed (`weight_transform` by GG_FLIPPED, U^T in the matmuls), padded by 2 - p on
each side (pads up to 2), over tiles of the input's grid. The weight gradient is the
adjoint of the forward: gW = G^T [ sum_t (A gy_t A^T) * (B^T d_t B) ] G, i.e.
`output_adjoint` of gy (Y [16, M, T]), one matmul per ab (Y @ V^T: [16, M, C]) and one by
GG^T.

Where it pays: the transforms are memory-bound passes over 4x the activation, while the
matmuls save 5/9 of work that grows with the channel count, so it is chosen from
WINOGRAD_MIN_CHANNELS input channels on (kernels/conv.py). The 16 matrices of V and P lie
SKEW elements apart: a power of two of bytes apart, the transforms' 16 streams would
share cache sets (the weight gradient's adjoint ran 3x slower).

Numerically F(2x2, 3x3) is the tame one of the family (its transforms hold only 0, +-1/2
and +-1): float32 results differ from the direct sum by a few ulps of the inputs' scale.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .conv_padded import CHUNKS, _place, uidx
from .dispatch import kernel

TAPS = 16  # positions of a 4x4 transformed tile
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
GG = np.kron(_G, _G)  # [16, 9]: U[ab] = sum over taps (i, j) of GG[ab, 3i + j] g[i, j]
GG_FLIPPED = np.ascontiguousarray(GG[:, ::-1])  # the same of g rotated by 180 degrees


def tiles(h: int, w: int) -> tuple[int, int]:
    """The tile grid (th, tw) covering an h x w output."""
    return -(-h // 2), -(-w // 2)


def scratch_size(th: int, tw: int) -> int:
    """Scratch elements input_transform needs per row: the zero-padded plane one channel's
    tiles read, (2th + 2) x (2tw + 2), and four rows of its width."""
    return (2 * th + 6) * (2 * tw + 2)


@njit(cache=True, inline="always")
def _at4(m0, m1, m2, m3):
    """A^T m for one column (or row) of a 4x4 product."""
    return m0 + m1 + m2, m1 - m2 - m3


@njit(cache=True, inline="always")
def _a2(g0, g1):
    """A g (the adjoint of _at4) for one column (or row) of a 2x2 output gradient."""
    return g0, g0 + g1, g0 - g1, -g1


@njit(cache=True, inline="always")
def _put4(u, b, i, col):
    """u[a*4 + b, i] = col[a] for a in 0..3 (one column of a 4x4 tile; i an index or a
    tuple of them)."""
    u[b, i] = col[0]
    u[4 + b, i] = col[1]
    u[8 + b, i] = col[2]
    u[12 + b, i] = col[3]


@kernel
def input_transform(x, v, pt, pl, th, tw, rows):  # pragma: no cover - compiled
    """v[ab, c, t] = (B^T d B)[a, b] of tile t's 4x4 patch d of channel c of x placed at
    (pt, pl) in a zero plane, through scratch rows of at least scratch_size(th, tw): the
    plane, then per row of tiles B^T down its four rows (4 rows of the plane's width),
    then B across each of those, both vectorized along the row."""
    nc, nb = x.shape[0], x.shape[1]
    wp = 2 * tw + 2
    plane = (2 * th + 2) * wp
    for k in prange(CHUNKS):
        pad, tmp = rows[k, :plane], rows[k, plane : plane + 4 * wp]
        for t in range(k, nc * nb, CHUNKS):
            c, n = t // nb, t % nb
            pad[:] = 0.0
            _place(x[c, n], pad, pt, pl, wp, 1, 1)
            for ty in range(th):
                _rows_bt(pad[2 * ty * wp : (2 * ty + 4) * wp], tmp, wp)
                row = (n * th + ty) * tw
                for a in range(4):
                    ta = tmp[a * wp : (a + 1) * wp]
                    _cols_bt(ta, v[4 * a : 4 * a + 4, c, row : row + tw], tw)


@njit(cache=True, inline="always")
def _rows_bt(d, tmp, wp):
    """tmp[a*wp + e] = (B^T d)[a, e] down the four rows of d (one loop per a: a single
    store stream each, so that they vectorize)."""
    for e in range(wp):
        tmp[uidx(e)] = d[uidx(e)] - d[uidx(2 * wp + e)]
    for e in range(wp):
        tmp[uidx(wp + e)] = d[uidx(wp + e)] + d[uidx(2 * wp + e)]
    for e in range(wp):
        tmp[uidx(2 * wp + e)] = d[uidx(2 * wp + e)] - d[uidx(wp + e)]
    for e in range(wp):
        tmp[uidx(3 * wp + e)] = d[uidx(wp + e)] - d[uidx(3 * wp + e)]


@njit(cache=True, inline="always")
def _cols_bt(ta, out, tw):
    """out[b, tx] = (t B)[b] across the 4 columns of tile tx of row ta."""
    o0, o1, o2, o3 = out[0], out[1], out[2], out[3]
    for tx in range(tw):
        o0[uidx(tx)] = ta[uidx(2 * tx)] - ta[uidx(2 * tx + 2)]
    for tx in range(tw):
        o1[uidx(tx)] = ta[uidx(2 * tx + 1)] + ta[uidx(2 * tx + 2)]
    for tx in range(tw):
        o2[uidx(tx)] = ta[uidx(2 * tx + 2)] - ta[uidx(2 * tx + 1)]
    for tx in range(tw):
        o3[uidx(tx)] = ta[uidx(2 * tx + 1)] - ta[uidx(2 * tx + 3)]


@kernel
def output_transform(p, y, bias, th, tw):  # pragma: no cover - compiled
    """y[m, n] = the tiles A^T p[:, m, t] A (4x4 -> 2x2) of sample n, cropped to y, plus
    bias[m] (bias may be empty)."""
    nm, nb, ho, wo = y.shape
    for t in prange(nm * nb):
        m, n = t // nb, t % nb
        add = bias[m] if bias.size else np.float32(0.0)
        pm, ym = p[:, m], y[m, n]
        for ty in range(th):
            row = (n * th + ty) * tw
            oy = 2 * ty
            for tx in range(tw):
                i = uidx(row + tx)
                h0 = _at4(pm[0, i], pm[1, i], pm[2, i], pm[3, i])
                h1 = _at4(pm[4, i], pm[5, i], pm[6, i], pm[7, i])
                h2 = _at4(pm[8, i], pm[9, i], pm[10, i], pm[11, i])
                h3 = _at4(pm[12, i], pm[13, i], pm[14, i], pm[15, i])
                c0 = _at4(h0[0], h1[0], h2[0], h3[0])
                c1 = _at4(h0[1], h1[1], h2[1], h3[1])
                ox = 2 * tx
                ym[oy, ox] = c0[0] + add
                if ox + 1 < wo:
                    ym[oy, ox + 1] = c1[0] + add
                if oy + 1 < ho:
                    ym[oy + 1, ox] = c0[1] + add
                    if ox + 1 < wo:
                        ym[oy + 1, ox + 1] = c1[1] + add


@kernel
def output_adjoint(gy, p, th, tw, rows):  # pragma: no cover - compiled
    """p[ab, m, t] = (A g A^T)[a, b] of tile t's 2x2 block g of gy[m] (zero beyond gy),
    through a zero plane of 2th x 2tw in scratch rows: the adjoint of output_transform."""
    nm, nb = gy.shape[0], gy.shape[1]
    wp = 2 * tw
    for k in prange(CHUNKS):
        pad = rows[k, : 2 * th * wp]
        for t in range(k, nm * nb, CHUNKS):
            m, n = t // nb, t % nb
            pad[:] = 0.0
            _place(gy[m, n], pad, 0, 0, wp, 1, 1)
            pm = p[:, m]
            for ty in range(th):
                row = (n * th + ty) * tw
                for tx in range(tw):
                    q = 2 * ty * wp + 2 * tx
                    r0 = _a2(pad[uidx(q)], pad[uidx(q + 1)])
                    r1 = _a2(pad[uidx(q + wp)], pad[uidx(q + wp + 1)])
                    i = uidx(row + tx)
                    _put4(pm, 0, i, _a2(r0[0], r1[0]))
                    _put4(pm, 1, i, _a2(r0[1], r1[1]))
                    _put4(pm, 2, i, _a2(r0[2], r1[2]))
                    _put4(pm, 3, i, _a2(r0[3], r1[3]))


NO_BIAS = np.zeros(0, np.float32)
SKEW = 16  # elements between the 16 matrices of V and of P (see the module's docstring)


def workspace(c: int, m: int, n: int, hw: tuple[int, int], ohw: tuple[int, int]) -> dict:
    """Workspace shapes (float32) of a convolution of x [C, N, H, W] into y [M, N, Ho, Wo]
    and of both its gradients: U, V, the products and the scratch rows."""
    (th, tw), (bh, bw) = tiles(*ohw), tiles(*hw)
    fwd, bwd = n * th * tw, n * bh * bw  # tiles of y, and of gx
    return {
        "wu": (TAPS * m * c,),
        "wv": (TAPS * (max(c * fwd, m * bwd) + SKEW),),
        "wp": (TAPS * (max(m * fwd, c * bwd) + SKEW),),
        "planes": (CHUNKS, max(scratch_size(th, tw), scratch_size(bh, bw))),
    }


def weight_transform(w, u, gg: np.ndarray) -> None:
    """u [16, M, C] = G w[m, c] G^T for each (m, c) of w [M, C, 3, 3], as one matmul
    (gg: GG, or GG_FLIPPED for the kernel rotated by 180 degrees)."""
    np.matmul(gg, w.reshape(-1, 9).T, out=u.reshape(TAPS, -1))


def _view(flat: np.ndarray, rows: int, cols: int, skew: int = 0) -> np.ndarray:
    """[16, rows, cols] in flat, `skew` elements between one ab's matrix and the next."""
    size = rows * cols
    rows_ = flat[: TAPS * (size + skew)].reshape(TAPS, size + skew)
    return rows_[:, :size].reshape(TAPS, rows, cols)


def _views(ws: dict, u: tuple[int, int], vp: tuple[int, int], t: int) -> tuple:
    """U [16, *u], V [16, vp[0], t] and the product [16, vp[1], t] in the workspace."""
    v, p = _view(ws["wv"], vp[0], t, SKEW), _view(ws["wp"], vp[1], t, SKEW)
    return _view(ws["wu"], *u), v, p


def conv_fwd(x, w, bias, y, ws: dict, pads: tuple[int, int, int, int]) -> None:
    """y = conv(x, w) + bias (bias may be empty): 3x3, stride 1, the given pads."""
    c, n = x.shape[:2]
    m, _, ho, wo = y.shape
    th, tw = tiles(ho, wo)
    u, v, p = _views(ws, (m, c), (c, m), n * th * tw)
    weight_transform(w, u, GG)
    input_transform(x, v, pads[0], pads[1], th, tw, ws["planes"])
    np.matmul(u, v, out=p)
    output_transform(p, y, bias, th, tw)


def conv_bwd_input(gy, w, gx, ws: dict, pads: tuple[int, int, int, int]) -> None:
    """gx = the input gradient of conv_fwd applied to gy (overwrites gx): the forward
    convolution of gy with w rotated and transposed, padded by 2 - pads."""
    m, n = gy.shape[:2]
    c = gx.shape[0]
    th, tw = tiles(*gx.shape[2:])
    u, v, p = _views(ws, (m, c), (m, c), n * th * tw)
    weight_transform(w, u, GG_FLIPPED)
    input_transform(gy, v, 2 - pads[0], 2 - pads[1], th, tw, ws["planes"])
    np.matmul(u.transpose(0, 2, 1), v, out=p)
    output_transform(p, gx, NO_BIAS, th, tw)


def conv_bwd_weight(gy, x, gw, ws: dict, pads: tuple[int, int, int, int]) -> None:
    """gw = the weight gradient of conv_fwd from gy and x (overwrites gw)."""
    c, n = x.shape[:2]
    m, _, ho, wo = gy.shape
    th, tw = tiles(ho, wo)
    s, v, p = _views(ws, (m, c), (c, m), n * th * tw)
    input_transform(x, v, pads[0], pads[1], th, tw, ws["planes"])
    output_adjoint(gy, p, th, tw, ws["planes"])
    np.matmul(p, v.transpose(0, 2, 1), out=s)
    np.matmul(s.reshape(TAPS, -1).T, GG, out=gw.reshape(-1, 9))  # gw = G^T s G
