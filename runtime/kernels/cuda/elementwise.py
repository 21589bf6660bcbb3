"""Elementwise CUDA kernels, mirroring runtime/kernels/elementwise.py: ReLU/Clip forward
fused with their 1-bit mask (the layout of `codecs.mask_encode`) and its application
backward, per-channel bias and spreads, broadcast Add/Sub/Mul/Div and the broadcast-aware
reduction of their backward, plus the fill/add/copy helpers that replace numpy's
in-place calls on device arrays."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .codec_kernels import mask_apply as _mask_apply
from .launch import THREADS, as4, bidx, blocks, ld4, logical4, st4, unravel4


@cuda.jit(cache=True)
def _clip_mask(x, y, bits, lo, hi):  # pragma: no cover - compiled
    n = x.size
    for b in range(cuda.grid(1), (n + 7) // 8, cuda.gridsize(1)):
        byte = 0
        for k in range(min(8, n - 8 * b)):
            v = x[8 * b + k]
            inside = v > lo and v < hi
            y[8 * b + k] = v if inside else (lo if v <= lo else hi)
            if inside:
                byte |= 1 << k
        bits[b] = byte


@cuda.jit(cache=True)
def _clip(x, y, lo, hi):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        y[i] = min(max(x[i], lo), hi)


@cuda.jit(cache=True)
def _fill(a, value):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = value


@cuda.jit(cache=True)
def _axpy(a, x, alpha):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] += alpha * x[i]


@cuda.jit(cache=True)
def _scale(a, s):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] *= s


@cuda.jit(cache=True)
def _copy(src, dst):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        dst[i] = src[i]


@cuda.jit(cache=True)
def _add_bias(y, b):  # pragma: no cover - compiled
    nb, nc, npix = y.shape
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        _, n, c, p = unravel4(t, nb, nc, npix)
        y[n, c, p] += b[c]


@cuda.jit(cache=True)
def _spread(g, scale, out):  # pragma: no cover - compiled
    nb, nc, npix = out.shape
    for t in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        _, n, c, p = unravel4(t, nb, nc, npix)
        out[n, c, p] = g[n, c] * scale


@cuda.jit(cache=True)
def _broadcast(a, sa, b, sb, y, sy, op, d1, d2, d3):  # pragma: no cover - compiled
    for k in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        i0, i1, i2, i3 = unravel4(k, d1, d2, d3)
        la, lb = a.shape, b.shape
        a0, a1 = (la[1], la[0]) if sa else (la[0], la[1])
        b0, b1 = (lb[1], lb[0]) if sb else (lb[0], lb[1])
        va = ld4(a, sa, bidx(i0, a0), bidx(i1, a1), bidx(i2, la[2]), bidx(i3, la[3]))
        vb = ld4(b, sb, bidx(i0, b0), bidx(i1, b1), bidx(i2, lb[2]), bidx(i3, lb[3]))
        if op == 0:
            v = va + vb
        elif op == 1:
            v = va * vb
        elif op == 2:
            v = va - vb
        else:
            v = va / vb
        st4(y, sy, i0, i1, i2, i3, v)


@cuda.jit(cache=True)
def _reduce(g, sg, o, so, use_o, out, sout, full, red):  # pragma: no cover - compiled
    """out[j] = sum over the reduced axes (red[k] == 1) of g * (o if use_o), where full is
    the logical shape of g and out keeps size 1 on the reduced axes."""
    r0, r1 = (full[0] if red[0] else 1), (full[1] if red[1] else 1)
    r2, r3 = (full[2] if red[2] else 1), (full[3] if red[3] else 1)
    ls = o.shape
    o0, o1 = (ls[1], ls[0]) if so else (ls[0], ls[1])
    e1, e2, e3 = (1 if red[1] else full[1]), (1 if red[2] else full[2]), (1 if red[3] else full[3])
    for j in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        j0, j1, j2, j3 = unravel4(j, e1, e2, e3)
        acc = 0.0
        for k in range(r0 * r1 * r2 * r3):
            k0, k1, k2, k3 = unravel4(k, r1, r2, r3)
            i0, i1, i2, i3 = j0 + k0, j1 + k1, j2 + k2, j3 + k3
            v = ld4(g, sg, i0, i1, i2, i3)
            if use_o:
                v *= ld4(o, so, bidx(i0, o0), bidx(i1, o1), bidx(i2, ls[2]), bidx(i3, ls[3]))
            acc += v
        st4(out, sout, j0, j1, j2, j3, acc)


def clip_mask_fwd(x, y, bits, lo: float, hi: float) -> None:
    """y = clip(x, lo, hi) and the mask of lo < x < hi, 1-D, in one pass (ReLU: lo=0)."""
    _clip_mask[blocks((x.size + 7) // 8), THREADS](x, y, bits, np.float32(lo), np.float32(hi))


def mask_bwd(bits, gy, gx) -> None:
    """gx = gy where the mask bit is set, else 0 (1-D; gx may be gy)."""
    _mask_apply[blocks(gy.size), THREADS](bits, gy, gx)


def clip(x, y, lo: float, hi: float) -> None:
    """y = clip(x, lo, hi), 1-D (eval mode: no mask)."""
    _clip[blocks(x.size), THREADS](x, y, np.float32(lo), np.float32(hi))


def fill(a, value: float) -> None:
    """a[...] = value for a contiguous device array of any dtype."""
    flat = a.reshape(-1)
    _fill[blocks(flat.size), THREADS](flat, a.dtype.type(value))


def add_into(a, x, alpha: float = 1.0) -> None:
    """a += alpha * x (same shape, contiguous)."""
    flat = a.reshape(-1)
    _axpy[blocks(flat.size), THREADS](flat, x.reshape(-1), a.dtype.type(alpha))


def scale(a, s: float) -> None:
    """a *= s in place (contiguous)."""
    if s != 1.0:
        flat = a.reshape(-1)
        _scale[blocks(flat.size), THREADS](flat, a.dtype.type(s))


def copy(src, dst) -> None:
    """dst = src, element for element in C order (both contiguous, same size)."""
    if src.size != dst.size:
        raise ValueError(f"copy: {src.shape} and {dst.shape} differ in size")
    flat = dst.reshape(-1)
    _copy[blocks(flat.size), THREADS](src.reshape(-1), flat)


def add_bias(y, b) -> None:
    """y[n, c, p] += b[c] for y [N, C, P]."""
    _add_bias[blocks(y.size), THREADS](y, b)


def spread(g, scale_: float, out) -> None:
    """out[n, c, p] = g[n, c] * scale (the backward of a mean over p)."""
    _spread[blocks(out.size), THREADS](g, np.float32(scale_), out)


def broadcast_op(a, sa: bool, b, sb: bool, y, sy: bool, op: int) -> None:
    """y = a + b, a * b, a - b or a / b (op: 0, 1, 2, 3 as elementwise.ADD, MUL, SUB, DIV)
    with numpy broadcasting of logical shapes, each array given with its channel-major
    flag (see launch.as4); y may be a or b when of y's shape."""
    (a4, sa), (b4, sb), (y4, sy) = as4(a, sa), as4(b, sb), as4(y, sy)
    d = logical4(y4, sy)
    _broadcast[blocks(y.size), THREADS](a4, sa, b4, sb, y4, sy, int(op), d[1], d[2], d[3])


def product_workspace(shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Scratch that reduce_to(..., other=) needs: none, the product is fused."""
    return {}


def reduce_to(g, out, g_swap=False, out_swap=False, other=None, o_swap=False, ws=None) -> None:
    """out = g (times `other`, broadcast, when given) summed over the axes along which an
    operand of out's logical shape was broadcast to g's (numpy rules). Overwrites out.
    `ws` (product_workspace's) is unused: the product is formed inside the sum."""
    (g4, g_swap), (out4, out_swap) = as4(g, g_swap), as4(out, out_swap)
    full, small = logical4(g4, g_swap), logical4(out4, out_swap)
    red = tuple(int(s == 1 and f != 1) for f, s in zip(full, small, strict=True))
    o4, o_swap = as4(other, o_swap) if other is not None else (g4, g_swap)
    args = (g4, g_swap, o4, o_swap, other is not None, out4, out_swap, full, red)
    _reduce[blocks(math.prod(small)), THREADS](*args)
