"""Numba kernels of the optimizers, and the numpy array handling runtime/optimizers.py
needs beside them: the CPU's optimizer kernels (runtime/kernels/cuda/optimizers.py has
the same names on device arrays).

Each kernel applies one update rule of runtime/optimizers.py (where the rules are stated)
to one flat parameter `p` from its flat gradient `g`, writing `p` and its state in place,
in the dtype of its arguments; the scalars come already rounded to that dtype.
"""

import numpy as np
from numba import njit

ARRAY = "numpy array"  # what this backend's arrays are called in messages


@njit(cache=True)
def sgd(p, g, lr, wd):  # pragma: no cover - compiled
    for i in range(p.size):
        d = g[i] + wd * p[i] if wd != 0 else g[i]
        p[i] = p[i] + -(lr * d)


@njit(cache=True)
def sgd_momentum(p, g, buf, lr, wd, mu, nesterov):  # pragma: no cover - compiled
    for i in range(p.size):
        d = g[i] + wd * p[i] if wd != 0 else g[i]
        buf[i] = mu * buf[i] + d
        d = d + mu * buf[i] if nesterov else buf[i]
        p[i] = p[i] + -(lr * d)


@njit(cache=True)
def adamw(p, g, m, v, lr, lr_t, b1, c1, b2, c2, eps, wd):  # pragma: no cover - compiled
    decay = lr * wd
    for i in range(p.size):
        m[i] = b1 * m[i] + c1 * g[i]
        v[i] = b2 * v[i] + c2 * g[i] * g[i]
        p[i] = p[i] - lr_t * m[i] / (np.sqrt(v[i]) + eps)
        p[i] = p[i] - decay * p[i]


def is_array(a: object) -> bool:
    """Whether `a` is an array of this backend."""
    return isinstance(a, np.ndarray)


def writeable(a: np.ndarray) -> bool:
    return a.flags.writeable


def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array for optimizer state (which the optimizer zeroes)."""
    return np.empty(shape, dtype)


def fill(a: np.ndarray, value: float) -> None:
    a.fill(value)


def to_host(a: np.ndarray) -> np.ndarray:
    """A copy of `a`."""
    return a.copy()


def from_host(a: np.ndarray, host: np.ndarray) -> None:
    """a[...] = host (same shape and dtype)."""
    np.copyto(a, host)
