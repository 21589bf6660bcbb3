"""The systems the benchmark compares, one module each, and what they share: a worker
hands its system a WorkerArgs, and the system's `build(args) -> Trainer` returns the
training step to time. Each module imports its framework only inside `build`, so a
worker process loads nothing but the system it measures."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

MODULES: dict[str, str] = {
    "pytorch-dense": "facto_edge.bench.systems.torch_dense",
    "pytorch-factorized": "facto_edge.bench.systems.torch_factorized",
    "ort-training": "facto_edge.bench.systems.ort_training",
    "facto-edge": "facto_edge.bench.systems.facto",
}


@dataclass(frozen=True)
class WorkerArgs:
    """What one worker runs: a system, an export, a batch size and a step count."""

    system: str
    model: str
    model_dir: str
    batch: int
    codec: str
    steps: int
    warmup: int
    count_saved: bool = False
    lr: float = 0.01
    momentum: float = 0.9
    seed: int = 0
    threads: int | None = None
    budget: int | None = None

    @property
    def manifest(self) -> dict:
        """The export's manifest.json (input shape, classes, trainable tensors)."""
        return json.loads((Path(self.model_dir) / "manifest.json").read_text())


@dataclass
class Trainer:
    """What a system module builds. `counted_step` is one training step that also returns
    the saved-activation bytes of that step (None where the system cannot tell)."""

    step: Callable[[np.ndarray, np.ndarray], float]
    counted_step: Callable[[np.ndarray, np.ndarray], tuple[float, int | None]]
    info: Callable[[], dict] = field(default=dict)


def load_system(name: str) -> ModuleType:
    """The module of system `name` (a key of MODULES)."""
    if name not in MODULES:
        raise KeyError(f"unknown system {name!r}; expected one of {', '.join(MODULES)}")
    return importlib.import_module(MODULES[name])
