"""SiLU and erf-GELU patterns fuse into one node when the graph loads, keep only their
input, and train like the unfused graph run by PyTorch."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from tiny_graphs import batch
from torch_ref import TorchReference

from facto_edge.runtime import TrainingSession
from facto_edge.runtime.graph import load_graph


def _scalar(name: str, v: float):
    return numpy_helper.from_array(np.array(v, np.float32), name)


GELU_FORMS = {  # the 0.5 applied at each of the three places, with Div or Mul by 1/sqrt 2
    "x*a*0.5": [("Mul", ["x", "a"], "m"), ("Mul", ["m", "half"], "y")],
    "x*(a*0.5)": [("Mul", ["half", "a"], "m"), ("Mul", ["x", "m"], "y")],
    "(x*0.5)*a": [("Mul", ["x", "half"], "m"), ("Mul", ["m", "a"], "y")],
}


def _model(gelu: str, silu_shared: bool = False):
    """input [N,3,6,6] -> Conv (trainable) -> x*sigmoid(x) -> GELU (erf form) ->
    GlobalAveragePool -> Flatten -> Gemm (trainable)."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.4).astype(np.float32), "w")
    fc = numpy_helper.from_array((rng.standard_normal((5, 4)) * 0.4).astype(np.float32), "fc")
    inits = [w, fc, _scalar("sqrt2", math.sqrt(2)), _scalar("one", 1.0), _scalar("half", 0.5)]
    make = helper.make_node
    nodes = [
        make("Conv", ["input", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
        make("Sigmoid", ["c"], ["s"], "sig"),
        make("Mul", ["c", "s"], ["x"], "silu"),
        make("Div", ["x", "sqrt2"], ["d"], "div"),
        make("Erf", ["d"], ["e"], "erf"),
        make("Add", ["e", "one"], ["a"], "add"),
        *(make(op, ins, [out], f"gelu.{out}") for op, ins, out in GELU_FORMS[gelu]),
        make("GlobalAveragePool", ["y"], ["g"], "gap"),
        make("Flatten", ["g"], ["v"], "flatten"),
        make("Gemm", ["v", "fc"], ["logits"], "fc", transB=1),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])]
    if silu_shared:  # the sigmoid also read elsewhere: no fusion
        outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 4, 6, 6]))
    inp = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])]
    graph = helper.make_graph(nodes, "fusion", inp, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    manifest = {
        "input_shape": [3, 6, 6],
        "num_classes": 5,
        "normalization": {"mean": [0.0] * 3, "std": [1.0] * 3},
        "trainable": ["w", "fc"],
        "layers": [],
    }
    return model, manifest


@pytest.mark.parametrize("gelu", GELU_FORMS)
def test_patterns_fuse_and_train_like_pytorch(gelu):
    model, manifest = _model(gelu)
    ops = [n.op_type for n in load_graph((model, manifest)).nodes]
    assert ops == ["Conv", "Swish", "Gelu", "GlobalAveragePool", "Flatten", "Gemm"]

    x, y = batch(3, shape=(3, 6, 6), seed=2)
    session = TrainingSession((model, manifest), batch_size=3)
    loss, grads = session.compute_gradients(x, y)
    ref = TorchReference(model, manifest["trainable"])
    ref_loss = F.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
    ref_loss.backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    for key, g in ref.grads().items():
        np.testing.assert_allclose(grads[key], g, rtol=1e-4, atol=1e-6, err_msg=key)


def test_shared_sigmoid_is_not_fused():
    ops = [n.op_type for n in load_graph(_model("x*a*0.5", silu_shared=True)).nodes]
    assert ops[:3] == ["Conv", "Sigmoid", "Mul"] and "Gelu" in ops


class GroupNormNet(torch.nn.Module):
    """Conv -> GroupNorm -> ReLU twice, a pool and a Linear: nn.GroupNorm as torch.onnx
    writes it (Reshape -> InstanceNormalization -> Reshape, then Mul and Add)."""

    def __init__(self, affine_ones: bool) -> None:
        super().__init__()
        nn = torch.nn
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(2, 16), nn.ReLU(),
        )  # fmt: skip
        if not affine_ones:  # a trained model's weight and bias: the Mul and Add stay
            for m in self.body:
                if isinstance(m, nn.GroupNorm):
                    m.weight.data.uniform_(0.5, 1.5)
                    m.bias.data.uniform_(-0.3, 0.3)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


class ShapePoolGroupNormNet(GroupNormNet):
    """The same, pooled by a kernel read from the shape: only the dynamo exporter takes
    it, and writes its GroupNorms with CastLike nodes that export folds."""

    def forward(self, x):
        y = self.body(x)
        return self.fc(F.avg_pool2d(y, y.shape[2:]).flatten(1))


@pytest.mark.parametrize(
    "net, affine_ones",
    [(GroupNormNet, False), (GroupNormNet, True), (ShapePoolGroupNormNet, False)],
    ids=["torchscript", "torchscript-affine-ones", "dynamo"],
)
def test_groupnorm_exports_fuses_and_trains_like_pytorch(tmp_path, net, affine_ones):
    from facto_edge.exporters.export import export

    out = tmp_path / "gn.facto"
    model = net(affine_ones).eval()
    export(model, out, input_shape=(3, 8, 8), rank=0.5, train="core,last", ort=False)
    nodes = load_graph(out).nodes
    fused = [n for n in nodes if n.op_type == "GroupNormalization"]
    assert [n.attrs["num_groups"] for n in fused] == [4, 2]
    assert "InstanceNormalization" not in {n.op_type for n in nodes}
    written = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert written.count("InstanceNormalization") == 2  # standard opset-17 ONNX on disk
    reshapes = written.count("Reshape") - [n.op_type for n in nodes].count("Reshape")
    assert reshapes == 4  # both of each GroupNorm's Reshapes fused away
    assert all(bool(n.inputs[1]) != affine_ones for n in fused)

    x, y = batch(4, shape=(3, 8, 8), classes=10, seed=5)
    session = TrainingSession(out, batch_size=4)
    loss, grads = session.compute_gradients(x, y)
    ref = TorchReference.load(out)
    ref_loss = F.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
    ref_loss.backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    assert grads.keys() == ref.grads().keys() and grads
    for key, g in ref.grads().items():
        np.testing.assert_allclose(grads[key], g, rtol=1e-4, atol=1e-5, err_msg=key)

    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.predict(x), expected, rtol=1e-4, atol=1e-5)
    losses = [session.train_step(x, y) for _ in range(8)]
    assert losses[-1] < losses[0]


def _unfused(monkeypatch) -> None:
    """Load graphs without the delta-conv fusion (the other patterns still fuse)."""
    from facto_edge.runtime import fusion

    monkeypatch.setattr(fusion, "_delta", lambda view, node: None)


@pytest.mark.parametrize(
    ("name", "bn", "fused"),
    [("simple_cnn", "fold", 2), ("simple_cnn", "train", 2), ("mobilenetv2_cifar", "fold", 34)],
)
def test_delta_convs_fuse_and_train_like_the_unfused_graph(exported, monkeypatch, name, bn, fused):
    """A --train delta export: each factorized conv's dense node, chain and Add become one
    DeltaConv (3x3 Tucker layers in simple_cnn, 1x1 SVD layers in mobilenetv2), which
    keeps what the unfused graph keeps and trains to the same losses and gradients."""
    _, out = exported(name, rank=0.25, train="delta", bn=bn, ort=False)
    assert [n.op_type for n in load_graph(out).nodes].count("DeltaConv") == fused
    x, y = batch(4, shape=(3, 32, 32), classes=10, seed=3)
    runs = {}
    for kind in ("fused", "unfused"):
        if kind == "unfused":
            _unfused(monkeypatch)
            assert "DeltaConv" not in {n.op_type for n in load_graph(out).nodes}
        session = TrainingSession(out, batch_size=4, lr=0.05, codec="fp32")
        losses = [session.train_step(x, y) for _ in range(3)]  # `last` away from zero
        runs[kind] = (losses, *session.compute_gradients(x, y), session.memory_report())
    (losses, loss, grads, report), (ref_losses, ref_loss, ref_grads, ref_report) = runs.values()
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys() and grads
    for key, g in grads.items():
        scale = np.abs(ref_grads[key]).max()
        np.testing.assert_allclose(g, ref_grads[key], rtol=1e-4, atol=1e-5 * scale, err_msg=key)
    assert report["saved_bytes"] == ref_report["saved_bytes"]


def test_delta_conv_with_a_trainable_chain_factor_stays_unfused(exported):
    """A delta conv fuses only while W, first and core are frozen: training `first` too
    would need the chain's backward, so that layer runs as exported."""
    import json

    _, out = exported("simple_cnn", rank=0.25, train="delta", bn="fold", ort=False)
    manifest = json.loads((out / "manifest.json").read_text())
    layer = next(ly for ly in manifest["layers"] if ly.get("residual"))
    manifest["trainable"].append(layer["factors"]["first"])
    nodes = load_graph((onnx.load(str(out / "model.onnx")), manifest)).nodes
    fused = [n.name for n in nodes if n.op_type == "DeltaConv"]
    assert len(fused) == 1 and f"{layer['name']}.last" not in fused
    assert f"{layer['name']}.delta_add" in {n.name for n in nodes}
