"""Learning rates per parameter group (runtime/param_groups.py): which tensor is in which
group, and one SGD step of a session with multipliers against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_graphs import batch

from facto_edge.errors import FactoEdgeError
from facto_edge.runtime import TrainingSession
from facto_edge.runtime.manifest import Manifest

LR = 0.05


@pytest.fixture(scope="module")
def model_dir(exported):
    """simple_cnn with trainable BatchNorm: every group has tensors."""
    return exported("simple_cnn", rank=0.25, bn="train", ort=False)[1]


def test_groups_of_the_trainable_tensors(model_dir):
    manifest = Manifest.load(model_dir)
    groups = TrainingSession(model_dir, batch_size=2).param_groups
    assert list(groups) == manifest.trainable
    layers = {layer.name: layer for layer in manifest.layers}
    conv, hidden = layers["features.3"], layers["hidden"]
    assert groups[conv.factors["last"]] == groups[hidden.factors["last"]] == "factors"
    assert groups[hidden.factors["bias"]] == "bias"
    assert groups["classifier.weight"] == groups["classifier.bias"] == "head"
    bn = [name for name in conv.trainable if name not in conv.factors.values()]
    assert len(bn) == 2 and all(groups[name] == "bn" for name in bn)


def test_one_sgd_step_with_group_multipliers(model_dir):
    x, y = batch(4, shape=(3, 32, 32), classes=10, seed=3)
    session = TrainingSession(
        model_dir, batch_size=4, lr=LR, momentum=0.0, lr_groups={"bn": 0.0, "head": 2.0}
    )
    before = {k: v.copy() for k, v in session.parameters().items()}
    _, grads = session.compute_gradients(x, y)
    session.train_step(x, y)
    scale = {"bn": 0.0, "head": 2.0, "factors": 1.0, "bias": 1.0}
    for name, group in session.param_groups.items():
        after = session.parameters()[name]
        if group == "bn":
            np.testing.assert_array_equal(after, before[name], err_msg=name)
        expected = before[name] - np.float32(LR * scale[group]) * grads[name]
        np.testing.assert_allclose(after, expected, rtol=1e-6, atol=1e-7, err_msg=name)
    assert {"bn", "head", "factors", "bias"} == set(session.param_groups.values())


@pytest.mark.parametrize(
    "lr_groups, words",
    [({"heads": 2.0}, "unknown learning-rate group 'heads'"),
     ({"bn": -1.0}, "multiplier of 'bn'"),
     ({"bn": float("nan")}, "multiplier of 'bn'")],
)  # fmt: skip
def test_bad_lr_groups(model_dir, lr_groups, words):
    with pytest.raises(FactoEdgeError, match=words):
        TrainingSession(model_dir, batch_size=2, lr_groups=lr_groups)
