"""Gemm and MatMul on BLAS (numpy matmul into the given output, which allocates nothing):
forward and the gradients of both operands and the bias. MatMul operands come as stored
arrays with their channel-major flags (kernels/layout.py), as in cuda/gemm.py."""

from __future__ import annotations

import numpy as np

from .elementwise import add_bias, reduce_to
from .layout import logical


def _t(a: np.ndarray, trans: bool) -> np.ndarray:
    return a.T if trans else a


def gemm_fwd(a, b, c, y, alpha: float, beta: float, trans_a: bool, trans_b: bool) -> None:
    """y = alpha * a' @ b' + beta * c (c broadcast to y; may be None)."""
    np.matmul(_t(a, trans_a), _t(b, trans_b), out=y)
    if c is None or beta == 0.0:
        if alpha != 1.0:
            np.multiply(y, np.float32(alpha), out=y)
        return
    if alpha != beta:
        np.multiply(y, np.float32(alpha / beta), out=y)
    if c.size == y.shape[1] and c.shape[-1] == y.shape[1]:
        add_bias(y.reshape(*y.shape, 1), c.reshape(-1))  # a row bias, without a temporary
    else:
        np.add(y, c, out=y)
    if beta != 1.0:
        np.multiply(y, np.float32(beta), out=y)


def gemm_bwd(gy, a, b, ga, gb, gc, alpha: float, beta: float, trans_a: bool, trans_b: bool):
    """Gradients of gemm_fwd into ga, gb, gc (each None when not needed)."""
    if ga is not None:
        if trans_a:
            np.matmul(_t(b, trans_b), gy.T, out=ga)
        else:
            np.matmul(gy, _t(b, trans_b).T, out=ga)
        _scale(ga, alpha)
    if gb is not None:
        if trans_b:
            np.matmul(gy.T, _t(a, trans_a), out=gb)
        else:
            np.matmul(_t(a, trans_a).T, gy, out=gb)
        _scale(gb, alpha)
    if gc is not None:
        reduce_to(gy, gc)
        _scale(gc, beta)


def _scale(a: np.ndarray, s: float) -> None:
    if s != 1.0:
        np.multiply(a, np.float32(s), out=a)


def matmul_fwd(a, sa: bool, b, sb: bool, y, sy: bool) -> None:
    """y = a @ b (numpy matmul of logical views, batch axes broadcast)."""
    np.matmul(logical(a, sa), logical(b, sb), out=logical(y, sy))


def matmul_bwd_operand(gy, sgy, other, so, g, sg, tmp, left: bool) -> None:
    """Gradient of one MatMul operand: left -> gy @ other^T, right -> other^T @ gy, summed
    over broadcast batch axes through `tmp` (the full batch shape) when g is smaller."""
    gy, other, g = logical(gy, sgy), logical(other, so), logical(g, sg)
    full = tmp if g.shape != _full_shape(gy, other, left) else g
    other_t = np.swapaxes(other, -1, -2)
    if left:
        np.matmul(gy, other_t, out=full)
    else:
        np.matmul(other_t, gy, out=full)
    if full is not g:
        reduce_to(full, g)


def _full_shape(gy, other, left: bool) -> tuple[int, ...]:
    m, n = (gy.shape[-2], other.shape[-2]) if left else (other.shape[-1], gy.shape[-1])
    return (*gy.shape[:-2], m, n)
