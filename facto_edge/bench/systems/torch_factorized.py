"""PyTorch training the factorized model: model.onnx run by tools/torch_ref.py with the
same frozen factors and the same trainable tensors as facto-edge — the same math in the
best-known framework."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import facto_edge
from facto_edge.bench.systems import Trainer, WorkerArgs
from facto_edge.errors import FactoEdgeError

TORCH_REF = Path(facto_edge.__file__).resolve().parents[1] / "tools" / "torch_ref.py"


def load_torch_ref() -> ModuleType:
    """tools/torch_ref.py of this source checkout, imported by path."""
    if not TORCH_REF.is_file():
        raise FactoEdgeError(
            f"the PyTorch factorized system needs {TORCH_REF} (a source checkout of facto-edge)"
        )
    spec = importlib.util.spec_from_file_location("torch_ref", TORCH_REF)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(args: WorkerArgs) -> Trainer:
    """The reference of `args.model_dir`; its manifest's trainable tensors train."""
    from facto_edge.bench.systems.torch_common import torch_trainer

    ref = load_torch_ref().TorchReference.load(args.model_dir)
    return torch_trainer(ref, ref.parameters(), list(ref.tensors.values()), args)
