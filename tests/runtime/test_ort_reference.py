"""20 training steps of the runtime against ONNX Runtime training on the export's ort/
artifacts: the same loss trajectory, SGD and AdamW (DESIGN.md, correctness references)."""

from __future__ import annotations

import numpy as np
import pytest

from facto_edge.runtime import TrainingSession

pytest.importorskip("onnxruntime.training")

STEPS, LR = 20, 0.02


def batches(n_batches: int = 4, n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((n, 3, 32, 32)).astype(np.float32),
         rng.integers(0, 10, n).astype(np.int64))
        for _ in range(n_batches)
    ]  # fmt: skip


def ort_losses(model_dir, optimizer_file: str, data) -> list[float]:
    from onnxruntime.training import api

    ort_dir = model_dir / "ort"
    state = api.CheckpointState.load_checkpoint(str(ort_dir / "checkpoint"))
    module = api.Module(
        str(ort_dir / "training_model.onnx"), state, str(ort_dir / "eval_model.onnx")
    )
    opt = api.Optimizer(str(ort_dir / optimizer_file), module)
    opt.set_learning_rate(LR)
    module.train()
    losses = []
    for step in range(STEPS):
        x, y = data[step % len(data)]
        losses.append(float(module(x, y)))
        opt.step()
        module.lazy_reset_grad()
    return losses


def our_losses(model_dir, optimizer: str, data) -> list[float]:
    # ORT's SGD has no momentum; its AdamW uses eps 1e-6 (see runtime/optimizers.py).
    session = TrainingSession(
        model_dir, batch_size=8, optimizer=optimizer, lr=LR, momentum=0.0, eps=1e-6
    )
    return [session.train_step(*data[step % len(data)]) for step in range(STEPS)]


@pytest.mark.parametrize("bn", ["fold", "train"])
@pytest.mark.parametrize(
    "optimizer, ort_file", [("sgd", "optimizer_sgd.onnx"), ("adamw", "optimizer_model.onnx")]
)
def test_loss_trajectory_matches_onnxruntime(exported, bn, optimizer, ort_file):
    _, model_dir = exported("simple_cnn", rank=0.25, bn=bn)
    data = batches()
    ours, theirs = our_losses(model_dir, optimizer, data), ort_losses(model_dir, ort_file, data)
    assert theirs[-1] < theirs[0]
    rel = np.abs(np.array(ours) - np.array(theirs)) / np.abs(np.array(theirs))
    assert rel.max() < 1e-3, list(zip(ours, theirs, strict=True))


def test_delta_trajectory_matches_onnxruntime(exported):
    """--train delta (frozen dense weights beside a zero-started update), BN trained."""
    _, model_dir = exported("simple_cnn", rank=0.25, train="delta", bn="train")
    data = batches()
    ours = our_losses(model_dir, "sgd", data)
    theirs = ort_losses(model_dir, "optimizer_sgd.onnx", data)
    assert theirs[-1] < theirs[0]
    rel = np.abs(np.array(ours) - np.array(theirs)) / np.abs(np.array(theirs))
    assert rel.max() < 1e-3, list(zip(ours, theirs, strict=True))
