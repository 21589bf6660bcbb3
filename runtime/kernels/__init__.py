"""The kernels of the CPU backend, one module per family (conv, gemm, pool, elementwise,
movement, bn, loss); cuda/ holds the CUDA backend's modules under the same names, with
the same functions. The op glue (runtime/ops.py) calls them through a `Kernels` table,
`k.conv.conv2d_fwd(...)`, so one glue serves every backend.

Numba's parallel kernels run on its "workqueue" threading layer unless the user chose one
(NUMBA_THREADING_LAYER): OpenMP workers spin after each parallel region and then fight
OpenBLAS's threads, which made convolution steps up to 30x slower on a 2-core machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from types import ModuleType

import numba

from ..preload import release_compiler_pages

release_compiler_pages()  # what importing numba touched of LLVM (preload.import_numba)
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


class Kernels(Mapping[str, ModuleType]):
    """The kernel module of each family of one backend, by family name and as attributes
    (`k.conv`: one attribute lookup, as for a module). Read-only."""

    def __init__(self, modules: Mapping[str, ModuleType]) -> None:
        self.__dict__.update(modules)

    def __getitem__(self, family: str) -> ModuleType:
        return self.__dict__[family]

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dict__)

    def __len__(self) -> int:
        return len(self.__dict__)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Kernels are read-only; cannot set {name!r}")

    def __repr__(self) -> str:
        return f"Kernels({', '.join(f'{f}={m.__name__}' for f, m in self.items())})"
