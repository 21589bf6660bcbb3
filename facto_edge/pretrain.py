"""A pretrained starting point for the demo and the accuracy study, made with PyTorch.

facto-edge fine-tunes pretrained models: with most factors frozen, a randomly initialized
network has little to offer. Where no pretrained model is at hand (the demo, the study),
`train_torch` trains a zoo model on a *source task*, the digits turned a quarter turn
(`quarter_turn`), so that fine-tuning on the upright digits is a new task that reuses
the learned strokes. `reset_classifier` then gives the model a fresh, zeroed head, as
transfer learning to a new task does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def quarter_turn(x: np.ndarray) -> np.ndarray:
    """NCHW images turned 90 degrees counter-clockwise (the source task of the demo)."""
    return np.ascontiguousarray(np.rot90(x, 1, axes=(2, 3)))


def train_torch(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 32,
    lr: float = 0.05,
    seed: int = 0,
    threads: int | None = 1,
) -> list[float]:
    """Train every parameter of `model` (train mode, SGD with momentum 0.9) on (x, y);
    returns the mean loss per epoch and leaves the model in eval mode. `threads` caps
    torch's intra-op threads while it runs (1 is fastest for models this small)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        return _train_epochs(model, x, y, epochs, batch_size, lr, seed)
    finally:
        torch.set_num_threads(previous)


def _train_epochs(model: nn.Module, x, y, epochs: int, batch_size: int, lr: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=gen)
        total = 0.0
        for start in range(0, len(xs), batch_size):
            idx = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(xs))
    model.eval()
    return losses


@torch.no_grad()
def accuracy_torch(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of `model` (eval mode) on (x, y)."""
    model.eval()
    return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def classifier(model: nn.Module) -> nn.Linear:
    """The last Linear layer of `model`."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear layer")
    return linears[-1]


@torch.no_grad()
def reset_classifier(model: nn.Module) -> nn.Module:
    """Zero the last Linear layer: a fresh head for a new task (its logits start equal)."""
    head = classifier(model)
    head.weight.zero_()
    if head.bias is not None:
        head.bias.zero_()
    return model
