"""The CPU kernels, one family per module.

Numba's parallel kernels run on its "workqueue" threading layer unless the user chose one
(NUMBA_THREADING_LAYER): OpenMP workers spin after each parallel region and then fight
OpenBLAS's threads, which made convolution steps up to 30x slower on a 2-core machine.
Importing numba maps LLVM; its pages are handed back at once (see preload.py).
"""

import os

import numba

from ..preload import release_compiler_pages

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

release_compiler_pages()
