"""Training some layers only (`train_layers`) and choosing them by gradient importance
per saved byte (runtime/importance.py)."""

import numpy as np
import pytest

from facto_edge.runtime import TrainingSession
from facto_edge.runtime.errors import FactoEdgeError
from facto_edge.runtime.importance import head_layers, layer_importance, saved_bytes, select_layers
from facto_edge.runtime.manifest import Manifest


@pytest.fixture(scope="module")
def model(zoo_export):
    return zoo_export("resnet20_cifar", "delta", "train")


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, n)


def _layer(model, name):
    return next(layer for layer in Manifest.load(model).layers if layer.name == name)


def test_a_restricted_session_trains_only_the_named_layers_with_the_full_gradients(model):
    x, y = _batch()
    names = ["layers.8.conv2", "linear"]
    full = TrainingSession(model, batch_size=8, threads=1)
    _, every = full.compute_gradients(x, y)
    full.close()
    some = TrainingSession(model, batch_size=8, threads=1, train_layers=names)
    tensors = [t for n in names for t in _layer(model, n).trainable]
    assert sorted(some.parameters()) == sorted(tensors)
    _, grads = some.compute_gradients(x, y)
    for name in tensors:
        np.testing.assert_allclose(grads[name], every[name], rtol=1e-5, atol=1e-7)
    before = {k: np.array(v) for k, v in some.parameters().items()}
    frozen = _layer(model, "layers.0.conv1").trainable[0]
    some.train_step(x, y)
    assert any(not np.array_equal(before[k], v) for k, v in some.parameters().items())
    assert frozen not in some.parameters()
    some.close()


def test_frozen_layers_below_the_trained_ones_save_nothing(model):
    top = saved_bytes(model, ["linear"], 8, "q4")
    deeper = saved_bytes(model, ["layers.4.conv1", "linear"], 8, "q4")
    every = saved_bytes(model, None, 8, "q4")
    assert top < deeper < every


@pytest.mark.parametrize(
    "layers, message",
    [(["nonesuch"], "has no layer 'nonesuch'"), ([], "names no layer")],
)
def test_a_bad_layer_list_is_refused_naming_the_problem(model, layers, message):
    with pytest.raises(FactoEdgeError, match=message):
        TrainingSession(model, batch_size=4, train_layers=layers)


def _zeroed_head(model):
    """The export as an (onnx.ModelProto, manifest) pair with its classifier zeroed, as
    a freshly reset head is."""
    import json

    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model / "model.onnx"))
    head = set(_layer(model, "linear").trainable)
    for t in proto.graph.initializer:
        if t.name in head:
            t.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(t)), t.name))
    return proto, json.loads((model / "manifest.json").read_text())


def test_importance_sees_past_a_zeroed_head(model):
    x, y = _batch(16)
    source = _zeroed_head(model)
    assert head_layers(source) == ["linear"]
    cold = layer_importance(source, x, y, 8, threads=1, head_steps=0)
    assert all(v == 0 for k, v in cold.items() if k != "linear")  # nothing reaches the body
    scores = layer_importance(source, x, y, 8, threads=1)
    assert set(scores) == {layer.name for layer in Manifest.load(model).layers if layer.trainable}
    body = [v for k, v in scores.items() if k != "linear"]
    assert all(np.isfinite(body)) and min(body) > 0


def test_the_selection_keeps_within_its_limit_and_always_trains_the_head(model):
    x, y = _batch(16)
    every = saved_bytes(model, None, 8, "q4")
    limit = every // 2
    choice = select_layers(model, x, y, limit, 8, codec="q4", threads=1)
    assert "linear" in choice.layers and 1 < len(choice.layers) < len(choice.scores) + 1
    assert choice.saved_bytes <= limit and choice.all_saved_bytes == every
    assert choice.saved_bytes == saved_bytes(model, choice.layers, 8, "q4")
    assert "linear" in choice.table() or "layers." in choice.table()
    with pytest.raises(FactoEdgeError, match="training the head alone saves"):
        select_layers(model, x, y, 16, 8, codec="q4", threads=1)
