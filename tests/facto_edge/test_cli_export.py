"""`facto-edge zoo` and `facto-edge export` from the command line, bad input included."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from facto_edge.cli import main

torch = pytest.importorskip("torch")
nn = torch.nn


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_clean_failure(result, out, *words: str) -> None:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error: ")
    for word in words:
        assert word in message
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_zoo_list_names_every_model():
    result = run("zoo", "--list")
    assert result.exit_code == 0
    for name in ("resnet18_cifar", "mobilenetv2_cifar", "vgg11_bn_cifar", "simple_cnn"):
        assert name in result.output


def test_zoo_then_export_prints_layer_table(tmp_path):
    assert run("zoo", "simple_cnn", "-o", str(tmp_path / "m.pt"), "--seed", "3").exit_code == 0
    out = tmp_path / "m.facto"
    result = run("export", str(tmp_path / "m.pt"), "-o", str(out), "--no-ort")
    assert result.exit_code == 0, result.output
    assert "tucker2" in result.output and "total: params" in result.output
    assert (out / "model.onnx").is_file() and (out / "manifest.json").is_file()
    again = run("export", str(tmp_path / "m.pt"), "-o", str(out), "--no-ort")
    assert again.exit_code != 0 and "--force" in again.output
    assert (
        run("export", str(tmp_path / "m.pt"), "-o", str(out), "--no-ort", "--force").exit_code == 0
    )


def test_missing_file(tmp_path):
    out = tmp_path / "o.facto"
    assert_clean_failure(run("export", str(tmp_path / "nope.pt"), "-o", str(out)), out, "not found")


def test_not_a_model(tmp_path):
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"this is not a model at all")
    out = tmp_path / "o.facto"
    assert_clean_failure(run("export", str(bad), "-o", str(out)), out, "not a model")


def test_state_dict_explains_what_to_save(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(nn.Linear(4, 2).state_dict(), path)
    out = tmp_path / "o.facto"
    assert_clean_failure(run("export", str(path), "-o", str(out)), out, "state_dict", "jit.save")


class Deconv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.up(self.conv(x)).mean((2, 3)))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(32, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        out, _ = self.rnn(x.mean(1))
        return self.fc(out[:, -1])


@pytest.mark.parametrize(
    "module, layer", [(Deconv, "'up' is a ConvTranspose2d"), (Recurrent, "'rnn' is a LSTM")]
)
def test_unsupported_layer_is_named(tmp_path, module, layer):
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(module().eval()), str(path))
    out = tmp_path / "o.facto"
    assert_clean_failure(run("export", str(path), "-o", str(out)), out, layer)


def test_input_shape_the_model_rejects(tmp_path):
    path = tmp_path / "m.pt"
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    torch.jit.save(torch.jit.script(model.eval()), str(path))
    out = tmp_path / "o.facto"
    result = run("export", str(path), "-o", str(out), "--input-shape", "3x16x16")
    assert_clean_failure(result, out, "rejects input shape 3x16x16")


@pytest.mark.parametrize("rank", ["0", "1.5", "-0.2"])
def test_rank_outside_unit_interval(tmp_path, rank):
    assert run("zoo", "simple_cnn", "-o", str(tmp_path / "m.pt")).exit_code == 0
    out = tmp_path / "o.facto"
    result = run("export", str(tmp_path / "m.pt"), "-o", str(out), "--rank", rank)
    assert_clean_failure(result, out, "--rank must be in (0, 1]")


@pytest.mark.parametrize("train", ["middle", "core,", "last,bias", "delta,last"])
def test_train_names_unknown_factor(tmp_path, train):
    assert run("zoo", "simple_cnn", "-o", str(tmp_path / "m.pt")).exit_code == 0
    out = tmp_path / "o.facto"
    result = run("export", str(tmp_path / "m.pt"), "-o", str(out), "--train", train)
    assert_clean_failure(result, out, "--train must be last, first, core, all")


def test_export_help_names_delta():
    result = run("export", "--help")
    assert result.exit_code == 0 and "delta" in result.output


def test_pickled_module_is_refused_unless_trusted(tmp_path):
    from facto_edge import zoo

    path = tmp_path / "m.pt"
    torch.save(zoo.build("simple_cnn"), path)
    out = tmp_path / "o.facto"
    refused = run("export", str(path), "-o", str(out), "--no-ort")
    assert_clean_failure(refused, out, "--trust-pickle", "torch.jit.save")
    result = run("export", str(path), "-o", str(out), "--no-ort", "--trust-pickle")
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file()


def test_zoo_list_names_every_family():
    result = run("zoo", "--list")
    for name in ("mobilenetv3_small", "convnext_atto", "ds_cnn", "kws_conv1d", "resnet20_cifar"):
        assert name in result.output


class SoftplusNet(nn.Module):
    """A Softplus, which the runtime does not run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act, self.fc = (
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Softplus(),
            nn.Linear(8, 10),
        )

    def forward(self, x):
        return self.fc(torch.flatten(self.act(self.conv(x)).mean((2, 3)), 1))


def test_op_the_runtime_lacks_is_one_line_naming_op_node_and_module(tmp_path):
    path, out = tmp_path / "m.pt", tmp_path / "o.facto"
    torch.jit.save(torch.jit.script(SoftplusNet().eval()), str(path))
    result = run("export", str(path), "-o", str(out), "--no-ort")
    assert_clean_failure(result, out, "ONNX op Softplus", "node '/act/", "'act'")


class OddPool(nn.Module):
    """A 3x3 adaptive pool over a 32x32 map: torch.onnx's TorchScript exporter refuses it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(72, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


class ShapePool(nn.Module):
    """DS-CNN's global pool, F.avg_pool2d(x, x.shape[2:]): a kernel computed from a shape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.nn.functional.avg_pool2d(self.conv(x), x.shape[2:])
        return self.fc(x.view(x.size(0), -1))


@pytest.mark.parametrize(
    "module, words",
    [(OddPool, ["aten::adaptive_avg_pool2d", "not factor"]), (ShapePool, ["aten::avg_pool2d"])],
)
def test_archive_torch_onnx_cannot_export_is_one_line(tmp_path, module, words):
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(module().eval()), str(path))
    out = tmp_path / "o.facto"
    result = run("export", str(path), "-o", str(out), "--no-ort")
    assert_clean_failure(result, out, "torch.onnx cannot export", *words)
    assert "Torch IR graph" not in result.output


def test_pickled_module_goes_through_the_dynamo_exporter(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(ShapePool().eval(), path)
    out = tmp_path / "o.facto"
    result = run("export", str(path), "-o", str(out), "--no-ort", "--rank", "1", "--trust-pickle")
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx").is_file()


def test_one_dimensional_model_with_mean_std_presets(tmp_path):
    import json

    assert run("zoo", "kws_conv1d", "-o", str(tmp_path / "m.pt")).exit_code == 0
    out = tmp_path / "o.facto"
    result = run(
        "export", str(tmp_path / "m.pt"), "-o", str(out), "--no-ort", "--onnx-only",
        "--input-shape", "40x98", "--mean", "none",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_shape"] == [40, 98]
    assert manifest["normalization"] == {"mean": [0.0] * 40, "std": [1.0] * 40}


def test_mean_std_for_an_archive_without_metadata(tmp_path):
    import json

    from facto_edge import zoo

    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(zoo.build("simple_cnn")), str(path))
    out = tmp_path / "o.facto"
    result = run("export", str(path), "-o", str(out), "--no-ort", "--mean", "imagenet")
    assert result.exit_code == 0, result.output
    norm = json.loads((out / "manifest.json").read_text())["normalization"]
    assert norm == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    again = run("export", str(path), "-o", str(out), "--no-ort", "--force", "--mean", "0.5",
                "--std", "0.25,0.25,0.25")  # fmt: skip
    assert again.exit_code == 0, again.output
    norm = json.loads((out / "manifest.json").read_text())["normalization"]
    assert norm == {"mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.mark.parametrize(
    "args, words",
    [
        (["--mean", "imagenett"], ["preset", "imagenett"]),
        (["--mean", "0.5,0.5"], ["--mean needs one value per input channel (3), found 2"]),
        (["--input-shape", "3x32x32x1"], ["3x32x32 (CxHxW) or 40x98 (CxL)"]),
    ],
)
def test_bad_normalization_and_shape_options(tmp_path, args, words):
    assert run("zoo", "simple_cnn", "-o", str(tmp_path / "m.pt")).exit_code == 0
    out = tmp_path / "o.facto"
    result = run("export", str(tmp_path / "m.pt"), "-o", str(out), "--no-ort", *args)
    assert_clean_failure(result, out, *words)
