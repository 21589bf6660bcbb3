"""20 training steps of the runtime against ONNX Runtime training on the export's ort/
artifacts: the same loss trajectory, SGD and AdamW (DESIGN.md, correctness references),
on simple_cnn and on every zoo model."""

from __future__ import annotations

import numpy as np
import pytest
from zoo_cases import cases, input_shape

from facto_edge.runtime import TrainingSession
from facto_edge.runtime.manifest import Manifest

pytest.importorskip("onnxruntime.training")

STEPS, LR = 20, 0.02


def batches(n_batches: int = 4, n: int = 8, shape=(3, 32, 32), seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((n, *shape)).astype(np.float32),
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


def our_losses(model_dir, optimizer: str, data, batch_size: int = 8) -> list[float]:
    # ORT's SGD has no momentum; its AdamW uses eps 1e-6 (see runtime/optimizers.py).
    session = TrainingSession(
        model_dir, batch_size=batch_size, optimizer=optimizer, lr=LR, momentum=0.0, eps=1e-6
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


# Every zoo model at rank 0.5 (shared with test_zoo_gradients.py), SGD, batches of four:
# `--train last --bn fold` runs free for 20 steps; `--train core,last --bn train` runs in
# lockstep (ORT starts each of the 20 steps from the runtime's parameters, and the loss
# and the update must agree), since free-running batch-statistics
# trajectories are chaotic: resnet20_cifar's and mcunet_like's moved apart by 1e-2
# within 20 steps between two runs of the runtime itself whose inputs differed by 1e-7
# (a ReLU mask element flips, and the rest follows).
NO_ORT = {"mobilenetv3_small": "no gradient for HardSigmoid"}  # ORT 1.19; export warns
ORT_CRASHES = {"densenet"}  # its first training step dies of SIGFPE inside ORT 1.19
# see test_zoo_gradients.py; resnet20_cifar's worst lockstep step (core,last) moved by
# 1.5% on main at one thread and 1.2% at two with Winograd's rounding (others: <= 0.6%)
KINKED = {"mobilenetv2_cifar", "resnet20_cifar"}
ZOO_CASES = cases([("last", "fold"), ("core,last", "train")], skip=ORT_CRASHES)


def ort_session(model_dir):
    from onnxruntime.training import api

    ort_dir = model_dir / "ort"
    state = api.CheckpointState.load_checkpoint(str(ort_dir / "checkpoint"))
    module = api.Module(
        str(ort_dir / "training_model.onnx"), state, str(ort_dir / "eval_model.onnx")
    )
    opt = api.Optimizer(str(ort_dir / "optimizer_sgd.onnx"), module)
    opt.set_learning_rate(LR)
    module.train()
    return state, module, opt


def lockstep(model_dir, data) -> list[tuple[float, float, float]]:
    """(our loss, ORT's loss, relative difference of the two updates of all trainable
    tensors together) of each step, ORT starting every step from the runtime's parameters."""
    session = TrainingSession(model_dir, batch_size=4, optimizer="sgd", lr=LR, momentum=0.0)
    state, module, opt = ort_session(model_dir)
    rows = []
    for step in range(STEPS):
        x, y = data[step % len(data)]
        before = {k: v.copy() for k, v in session.parameters().items()}
        for name, value in before.items():
            state.parameters[name].data = value
        theirs = float(module(x, y))
        opt.step()
        module.lazy_reset_grad()
        ours = session.train_step(x, y)
        ours_delta = np.concatenate(
            [(v - before[k]).ravel() for k, v in session.parameters().items()]
        )
        their_delta = np.concatenate(
            [(state.parameters[k].data - v).ravel() for k, v in before.items()]
        )
        diff = np.linalg.norm(ours_delta - their_delta) / np.linalg.norm(their_delta)
        rows.append((ours, theirs, float(diff)))
    return rows


@pytest.mark.parametrize(("name", "train", "bn"), ZOO_CASES)
def test_zoo_trajectory_matches_onnxruntime(zoo_export, name, train, bn):
    model_dir = zoo_export(name, train, bn, ort=True)
    if name in NO_ORT:
        assert not Manifest.load(model_dir).ort  # the export said why, and has no ort/
        pytest.skip(f"ONNX Runtime training: {NO_ORT[name]}")
    data = batches(2, n=4, shape=input_shape(name), seed=1)
    if bn == "train":
        rows = np.array(lockstep(model_dir, data))
        assert rows[-2, 0] < rows[0, 0]  # batch 0 again, after 18 steps: it trains
        # atol: a batch of four is learnt by heart, and losses of 0.005 differ by 7e-8
        np.testing.assert_allclose(rows[:, 0], rows[:, 1], rtol=1e-5, atol=1e-6)
        # most steps agree to fp32 rounding; one where a ReLU mask element falls on the
        # other side moves a few weight gradients by percents (test_zoo_gradients.py). It
        # happens at nearly every step of mobilenetv2_cifar, and at many of resnet18_cifar,
        # where ORT's first gradient differs from PyTorch's by 2% and the runtime's
        # matches PyTorch's to rtol 1e-4.
        typical, worst = (5e-2, 5e-2) if name in KINKED else (1e-3, 1e-2)
        assert np.median(rows[:, 2]) < typical and rows[:, 2].max() < worst, rows[:, 2]
        return
    ours = our_losses(model_dir, "sgd", data, batch_size=4)
    theirs = ort_losses(model_dir, "optimizer_sgd.onnx", data)
    assert theirs[-2] < theirs[0]  # batch 0 again, after 18 steps: it trains
    rel = np.abs(np.array(ours) - np.array(theirs)) / np.abs(np.array(theirs))
    assert rel.max() < 1e-3, list(zip(ours, theirs, strict=True))
