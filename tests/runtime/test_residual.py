"""A `--train delta` export in the runtime: backward keeps what `--train last` keeps at the
same rank (the R-channel input of each trainable `last`, nothing for the frozen dense
weight beside it), and the first step starts from the pretrained function."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_graphs import batch

from facto_edge.runtime import TrainingSession
from facto_edge.runtime.manifest import Manifest


@pytest.mark.parametrize("bn", ["fold", "train"])
def test_delta_saves_what_last_saves(exported, bn):
    saved = {}
    for train in ("delta", "last"):
        _, out = exported("simple_cnn", rank=0.25, train=train, bn=bn, ort=False)
        session = TrainingSession(out, batch_size=4, codec="q4")
        saved[train] = (session.memory_plan.saved_by_node(), session.memory_report())
    by_node, report = saved["delta"]
    assert report["saved_bytes"] == saved["last"][1]["saved_bytes"]
    assert by_node == saved["last"][0]
    _, out = exported("simple_cnn", rank=0.25, train="delta", bn=bn, ort=False)
    residual = [layer for layer in Manifest.load(out).layers if layer.residual]
    assert residual and all(f"{layer.name}.last" in by_node for layer in residual)
    assert not any(node.endswith((".dense", ".first", ".core")) for node in by_node)


def test_delta_training_moves_only_the_update(exported):
    _, out = exported("simple_cnn", rank=0.25, train="delta", ort=False)
    x, y = batch(8, shape=(3, 32, 32), classes=10, seed=2)
    session = TrainingSession(out, batch_size=8, lr=0.05)
    before = session.predict(x)
    losses = [session.train_step(x, y) for _ in range(4)]
    assert losses[-1] < losses[0]
    residual = [layer for layer in Manifest.load(out).layers if layer.residual]
    params = session.parameters()
    assert all(params[layer.factors["last"]].any() for layer in residual)
    assert not np.allclose(session.predict(x), before)
