"""Trained weights out as inference ONNX, factorized or merged, checked in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from facto_edge.data import open_for_model
from facto_edge.evaluate import trained_session
from facto_edge.export_onnx import export_onnx
from facto_edge.runtime.manifest import Manifest

ort = pytest.importorskip("onnxruntime")


def ort_logits(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def digits_test_split(trained_run) -> tuple[np.ndarray, np.ndarray]:
    _, manifest = trained_session(trained_run, 64)
    ds = open_for_model("digits:", manifest, split="test")
    return ds.get(np.arange(len(ds)))


@pytest.mark.parametrize("merge", [False, True], ids=["factorized", "merged"])
def test_onnxruntime_agrees_with_the_runtime(trained_run, tmp_path, merge):
    x, _ = digits_test_split(trained_run)
    session, manifest = trained_session(trained_run, 64)
    result = export_onnx(trained_run, tmp_path / "trained.onnx", merge=merge)
    expected = session.predict(x)
    logits = ort_logits(result.path, x)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    assert np.array_equal(logits.argmax(1), expected.argmax(1))
    graph = onnx.load(str(result.path)).graph
    inits = {t.name: list(t.dims) for t in graph.initializer}
    factorized = [layer for layer in manifest.layers if layer.method != "dense"]
    assert result.merged == ([layer.name for layer in factorized] if merge else [])
    for layer in factorized:
        if merge:
            assert inits[f"{layer.name}.weight"][:2] == layer.shape[:2]
            assert layer.factors["first"] not in inits
        else:
            assert layer.factors["first"] in inits


def test_trained_weights_are_the_checkpoints(trained_run, digits_model, tmp_path):
    before = export_onnx(digits_model, tmp_path / "before.onnx").path
    after = export_onnx(trained_run, tmp_path / "after.onnx").path
    x, _ = digits_test_split(trained_run)
    assert not np.allclose(ort_logits(before, x), ort_logits(after, x))


def test_batchnorm_in_training_mode_exports_for_inference(pretrained_pt, small_npz, tmp_path):
    from facto_edge import export
    from facto_edge.train import train

    model = export(pretrained_pt, tmp_path / "bn.facto", rank=0.25, bn="train", ort=False)
    assert any(layer.bn == "train" for layer in model.layers)
    run = tmp_path / "run"
    train(tmp_path / "bn.facto", str(small_npz), run, epochs=1, batch_size=20, plot=False)
    session, _ = trained_session(run, 20)
    x, _ = digits_test_split(run)
    for merge in (False, True):
        path = export_onnx(run, tmp_path / f"bn{merge}.onnx", merge=merge).path
        bns = [n for n in onnx.load(str(path)).graph.node if n.op_type == "BatchNormalization"]
        assert bns and all(len(n.output) == 1 for n in bns)
        np.testing.assert_allclose(ort_logits(path, x), session.predict(x), atol=1e-4, rtol=0)
    assert Manifest.load(run / "model.facto").layers == Manifest.load(tmp_path / "bn.facto").layers


def pointwise_linears():
    """ConvNeXt's pointwise Linears on a channels-last 4-D tensor (MatMul layers) and a
    1-D convolution (Tucker-2 in 1-D), each wide enough to factorize."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 3, padding=1)
            self.up = nn.Linear(32, 64)
            self.down = nn.Linear(64, 32, bias=False)
            self.line = nn.Conv1d(32, 24, 3, padding=1)
            self.fc = nn.Linear(24, 10)

        def forward(self, x):
            y = self.stem(x).permute(0, 2, 3, 1)
            y = self.down(torch.relu(self.up(y))).permute(0, 3, 1, 2)
            return self.fc(self.line(y.flatten(2)).mean(2))

    torch.manual_seed(0)
    return Net().eval()


def test_merge_rebuilds_matmul_and_1d_layers(tmp_path):
    from facto_edge import export

    model_dir = tmp_path / "m.facto"
    manifest = export(pointwise_linears(), model_dir, input_shape=(3, 6, 6), rank=0.5, ort=False)
    layers = {layer.name: layer for layer in manifest.layers}
    assert [layers[n].op for n in ("up", "down")] == ["MatMul", "MatMul"]
    assert {layers[n].method for n in ("up", "down", "line")} == {"svd", "tucker2"}

    result = export_onnx(model_dir, tmp_path / "merged.onnx", merge=True)
    assert {"up", "down", "line"} <= set(result.merged)
    x = np.random.default_rng(0).standard_normal((3, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(
        ort_logits(result.path, x), ort_logits(model_dir / "model.onnx", x), rtol=1e-4, atol=1e-5
    )
    graph = onnx.load(str(result.path)).graph
    inits = {t.name: list(t.dims) for t in graph.initializer}
    assert inits["up.weight"] == [32, 64] and inits["down.weight"] == [64, 32]
    assert inits["line.weight"] == [24, 32, 3]
    assert not {layers[n].factors["first"] for n in ("up", "down", "line")} & inits.keys()
    matmuls = {n.name: list(n.input) for n in graph.node if n.op_type == "MatMul"}
    assert matmuls["up"][1] == "up.weight" and matmuls["down"][1] == "down.weight"
