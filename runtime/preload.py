"""Load every kernel a step needs up front, then give the compiler's memory back.

Numba loads a cached kernel on its first call, and loading needs LLVM: importing numba
maps the 170 MB libllvmlite library, and loading kernels touches tens of MiB more of it.
Once every kernel is loaded a training step never runs LLVM again, so those pages only
inflate the process's resident memory. A session therefore

1. runs one step on throwaway buffers before its arena exists (TrainingSession
   `_load_kernels`), and, with more than one thread, loads the other build of every
   two-build kernel it called (`load_both_builds`; runtime/kernels/dispatch.py picks
   serial or parallel per call, and one thread always runs the serial build);
2. hands libllvmlite's resident pages back to the kernel (`release_compiler_pages`,
   madvise MADV_PAGEOUT): clean file pages are dropped and re-read from disk only if a
   new kernel must be compiled later;
3. then touches its arena.

Before that, the start-up itself is kept small: `import_numba` (which the runtime's
lazy names call) releases LLVM's pages between mapping libllvmlite and importing numba's
modules, and `set_up_cpu_target` has numba load its runtime library from object code
and cached kernels without its compiler's registries. A budgeted training process then
peaks at about 87 MiB (mobilenetv3_small at batch 32; 139 MiB before: docs/export.md).

The process peaks at the larger of its start-up (imports and kernel loading) and its
steady state (what stays resident plus the arena), not at their sum. The kernel reclaims
only pages that no other process maps: while other numba processes run on the machine,
the pages they share stay resident (up to ~40 MiB measured; importing numba alone makes
40 MiB of them resident). A process that spawns budgeted children (the bench's driver,
the demo) therefore releases its own pages before each spawn, and code that only needs
names (budget's cache key, codec_names) does not import numba. On systems without
MADV_PAGEOUT (Linux before 5.4, macOS, Windows) the release does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import pkgutil
import sys
from contextlib import contextmanager
from functools import lru_cache

from .rss import current_rss_bytes

MADV_PAGEOUT = 21  # Linux 5.4+
COMPILER_LIBRARIES = ("libllvmlite",)  # mapped files whose pages a step does not use


def import_numba() -> None:
    """Import numba with LLVM's pages handed back in between: mapping libllvmlite (its
    relocations and static constructors) makes 36 MiB of it resident, and numba's own
    modules add 25 MiB of Python objects; released before them, the two never add up
    (an import peak of 68 MiB instead of 92 MiB beside numpy). Where numba is imported
    already, nothing changes."""
    if "numba" in sys.modules:
        return
    import llvmlite.binding  # noqa: F401

    release_compiler_pages()
    import numba  # noqa: F401


def load_both_builds() -> int:
    """Load (from numba's cache, or compile) the serial and the parallel build of every
    two-build kernel for each signature either build was called with; returns how many
    builds were loaded. Where the process gave up parallel builds
    (dispatch.use_parallel_builds(False)), nothing is loaded."""
    from .kernels import dispatch

    if not dispatch.parallel_builds_enabled():
        return 0
    loaded = 0
    for kernel in _kernels(dispatch.Kernel):
        for have, other in ((kernel.serial, kernel.parallel), (kernel.parallel, kernel.serial)):
            for sig in list(have.signatures):
                if sig not in other.signatures:
                    other.compile(sig)
                    loaded += 1
    return loaded


def release_compiler_pages(libraries: tuple[str, ...] = COMPILER_LIBRARIES) -> int:
    """Ask the kernel to reclaim the resident pages of the mapped files whose names contain
    one of `libraries`; returns the bytes of the mappings advised (0 where unsupported).

    Safe at any time: the pages come back from the file on their next use.
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        maps = open("/proc/self/maps").read().splitlines()
    except OSError:
        return 0
    madvise = _madvise()
    advised = 0
    for line in maps:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not any(lib in parts[5] for lib in libraries):
            continue
        start, end = (int(v, 16) for v in parts[0].split("-"))
        if madvise(start, end - start, MADV_PAGEOUT) != 0:
            return advised  # EINVAL: this kernel has no MADV_PAGEOUT
        advised += end - start
    return advised


@contextmanager
def releasing_while_loading(growth: int = 24 << 20):
    """Within the block, release the compiler's pages whenever numba lets go of its
    compiler lock (after a kernel is loaded or compiled) with the resident set grown by
    `growth` bytes or more since the last release: loading many kernels then holds about
    that much of LLVM at a time. Releasing after every kernel would hold less but re-read
    LLVM from disk each time (seconds of start-up)."""
    from numba.core import event

    set_up_cpu_target()
    last = [current_rss_bytes()]

    class _Release(event.Listener):
        def on_start(self, ev) -> None:
            pass

        def on_end(self, ev) -> None:
            if current_rss_bytes() - last[0] >= growth:
                release_compiler_pages()
                last[0] = current_rss_bytes()

    with event.install_listener("numba:compiler_lock", _Release()):
        yield


def set_up_cpu_target() -> None:
    """Set numba up to load cached kernels with the least memory (idempotent):

    - its runtime library (NRT), which a loaded kernel links against, is initialized
      from stored object code rather than compiled (runtime/nrt_object.py; 39 MiB of
      LLVM), and LLVM's pages released after it;
    - a cached kernel loads without numba's full refresh of its CPU target (numba does
      one before every cache lookup): the refresh imports and registers the
      implementations the compiler lowers with (numba.np.arraymath, linalg, random,
      typed containers, jitclass, ...), 15 MiB of Python objects that loading machine
      code does not use. Compiling still refreshes first, as numba does;
    - that refresh, when a process compiles, does not import scipy.linalg to see
      whether compiled code may call BLAS (0.5 s and 16 MiB; no runtime kernel calls BLAS
      from compiled code: matmuls run in numpy and kernels/blas.py). Numba then picks
      its own loops for np.convolve and np.correlate; np.dot in a kernel compiled later
      still finds scipy. Where scipy's BLAS is imported already, nothing changes."""
    from numba.core import caching
    from numba.core.registry import cpu_target

    from . import nrt_object

    if nrt_object.ensure():
        release_compiler_pages()
    if caching.Cache.load_overload is not _load_overload:
        _numba_load_overload.append(caching.Cache.load_overload)
        caching.Cache.load_overload = _load_overload
    ctx = cpu_target.target_context
    if "refresh" not in vars(ctx):
        ctx.refresh = _refresh_without_scipy_blas(ctx.refresh)


_numba_load_overload: list = []  # numba's own Cache.load_overload, once replaced


def _load_overload(self, sig, target_context):
    """numba's Cache.load_overload without the CPU target's refresh: only the runtime
    library a loaded kernel links against is initialized first. Other targets (CUDA)
    load as numba loads them."""
    from numba.core.registry import cpu_target
    from numba.core.runtime.nrt import rtsys

    if target_context is not cpu_target.target_context:
        return _numba_load_overload[0](self, sig, target_context)
    rtsys.initialize(target_context)
    with self._guard_against_spurious_io_errors():
        return self._load_overload(sig, target_context)


def _refresh_without_scipy_blas(refresh):
    """The target's `refresh`, run with scipy's BLAS unimportable the first time."""

    def run() -> None:
        blas = "scipy.linalg.cython_blas"
        if "numba.np.arraymath" in sys.modules or blas in sys.modules:
            return refresh()
        sys.modules[blas] = None  # makes `import scipy.linalg.cython_blas` fail at once
        try:
            return refresh()
        finally:
            del sys.modules[blas]

    return run


@lru_cache(maxsize=1)
def _madvise():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def warm_up_modules(codec: str) -> None:
    """Run the `warm_up(codec)` of runtime/codecs.py and of every CPU kernel module that
    has one (the budget's probe: budget.py); `codec` is the one codec a run keeps its
    activations in. The runtime's other modules are not imported (inference_onnx.py
    imports onnx: 0.4 s)."""
    from . import codecs

    for module in (codecs, *_modules(f"{__package__}.kernels")):
        if callable(getattr(module, "warm_up", None)):
            module.warm_up(codec)


def _kernels(kind: type) -> list:
    """Every instance of `kind` at the top level of the CPU kernel modules."""
    return [
        v
        for module in _modules(f"{__package__}.kernels")
        for v in vars(module).values()
        if isinstance(v, kind)
    ]


def _modules(*packages: str) -> list:
    """The (non-package) modules of `packages`, imported."""
    found = []
    for name in packages:
        package = importlib.import_module(name)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.ispkg:
                found.append(importlib.import_module(f"{name}.{info.name}"))
    return found
