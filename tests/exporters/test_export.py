"""The exporter against the original PyTorch models: equivalence, factors, ORT artifacts."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from facto_edge.exporters import decompose as dec
from facto_edge.runtime.manifest import Manifest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

ZOO = ["simple_cnn", "resnet18_cifar", "mobilenetv2_cifar", "vgg11_bn_cifar"]


def onnx_logits(model_dir, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def initializers(model_dir) -> dict[str, np.ndarray]:
    model = onnx.load(str(model_dir / "model.onnx"))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("name", ZOO)
def test_full_rank_matches_pytorch(exported, name):
    model, out = exported(name, rank=1.0, ort=False)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = onnx_logits(out, x)
    assert np.abs(got - expected).max() < 1e-4
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")), full_check=True)


def folded_weight(model, layer_name: str) -> np.ndarray:
    """The original weight of `layer_name` with its following BatchNorm folded in."""
    modules = dict(model.named_modules())
    w = modules[layer_name].weight.detach().numpy().astype(np.float64)
    parent, _, last = layer_name.rpartition(".")
    names = list(dict(modules[parent].named_children()) if parent else dict(model.named_children()))
    nxt = names[names.index(last) + 1] if names.index(last) + 1 < len(names) else None
    bn = modules.get(f"{parent}.{nxt}" if parent else nxt)
    if isinstance(bn, torch.nn.BatchNorm2d):
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
        w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    return w


@pytest.mark.parametrize("name", ["simple_cnn", "resnet18_cifar"])
def test_factors_rebuild_weights_with_reported_error(exported, name):
    model, out = exported(name, rank=0.25, train="last", bn="fold", ort=False)
    manifest = Manifest.load(out)
    inits = initializers(out)
    checked = 0
    for layer in manifest.layers:
        f = {role: inits[n] for role, n in layer.factors.items()}
        if layer.method == "tucker2":
            rebuilt = dec.tucker2_rebuild(f["first"], f["core"], f["last"])
        elif layer.method == "svd":
            first, last = (
                f["first"].reshape(len(f["first"]), -1),
                f["last"].reshape(len(f["last"]), -1),
            )
            rebuilt = (last @ first).reshape(layer.shape)
        else:
            continue
        w = folded_weight(model, layer.name).reshape(layer.shape)
        assert layer.rel_error == pytest.approx(dec.relative_error(w, rebuilt), rel=1e-3, abs=1e-5)
        assert 0 < layer.rel_error < 1
        checked += 1
    assert checked >= 3


def test_manifest_records_layers_and_trainable_set(exported):
    _, out = exported("resnet18_cifar", rank=0.25, train="last", bn="fold", ort=False)
    data = json.loads((out / "manifest.json").read_text())
    assert data["input_shape"] == [3, 32, 32] and data["num_classes"] == 10
    methods = {layer["name"]: layer["method"] for layer in data["layers"]}
    assert methods["layer1.0.conv1"] == "tucker2"
    assert methods["layer2.0.shortcut.0"] == "svd"
    assert methods["fc"] == "dense"
    assert "layer1.0.conv1.last.weight" in data["trainable"]
    assert "layer1.0.conv1.first.weight" not in data["trainable"]
    assert {"fc.weight", "fc.bias"} <= set(data["trainable"])
    model = onnx.load(str(out / "model.onnx"))
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)


def test_depthwise_layers_stay_dense_and_frozen(exported):
    _, out = exported("mobilenetv2_cifar", rank=0.25, ort=False)
    manifest = Manifest.load(out)
    depthwise = [layer for layer in manifest.layers if layer.attrs.get("groups", 1) > 1]
    assert depthwise and all(layer.method == "dense" and not layer.trainable for layer in depthwise)


def test_energy_rank_keeps_requested_share():
    w = np.random.default_rng(0).standard_normal((32, 64))
    r = dec.rank_by_energy(w, 0.9)
    s = np.linalg.svd(w, compute_uv=False) ** 2
    assert s[:r].sum() / s.sum() >= 0.9 > s[: r - 1].sum() / s.sum()


def test_bn_train_keeps_trainable_batchnorm(exported):
    _, out = exported("simple_cnn", rank=0.25, bn="train", ort=False)
    manifest = Manifest.load(out)
    model = onnx.load(str(out / "model.onnx"))
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert bns and all(n.input[1] in manifest.trainable for n in bns)
    # BN trains with a factorized layer; a layer left dense (the 3-channel stem) stays
    # frozen with its BN folded in, so backward never reaches it
    by_name = {layer.name: layer for layer in manifest.layers}
    assert by_name["features.0"].method == "dense" and by_name["features.0"].bn == "folded"
    assert all(layer.bn == "train" for layer in manifest.layers if layer.method == "tucker2")
    assert len(bns) == sum(layer.bn == "train" for layer in manifest.layers)


def test_train_mix_trains_the_union_of_its_factors(exported):
    _, out = exported("simple_cnn", rank=0.25, train="core,last", bn="fold", ort=False)
    layers = {layer.name: layer for layer in Manifest.load(out).layers}
    tucker = [layer for layer in layers.values() if layer.method == "tucker2"]
    assert tucker and all(
        set(layer.trainable) == {layer.factors[r] for r in ("core", "last", "bias")}
        for layer in tucker
    )
    hidden = layers["hidden"]  # SVD: its "core" is its "last"
    assert hidden.method == "svd" and hidden.trainable == [
        hidden.factors["last"],
        hidden.factors["bias"],
    ]


def test_bn_train_matches_the_original_model(exported):
    model, out = exported("simple_cnn", rank=1.0, bn="train", ort=False)
    x = np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(onnx_logits(out, x) - expected).max() < 1e-4


@pytest.mark.parametrize("bn", ["fold", "train"])
def test_ort_artifacts_train_and_match_trainable_set(exported, bn):
    pytest.importorskip("onnxruntime.training")
    from onnxruntime.training import api

    _, out = exported("simple_cnn", rank=0.25, bn=bn)
    manifest = Manifest.load(out)
    assert manifest.ort
    state = api.CheckpointState.load_checkpoint(str(out / "ort" / "checkpoint"))
    module = api.Module(
        str(out / "ort" / "training_model.onnx"), state, str(out / "ort" / "eval_model.onnx")
    )
    optimizer = api.Optimizer(str(out / "ort" / "optimizer_sgd.onnx"), module)
    optimizer.set_learning_rate(0.05)
    trainable = {name for name, param in state.parameters if param.requires_grad}
    assert trainable == set(manifest.trainable)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 8).astype(np.int64)
    module.train()
    losses = []
    for _ in range(6):
        losses.append(float(module(x, y)))
        optimizer.step()
        module.lazy_reset_grad()
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(("name", "bn"), [("resnet18_cifar", "fold"), ("simple_cnn", "train")])
def test_delta_starts_at_the_original_model(exported, name, bn):
    model, out = exported(name, rank=0.25, train="delta", bn=bn, ort=False)
    x = np.random.default_rng(5).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_logits(out, x), expected, rtol=1e-4, atol=1e-5)


def test_delta_trains_only_a_zero_last_beside_the_frozen_weight(exported):
    model, out = exported("simple_cnn", rank=0.25, train="delta", bn="fold", ort=False)
    manifest, inits = Manifest.load(out), initializers(out)
    residual = [layer for layer in manifest.layers if layer.residual]
    assert {layer.method for layer in residual} == {"tucker2", "svd"}
    for layer in residual:
        assert layer.trainable == [layer.factors["last"], layer.factors["bias"]]
        assert not inits[layer.factors["last"]].any()
        # the frozen weight is the original one, its BatchNorm folded in
        w = folded_weight(model, layer.name).reshape(layer.shape)
        np.testing.assert_allclose(inits[layer.factors["weight"]].reshape(layer.shape), w,
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    dense = [layer for layer in manifest.layers if not layer.residual]
    assert all(layer.method == "dense" for layer in dense)
    assert set(manifest.trainable) == {n for layer in manifest.layers for n in layer.trainable}


def test_an_op_ort_training_cannot_differentiate_skips_ort_with_a_warning(tmp_path):
    pytest.importorskip("onnxruntime.training")
    from facto_edge import export

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.Hardsigmoid(),  # a trainable factor
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    ).eval()  # fmt: skip
    with pytest.warns(UserWarning, match=r"no gradient for HardSigmoid \(node /3/"):
        manifest = export(model, tmp_path / "m.facto", input_shape=(3, 8, 8), rank=0.5)
    assert not manifest.ort and not (tmp_path / "m.facto" / "ort").exists()
    assert not Manifest.load(tmp_path / "m.facto").ort
