"""The optimizer kernels on CUDA, with the names of runtime/kernels/optimizer_kernels.py
over device arrays, so that runtime/optimizers.py (the update rules, their checks and
the state, written once) runs them:

    optimizers.make_optimizer("adamw", params, lr=1e-3, kernels=this_module)

Each update launches one kernel and copies nothing between host and device; `to_host` and
`from_host` copy the state for state_dict() / load_state_dict().
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .elementwise import fill
from .launch import THREADS, blocks

__all__ = [
    "ARRAY", "adamw", "empty", "fill", "from_host", "is_array", "sgd", "sgd_momentum",
    "to_host", "writeable",
]  # fmt: skip

ARRAY = "device array"  # what this backend's arrays are called in messages


@cuda.jit(cache=True)
def _sgd(p, g, lr, wd):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        d = g[i] + wd * p[i] if wd != 0 else g[i]
        p[i] = p[i] + -(lr * d)


@cuda.jit(cache=True)
def _sgd_momentum(p, g, buf, lr, wd, mu, nesterov):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        d = g[i] + wd * p[i] if wd != 0 else g[i]
        buf[i] = mu * buf[i] + d
        d = d + mu * buf[i] if nesterov else buf[i]
        p[i] = p[i] + -(lr * d)


@cuda.jit(cache=True)
def _adamw(p, g, m, v, lr, lr_t, b1, c1, b2, c2, eps, wd):  # pragma: no cover - compiled
    decay = lr * wd
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        m[i] = b1 * m[i] + c1 * g[i]
        v[i] = b2 * v[i] + c2 * g[i] * g[i]
        p[i] = p[i] - lr_t * m[i] / (math.sqrt(v[i]) + eps)
        p[i] = p[i] - decay * p[i]


def sgd(p, g, lr, wd) -> None:
    _sgd[blocks(p.size), THREADS](p, g, lr, wd)


def sgd_momentum(p, g, buf, lr, wd, mu, nesterov) -> None:
    _sgd_momentum[blocks(p.size), THREADS](p, g, buf, lr, wd, mu, nesterov)


def adamw(p, g, m, v, *scalars) -> None:
    _adamw[blocks(p.size), THREADS](p, g, m, v, *scalars)


def is_array(a: object) -> bool:
    """Whether `a` is a device array."""
    return hasattr(a, "copy_to_host")


def writeable(a) -> bool:
    return True


def empty(shape: tuple[int, ...], dtype: np.dtype):
    """A device array for optimizer state (which the optimizer zeroes)."""
    return cuda.device_array(shape, dtype)


def to_host(a) -> np.ndarray:
    return a.copy_to_host()


def from_host(a, host: np.ndarray) -> None:
    """a[...] = host (same shape and dtype, C-contiguous)."""
    a.copy_to_device(host)
