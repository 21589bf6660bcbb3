"""The embeddable facto-edge runtime: train an exported model with numpy, Numba and onnx
only (no torch, tensorly or onnxruntime).

    from facto_edge.runtime import TrainingSession

Numba's parallel kernels run on its "workqueue" threading layer unless the user chose one
(NUMBA_THREADING_LAYER): OpenMP workers spin after each parallel region and then fight
OpenBLAS's threads, which made convolution steps up to 30x slower on a 2-core machine.
"""

import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

from .codecs import get_codec  # noqa: E402
from .preload import release_compiler_pages  # noqa: E402
from .replay import ReplayBuffer  # noqa: E402
from .session import TrainingSession  # noqa: E402
from .stream import StreamingTrainer  # noqa: E402

__all__ = ["ReplayBuffer", "StreamingTrainer", "TrainingSession", "get_codec"]

release_compiler_pages()  # what importing numba touched of LLVM (see preload.py)
