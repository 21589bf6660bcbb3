"""Gemm and MatMul on a shared-memory tiled matmul kernel, mirroring
runtime/kernels/gemm.py: forward and the gradients of both operands and the bias.

`matmul(a, b, c, ...)`: c = alpha * op(a) @ op(b) + beta * d, batched over the two leading
logical axes of 4-D views (launch.as4) with numpy broadcasting, op() an optional
transpose of the last two axes, d any array broadcast to c (c itself to accumulate; not
read when beta == 0). Each block computes TILE x TILE outputs of one batch entry at a
time, staging TILE-wide slices of both operands in shared memory; blocks stride over
the tiles so that the grid can be capped. Sums are float32, as BLAS's.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from .elementwise import reduce_to, scale
from .launch import MAX_BLOCKS, SIM, TILE, as4, bidx, ld4, logical4, st4

_GRID_CAP = MAX_BLOCKS if SIM else 65535


@cuda.jit(device=True, inline=True)
def _op_ld(a, sw, trans, j0, j1, i, k):
    """op(a)[i, k] of batch entry (j0, j1) of a; 0 outside the matrix."""
    rows, cols = (a.shape[3], a.shape[2]) if trans else (a.shape[2], a.shape[3])
    if i >= rows or k >= cols:
        return float32(0.0)
    r, q = (k, i) if trans else (i, k)
    return a[j1, j0, r, q] if sw else a[j0, j1, r, q]


@cuda.jit(device=True, inline=True)
def _batch(a, sw, l0, l1):
    """Batch entry of a for output batch (l0, l1), with broadcasting."""
    b0, b1 = (a.shape[1], a.shape[0]) if sw else (a.shape[0], a.shape[1])
    return bidx(l0, b0), bidx(l1, b1)


@cuda.jit(cache=True)
def _matmul(a, sa, ta, b, sb, tb, c, sc, d, sd, alpha, beta):  # pragma: no cover
    ta_s = cuda.shared.array((TILE, TILE), float32)
    tb_s = cuda.shared.array((TILE, TILE), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    l0n, l1n = (c.shape[1], c.shape[0]) if sc else (c.shape[0], c.shape[1])
    m, n = c.shape[2], c.shape[3]
    kk = a.shape[2] if ta else a.shape[3]
    tm, tn = (m + TILE - 1) // TILE, (n + TILE - 1) // TILE
    for t in range(cuda.blockIdx.x, l0n * l1n * tm * tn, cuda.gridDim.x):
        bt, r = t // (tm * tn), t % (tm * tn)
        l0, l1 = bt // l1n, bt % l1n
        a0, a1 = _batch(a, sa, l0, l1)
        b0, b1 = _batch(b, sb, l0, l1)
        row, col = (r // tn) * TILE + ty, (r % tn) * TILE + tx
        acc = float32(0.0)
        for k0 in range(0, kk, TILE):
            ta_s[ty, tx] = _op_ld(a, sa, ta, a0, a1, row, k0 + tx)
            tb_s[ty, tx] = _op_ld(b, sb, tb, b0, b1, k0 + ty, col)
            cuda.syncthreads()
            for k in range(TILE):
                acc += ta_s[ty, k] * tb_s[k, tx]
            cuda.syncthreads()
        if row < m and col < n:
            v = alpha * acc
            if beta != 0:
                d0, d1 = _batch(d, sd, l0, l1)
                v += beta * ld4(d, sd, d0, d1, bidx(row, d.shape[2]), bidx(col, d.shape[3]))
            st4(c, sc, l0, l1, row, col, v)


def matmul(
    a,
    b,
    c,
    *,
    ta: bool = False,
    tb: bool = False,
    sa: bool = False,
    sb: bool = False,
    sc: bool = False,
    alpha: float = 1.0,
    beta: float = 0.0,
    d=None,
    sd: bool = False,
) -> None:
    """c = alpha * op(a) @ op(b) + beta * d over logical 4-D views (see module doc)."""
    (a4, sa), (b4, sb), (c4, sc) = as4(a, sa), as4(b, sb), as4(c, sc)
    d4, sd = as4(d, sd) if d is not None else (c4, sc)
    lc = logical4(c4, sc)
    ka, kb = (a4.shape[2] if ta else a4.shape[3]), (b4.shape[3] if tb else b4.shape[2])
    rows = a4.shape[3] if ta else a4.shape[2]
    cols = b4.shape[2] if tb else b4.shape[3]
    if ka != kb or (rows, cols) != lc[2:]:
        raise ValueError(f"matmul: op(a) {a.shape} ta={ta}, op(b) {b.shape} tb={tb}, c {c.shape}")
    tiles = lc[0] * lc[1] * math.ceil(lc[2] / TILE) * math.ceil(lc[3] / TILE)
    grid = max(1, min(tiles, _GRID_CAP))
    args = (a4, sa, ta, b4, sb, tb, c4, sc, d4, sd, np.float32(alpha), np.float32(beta))
    _matmul[grid, (TILE, TILE)](*args)


def gemm_fwd(a, b, c, y, alpha: float, beta: float, trans_a: bool, trans_b: bool) -> None:
    """y = alpha * a' @ b' + beta * c (c broadcast to y; may be None)."""
    bias = c is not None and beta != 0.0
    matmul(a, b, y, ta=trans_a, tb=trans_b, alpha=alpha, beta=beta if bias else 0.0, d=c)


def gemm_bwd(gy, a, b, ga, gb, gc, alpha: float, beta: float, trans_a: bool, trans_b: bool):
    """Gradients of gemm_fwd into ga, gb, gc (each None when not needed)."""
    if ga is not None:
        if trans_a:
            matmul(b, gy, ga, ta=trans_b, tb=True, alpha=alpha)
        else:
            matmul(gy, b, ga, tb=not trans_b, alpha=alpha)
    if gb is not None:
        if trans_b:
            matmul(gy, a, gb, ta=True, tb=trans_a, alpha=alpha)
        else:
            matmul(a, gy, gb, ta=not trans_a, alpha=alpha)
    if gc is not None:
        reduce_to(gy, gc)
        scale(gc, beta)


def matmul_fwd(a, sa: bool, b, sb: bool, y, sy: bool) -> None:
    """y = a @ b (numpy matmul of logical views, batch axes broadcast)."""
    matmul(a, b, y, sa=sa, sb=sb, sc=sy)


def matmul_bwd_operand(gy, sgy, other, so, g, sg, tmp, left: bool) -> None:
    """Gradient of one MatMul operand: left -> gy @ other^T, right -> other^T @ gy, summed
    over broadcast batch axes through `tmp` (the full batch shape) when g is smaller."""
    g4, sg4 = as4(g, sg)
    gy4, sgy4 = as4(gy, sgy)
    o4 = as4(other, so)[0]
    rows, cols = (gy4.shape[2], o4.shape[2]) if left else (o4.shape[3], gy4.shape[3])
    full = (*logical4(gy4, sgy4)[:2], rows, cols)
    out, sout = (g, sg) if logical4(g4, sg4) == full else (tmp, False)
    if left:
        matmul(gy, other, out, sa=sgy, sb=so, tb=True, sc=sout)
    else:
        matmul(other, gy, out, sa=so, sb=sgy, ta=True, sc=sout)
    if out is not g:
        reduce_to(tmp, g, out_swap=sg)
