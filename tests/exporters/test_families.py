"""The zoo's families through the exporter: normalization, both torch.onnx paths, the new
factorization shapes, and onnxruntime as the oracle (the facto-edge runtime does not run
all of their ops yet, so these exports skip its op check)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from facto_edge import zoo
from facto_edge.errors import ExportError, UnsupportedOpError
from facto_edge.exporters import decompose as dec
from facto_edge.exporters.export import export
from facto_edge.exporters.normalize import computed_sizes, normalize
from facto_edge.exporters.to_onnx import to_onnx

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
nn, F = torch.nn, torch.nn.functional
from bn_helpers import perturb_bn  # noqa: E402

FAMILIES = [
    "mobilenetv3_small", "efficientnet_b0", "shufflenetv2", "resnet18_imagenet", "densenet",
    "squeezenet", "convnext_atto", "mcunet_like", "ds_cnn", "kws_conv1d", "resnet20_cifar",
]  # fmt: skip
SIZE_OPS = {"Shape", "Gather", "Cast", "ConstantOfShape", "Unsqueeze", "Range", "Identity"}


def input_shape_for(name: str) -> tuple[int, ...]:
    """CIFAR-size input for the image models (ResNet-18 too), the model's own otherwise."""
    shape = zoo.ZOO[name].input_shape
    return (3, 32, 32) if shape[0] == 3 else shape


def onnx_logits(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def relative(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def sample(shape, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def export_family(tmp_path, model, shape, **kwargs):
    out = tmp_path / "m.facto"
    manifest = export(model, out, input_shape=shape, ort=False, runtime_check=False, **kwargs)
    return out, manifest


@pytest.mark.parametrize("name", FAMILIES)
def test_full_rank_export_matches_pytorch_and_folds_every_size(tmp_path, name):
    model, shape = perturb_bn(zoo.build(name)), input_shape_for(name)
    # ResNet-18's 512-channel Tucker-2s take most of a minute: factorization off instead
    off = {"min_channels": 10**6} if name == "resnet18_imagenet" else {}
    out, manifest = export_family(tmp_path, model, shape, rank=1.0, **off)
    x = sample(shape)
    assert relative(onnx_logits(out / "model.onnx", x), torch_logits(model, x)) < 1e-4
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain == ""] == [17]
    assert not computed_sizes(proto)
    assert not SIZE_OPS & {n.op_type for n in proto.graph.node}
    assert manifest.input_shape == list(shape)


def exact_low_rank(model, fraction: float = 0.5):
    """Project each dense weight onto the ranks `fraction` keeps (Tucker-2 modes of a
    k x k conv, the matrix rank of a 1x1 conv or Linear), so that the factorized export
    at that rank computes the same function as the model."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) or isinstance(m, nn.Conv1d | nn.Conv2d) and m.groups == 1:
                w = m.weight.detach().double().numpy()
                m.weight.copy_(torch.from_numpy(_project(w, fraction)).float())
    return model


def _project(w: np.ndarray, fraction: float) -> np.ndarray:
    c_out, c_in = w.shape[:2]
    if math.prod(w.shape[2:]) == 1:
        r = dec.rank_by_fraction(min(c_out, c_in), fraction)
        u, s, vt = np.linalg.svd(w.reshape(c_out, c_in), full_matrices=False)
        return ((u[:, :r] * s[:r]) @ vt[:r]).reshape(w.shape)
    for mode, c in ((0, c_out), (1, c_in)):
        u = np.linalg.svd(dec.unfold(w, mode), full_matrices=False)[0]
        u = u[:, : dec.rank_by_fraction(c, fraction)]
        w = np.moveaxis(np.tensordot(u @ u.T, w, axes=([1], [mode])), 0, mode)
    return w


HALF = [n for n in FAMILIES if n != "resnet18_imagenet"]
HALF.append(pytest.param("resnet18_imagenet", marks=pytest.mark.slow))


@pytest.mark.parametrize("name", HALF)
def test_rank_half_export_runs_and_matches_its_low_rank_model(tmp_path, name):
    model, shape = exact_low_rank(perturb_bn(zoo.build(name))), input_shape_for(name)
    out, manifest = export_family(tmp_path, model, shape, rank=0.5)
    x = sample(shape, seed=1)
    assert relative(onnx_logits(out / "model.onnx", x), torch_logits(model, x)) < 1e-4
    methods = {layer.method for layer in manifest.layers}
    assert methods & {"svd", "tucker2"} or name in ("ds_cnn",)


def test_normalization_folds_sizes_and_keeps_batchnorm():
    for name in ("shufflenetv2", "resnet20_cifar", "mcunet_like"):
        raw = to_onnx(torch.jit.script(zoo.build(name)), (3, 32, 32))
        assert computed_sizes(raw), name  # chunk, shuffle, option-A pad, x.view(x.size(0), -1)
        slim = normalize(raw)
        assert not computed_sizes(slim), name
        assert not SIZE_OPS & {n.op_type for n in slim.graph.node}, name
        count = [sum(n.op_type == "BatchNormalization" for n in g.graph.node) for g in (raw, slim)]
        assert count[0] == count[1] > 0, name
        bn_scales = [n.input[1] for n in slim.graph.node if n.op_type == "BatchNormalization"]
        assert len(set(bn_scales)) == len(bn_scales), "BN scales must stay separate tensors"


def test_batch_dependent_sizes_stay_dynamic(tmp_path):
    model = perturb_bn(zoo.build("shufflenetv2"))
    out, _ = export_family(tmp_path, model, (3, 32, 32), rank=1.0)
    for n in (1, 5):
        x = sample((3, 32, 32), n=n, seed=n)
        assert relative(onnx_logits(out / "model.onnx", x), torch_logits(model, x)) < 1e-4


class ShapePool(zoo.fam.MCUNetLike):
    """MCUNet's own global pool: a kernel size read from the input's shape."""

    def pool(self, x):
        return F.avg_pool2d(x, x.shape[2:])


def test_dynamo_exports_what_the_torchscript_exporter_cannot(tmp_path):
    model = perturb_bn(ShapePool().eval())
    out, _ = export_family(tmp_path, model, (3, 32, 32), rank=1.0)
    x = sample((3, 32, 32))
    assert relative(onnx_logits(out / "model.onnx", x), torch_logits(model, x)) < 1e-4
    proto = onnx.load(str(out / "model.onnx"))
    assert "AveragePool" in {n.op_type for n in proto.graph.node}
    assert not computed_sizes(proto)


def test_an_archive_neither_exporter_takes_is_one_named_line(tmp_path):
    with pytest.raises(ExportError) as e:
        export(torch.jit.script(ShapePool().eval()), tmp_path / "o.facto", ort=False)
    message = str(e.value)
    assert "\n" not in message
    assert "aten::avg_pool2d" in message and "top-level module (ShapePool)" in message
    assert not (tmp_path / "o.facto").exists()


def test_runtime_check_names_the_first_missing_op(tmp_path):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Softplus(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 10),
    )  # fmt: skip
    with pytest.raises(UnsupportedOpError) as e:
        export(model, tmp_path / "o.facto", ort=False)
    message = str(e.value)
    assert "ONNX op Softplus" in message and "module '1'" in message
    assert "--onnx-only" in message and "\n" not in message
    assert not (tmp_path / "o.facto").exists()


def test_one_dimensional_model_passes_the_runtime_check(tmp_path):
    export(zoo.build("kws_conv1d"), tmp_path / "o.facto", input_shape=(40, 98), ort=False)
    assert (tmp_path / "o.facto" / "model.onnx").exists()


class Shapes(nn.Module):
    """An asymmetric 10x4 stride-(2, 1) conv, a grouped conv, a 1-D conv and a Linear on a
    channels-last 4-D tensor, each wide enough to factorize."""

    def __init__(self):
        super().__init__()
        self.asym = nn.Conv2d(16, 32, (10, 4), stride=(2, 1), padding=(4, 1))
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.mlp = nn.Linear(32, 48)
        self.line = nn.Conv1d(48, 40, 5, stride=2, padding=2)
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        y = self.grouped(F.relu(self.asym(x)))
        y = self.mlp(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # [N, 48, H, W]
        y = self.line(y.flatten(2))  # [N, 40, L]
        return self.fc(y.mean(2))


@pytest.mark.parametrize("rank", [1.0, 0.5])
def test_new_shapes_factorize_and_match(tmp_path, rank):
    torch.manual_seed(0)
    model = Shapes().eval()
    if rank < 1:
        exact_low_rank(model, rank)
    out, manifest = export_family(tmp_path, model, (16, 20, 8), rank=rank, train="last", bn="fold")
    x = sample((16, 20, 8))
    assert relative(onnx_logits(out / "model.onnx", x), torch_logits(model, x)) < 1e-4
    layers = {layer.name: layer for layer in manifest.layers}
    assert layers["asym"].method == "tucker2" and layers["asym"].attrs["stride"] == [2, 1]
    assert layers["grouped"].method == "dense" and layers["grouped"].note == "grouped"
    assert layers["line"].method == "tucker2" and layers["line"].shape == [40, 48, 5]
    mlp = layers["mlp"]
    assert mlp.op == "MatMul" and mlp.method == "svd" and mlp.ranks == [math.ceil(32 * rank)]
    assert set(mlp.trainable) == {mlp.factors["last"], mlp.factors["bias"]}
    inits = {
        t.name: onnx.numpy_helper.to_array(t)
        for t in onnx.load(str(out / "model.onnx")).graph.initializer
    }
    f = {role: inits[n] for role, n in layers["line"].factors.items()}
    rebuilt = dec.tucker2_rebuild(f["first"], f["core"], f["last"])
    w = model.line.weight.detach().numpy()
    assert layers["line"].rel_error == pytest.approx(dec.relative_error(w, rebuilt), abs=1e-5)


@pytest.mark.parametrize(
    "name", ["densenet", "squeezenet", "mcunet_like", "ds_cnn", "resnet20_cifar"]
)
def test_families_of_runtime_ops_pass_the_runtime_check(tmp_path, name):
    out = tmp_path / "m.facto"
    manifest = export(zoo.build(name), out, input_shape=input_shape_for(name), ort=False)
    assert manifest.trainable
    pads = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "Pad"]
    assert all(len(n.input) == 2 for n in pads)  # F.pad's zero value: the default, dropped
