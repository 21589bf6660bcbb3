"""The embeddable facto-edge runtime: train an exported model with numpy, Numba and onnx
only (no torch, tensorly or onnxruntime), and nothing of the facto_edge application.

    from facto_edge.runtime import TrainingSession

The names below load on first use, so that `facto_edge.runtime.errors` (which the
application re-exports) costs no numba import. Numba's threading layer is chosen in
runtime/kernels/__init__.py, before any kernel exists; where numba caches the kernels,
here (runtime/cachedirs.py).
"""

from importlib import import_module

from .cachedirs import use_user_kernel_cache

use_user_kernel_cache()  # an installed, read-only runtime caches kernels in ~/.cache

_EXPORTS = {
    "ReplayBuffer": ".replay",
    "StreamingTrainer": ".stream",
    "TrainingSession": ".session",
    "get_codec": ".codecs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        from .preload import import_numba

        import_numba()  # with LLVM's pages released half-way (runtime/preload.py)
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
