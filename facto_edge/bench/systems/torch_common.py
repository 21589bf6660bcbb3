"""The training step both PyTorch systems share: SGD with momentum on cross-entropy, the
saved-activation counter around the forward pass of a counted step."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from facto_edge.bench.saved import SavedTensorCounter
from facto_edge.bench.systems import Trainer, WorkerArgs

Forward = Callable[[torch.Tensor], torch.Tensor]


def torch_trainer(
    forward: Forward, trainable: list[torch.Tensor], model_tensors: list[torch.Tensor],
    args: WorkerArgs,
) -> Trainer:  # fmt: skip
    """A Trainer over `forward`, updating `trainable`; `model_tensors` (weights, buffers,
    frozen factors) are left out of the saved-activation count."""
    if args.threads:
        torch.set_num_threads(args.threads)
    opt = torch.optim.SGD(trainable, lr=args.lr, momentum=args.momentum)

    def step(x: np.ndarray, y: np.ndarray, counter=None) -> float:
        opt.zero_grad(set_to_none=True)
        with counter or contextlib.nullcontext():
            loss = F.cross_entropy(forward(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        return loss.item()

    def counted_step(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        counter = SavedTensorCounter(exclude=model_tensors)
        return step(x, y, counter), counter.nbytes

    def info() -> dict:
        return {"threads": torch.get_num_threads(), "optimizer": f"SGD momentum {args.momentum}"}

    return Trainer(step, counted_step, info)
