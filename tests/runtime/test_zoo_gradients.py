"""The zoo models, exported at rank 0.25: the runtime's gradients (fp32 codec) match
PyTorch autograd on the same factorized model with the same frozen factors, for every
trainable tensor (rtol 1e-4, atol 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_graphs import batch
from torch_ref import TorchReference

from facto_edge.runtime import TrainingSession

CASES = [
    ("simple_cnn", "last", "fold"),
    ("simple_cnn", "all", "train"),
    ("simple_cnn", "delta", "fold"),  # frozen dense weight + low-rank update from zero
    ("simple_cnn", "delta", "train"),
    ("convnext_atto", "delta", "fold"),  # MatMul's update, its bias Add after the sum
    pytest.param("resnet18_cifar", "last", "fold", marks=pytest.mark.slow),  # ~25 s
    ("mobilenetv2_cifar", "last", "fold"),
    ("vgg11_bn_cifar", "last", "fold"),
    ("shufflenetv2", "last", "fold"),
    pytest.param("shufflenetv2", "core,last", "fold", marks=pytest.mark.slow),
    ("kws_conv1d", "core,last", "fold"),
    pytest.param("kws_conv1d", "all", "train", marks=pytest.mark.slow),
    ("mobilenetv3_small", "last", "fold"),  # HardSwish, HardSigmoid, SE's broadcast Mul
    ("efficientnet_b0", "last", "fold"),  # SiLU fused, Sigmoid in SE
    ("convnext_atto", "last", "fold"),  # channels-last LayerNorm, GELU (fused), layer scale
    # option-A shortcut: strided Slice, Pad. With --bn train at batch 3 PyTorch's fp32
    # gradients are the inexact side (1.7e-3 from float64, the runtime's 2e-6), so fold.
    pytest.param("resnet20_cifar", "core,last", "fold", marks=pytest.mark.slow),
]


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """export(name, train, bn) -> a model directory, exported once per session."""
    from facto_edge import zoo
    from facto_edge.exporters.export import export

    cache = {}

    def get(name: str, train: str, bn: str):
        if (name, train, bn) not in cache:
            out = tmp_path_factory.mktemp("zoo") / f"{name}-{train}-{bn}.facto"
            model = zoo.build(name, seed=0)
            shape = zoo.entry(name).input_shape
            export(model, out, input_shape=shape, rank=0.25, train=train, bn=bn, ort=False)
            cache[name, train, bn] = out
        return cache[name, train, bn]

    return get


@pytest.mark.parametrize(("name", "train", "bn"), CASES)
def test_gradients_match_pytorch(exported, name, train, bn):
    model_dir = exported(name, train, bn)
    from facto_edge import zoo

    x, y = batch(3, shape=zoo.entry(name).input_shape, classes=10, seed=7)
    session = TrainingSession(model_dir, batch_size=3)
    loss, grads = session.compute_gradients(x, y)

    ref = TorchReference.load(model_dir)
    ref_loss = F.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
    ref_loss.backward()
    expected = ref.grads()

    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    assert grads.keys() == expected.keys() and grads
    for key, g in grads.items():
        np.testing.assert_allclose(g, expected[key], rtol=1e-4, atol=1e-5, err_msg=key)
