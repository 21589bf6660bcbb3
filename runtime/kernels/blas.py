"""The process's OpenBLAS (numpy's), reached through ctypes: its thread count, so that a
session can run its lanes (one slice of the batch per core, serial kernels) with
single-threaded matmuls without the user setting OPENBLAS_NUM_THREADS=1; and `sgemm` with
leading dimensions and beta, which numpy's matmul does not offer, so that a convolution
can sum shifted matmuls over one padded copy of its input (kernels/conv.py).

OpenBLAS's thread count is process-wide (`openblas_set_num_threads_local` is not
thread-local in pthreads builds), so `threads(n)` sets it for the span of one step and
restores it after. Without an OpenBLAS that exports the setter (another BLAS,
another platform), `available()` is False and nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from collections.abc import Iterator
from functools import lru_cache

import numpy as np

_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
            "openblas_set_num_threads")  # fmt: skip
_SGEMM = ("scipy_cblas_sgemm64_", "cblas_sgemm64_", "cblas_sgemm")
_GETTERS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
            "openblas_get_num_threads")  # fmt: skip


def _candidates() -> list[str]:
    """Paths of loaded (or numpy-bundled) OpenBLAS libraries."""
    paths = []
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        paths = [line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1]]
    bundled = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*")
    return list(dict.fromkeys(paths + sorted(glob.glob(bundled))))


def _symbol(lib: ctypes.CDLL, names: tuple[str, ...]):
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            return fn
    return None


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if _symbol(lib, _SETTERS) is not None or _symbol(lib, _SGEMM) is not None:
            return lib
    return None


@lru_cache(maxsize=1)
def _functions():
    """(set_num_threads, get_num_threads) of the process's OpenBLAS, or None."""
    lib = _library()
    setter, getter = (_symbol(lib, _SETTERS), _symbol(lib, _GETTERS)) if lib else (None, None)
    if setter is None or getter is None:
        return None
    setter.argtypes, setter.restype = [ctypes.c_int], None
    getter.argtypes, getter.restype = [], ctypes.c_int
    return setter, getter


@lru_cache(maxsize=1)
def _sgemm():
    """cblas_sgemm of the process's OpenBLAS (64-bit integer interface), or None."""
    lib = _library()
    fn = _symbol(lib, _SGEMM) if lib else None
    if fn is None or not fn.__name__.endswith("64_"):
        return None
    i, i64, f, p = ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    fn.argtypes = [i, i, i, i64, i64, i64, f, p, i64, p, i64, f, p, i64]
    fn.restype = None
    return fn


ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def has_sgemm() -> bool:
    """Whether `sgemm` is available (else callers take a numpy path)."""
    return _sgemm() is not None


def sgemm(ta: bool, tb: bool, m: int, n: int, k: int, a: int, lda: int, b: int, ldb: int,
          beta: float, c: int, ldc: int) -> None:  # fmt: skip
    """C = op(A) @ op(B) + beta * C on float32 row-major matrices given by address and
    leading dimension (elements between rows): C is m x n, op(A) m x k, op(B) k x n, op(X)
    = X.T where its flag is set. The caller keeps the arrays alive and in bounds."""
    _sgemm()(ROW_MAJOR, TRANS if ta else NO_TRANS, TRANS if tb else NO_TRANS,
             m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc)  # fmt: skip


def available() -> bool:
    """Whether the BLAS thread count can be set at run time."""
    return _functions() is not None


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the block with n BLAS threads (None, or not available: as it is), then
    restore the count it had."""
    fns = _functions() if n else None
    if fns is None:
        yield
        return
    setter, getter = fns
    before = getter()
    setter(n)
    try:
        yield
    finally:
        setter(before)
