"""The systems the benchmark compares, one module each. Each module has
`build(args: WorkerArgs) -> Trainer` and imports its framework only inside `build`, so a
worker process loads nothing but the system it measures."""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES: dict[str, str] = {
    "pytorch-dense": "facto_edge.bench.systems.torch_dense",
    "pytorch-factorized": "facto_edge.bench.systems.torch_factorized",
    "ort-training": "facto_edge.bench.systems.ort_training",
    "facto-edge": "facto_edge.bench.systems.facto",
}


def load_system(name: str) -> ModuleType:
    """The module of system `name` (a key of MODULES)."""
    if name not in MODULES:
        raise KeyError(f"unknown system {name!r}; expected one of {', '.join(MODULES)}")
    return importlib.import_module(MODULES[name])
