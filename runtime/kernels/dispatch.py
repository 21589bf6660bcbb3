"""Kernels compiled twice, serial and parallel, and picked per call by the size of the
work: a parallel launch costs microseconds on idle cores but up to a scheduler time
slice (milliseconds) when another process holds a core, so only big calls go parallel.

    @kernel
    def add_bias(y, b): ...        # written with prange, as for @njit(parallel=True)

    add_bias(y, b)                 # parallel when the largest array has >= PARALLEL_MIN
                                   # elements and numba has more than one thread

A thread can ask for serial builds only (`serial_in_this_thread`): the session's lanes,
which each train a slice of the batch on one core, do. Numba's workqueue threading layer
aborts when two threads launch parallel kernels at once, so every parallel CPU kernel is a
Kernel (none is a bare `njit(parallel=True)`): lanes then launch none, and need no lock.

A process can also give up the parallel builds altogether (`use_parallel_builds(False)`):
a budgeted session does so when numba's cache holds the serial builds of its kernels but
not the parallel ones (the preparation compiles serial builds first: they compile about
four times faster, and the lanes run nothing else), rather than compile them in-process.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable

import numba
import numpy as np
from numba import njit

PARALLEL_MIN = 1 << 18  # elements of the largest array argument (a launch costs ~50 us)
REASSOC = {"reassoc"}  # fastmath flag for reductions: lets float64 sums vectorize
_local = threading.local()
_parallel_builds = [True]


def serial_in_this_thread(serial: bool) -> None:
    """Make every Kernel called from this thread run its serial build (or not)."""
    _local.serial = serial


def use_parallel_builds(enabled: bool) -> None:
    """Let Kernels run their parallel builds (default) or, in every thread, never."""
    _parallel_builds[0] = bool(enabled)


def parallel_builds_enabled() -> bool:
    """Whether Kernels may run their parallel builds in this process."""
    return _parallel_builds[0]


class Kernel:
    """A serial and a parallel build of one function (both cached on disk)."""

    def __init__(self, fn: Callable, fastmath: bool | set[str] = False) -> None:
        self.py_func = fn
        flags = {"cache": True, "nogil": True, "fastmath": fastmath}
        self.parallel = njit(parallel=True, **flags)(fn)
        self.serial = njit(**flags)(_renamed(fn, "_serial"))
        self.__name__, self.__doc__ = fn.__name__, fn.__doc__

    def __call__(self, *args):
        if (
            getattr(_local, "serial", False)
            or not _parallel_builds[0]
            or numba.get_num_threads() == 1
        ):
            return self.serial(*args)
        for a in args:
            if isinstance(a, np.ndarray) and a.size >= PARALLEL_MIN:
                return self.parallel(*args)
        return self.serial(*args)


def kernel(fn: Callable | None = None, *, fastmath: bool | set[str] = False):
    """Compile `fn` serial and parallel; calls pick one by the size of their arrays.
    `fastmath={"reassoc"}` lets sums vectorize (used for float64 accumulators)."""
    if fn is None:
        return lambda f: Kernel(f, fastmath)
    return Kernel(fn, fastmath)


def _renamed(fn: Callable, suffix: str) -> Callable:
    """A copy of fn under another name, so that its on-disk cache entry is its own."""
    copy = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__
    )
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__ = fn.__module__
    return copy
