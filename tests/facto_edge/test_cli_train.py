"""`facto-edge train`, `eval` and `export-onnx` from the command line: the whole flow on
real digits, Ctrl-C and --resume, and every kind of bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from train_helpers import write_npz

from facto_edge.cli import main
from facto_edge.report import read_metrics_csv

ort = pytest.importorskip("onnxruntime")


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def train_args(model, data, out, *extra):
    return ("train", model, "--data", data, "-o", out, "--epochs", 1, "--batch-size", 20, *extra)


def snapshot(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_refused(result, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in result.output
    for word in words:
        assert word in line, line


def test_export_train_eval_export_onnx_on_digits(pretrained_pt, tmp_path):
    model, run = tmp_path / "model.facto", tmp_path / "run"
    assert cli("export", pretrained_pt, "-o", model, "--no-ort").exit_code == 0
    result = cli(
        *train_args(model, "digits:", run, "--epochs", 3, "--batch-size", 32, "--lr", 0.05)
    )
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "arena" in result.output
    rows = read_metrics_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] < rows[0]["loss"]
    assert {"loss", "accuracy", "train_seconds", "images_per_s"} <= set(rows[0])
    assert (run / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    result = cli("eval", run, "--data", "digits:", "--plot")
    accuracy = float(re.search(r"accuracy ([\d.]+)%", result.output).group(1))
    assert result.exit_code == 0 and accuracy > 60  # ten classes: chance is 10%
    assert (run / "confusion.png").is_file()
    from facto_edge.evaluate import trained_session

    session, manifest = trained_session(run, 64)
    x = np.random.default_rng(1).standard_normal((16, 1, 16, 16)).astype(np.float32)
    for merge in ((), ("--merge", "--force")):
        result = cli("export-onnx", run, "-o", tmp_path / "trained.onnx", *merge)
        assert result.exit_code == 0 and "onnxruntime agrees" in result.output
        sess = ort.InferenceSession(str(tmp_path / "trained.onnx"))
        logits = sess.run(None, {"input": x})[0]
        np.testing.assert_allclose(logits, session.predict(x), atol=1e-4, rtol=0)


def test_ctrl_c_exits_130_and_resume_finishes(digits_model, small_npz, tmp_path, monkeypatch):
    from facto_edge.progress import TqdmProgress

    def interrupt(self, step):
        if step.step == 3:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(TqdmProgress, "on_step", interrupt)
        result = cli(*train_args(digits_model, small_npz, run, "--epochs", 2))
    assert result.exit_code == 130 and "continue with --resume" in result.output
    result = cli(*train_args(digits_model, small_npz, run, "--epochs", 2, "--resume"))
    assert result.exit_code == 0, result.output
    assert "resuming at epoch 1" in result.output
    assert [r["step"] for r in read_metrics_csv(run / "metrics.csv")] == [9, 18]


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", ["does not exist"]),
        ("empty", ["is empty"]),
        ("labels", ["label 12", "outside [0, 10)"]),
        ("shape", ["2 channels", "expects 1"]),
        ("nan", ["NaN or Inf"]),
    ],
)
def test_bad_data_is_refused_before_anything_is_written(digits_model, tmp_path, case, words):
    x, y = np.random.default_rng(0).random((40, 8, 8), dtype=np.float32), np.arange(40) % 10
    npz = tmp_path / f"{case}.npz"
    data = {
        "missing": lambda: tmp_path / "nowhere",
        "empty": lambda: tmp_path / "empty",
        "labels": lambda: write_npz(npz, 40, y=np.where(y == 3, 12, y)),
        "shape": lambda: write_npz(npz, 40, x=(x[..., None] * [255, 255]).astype(np.uint8)),
        "nan": lambda: write_npz(npz, 40, x=np.where(x > 0.99, np.nan, x)),
    }[case]()
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    assert_refused(cli(*train_args(digits_model, data, out)), *words)
    assert not out.exists()


@pytest.mark.parametrize(
    "value, words",
    [
        ("bn:10", ["--lr-groups must look like bn=10,head=0.5"]),
        ("bn=ten", ["--lr-groups must look like"]),
        ("heads=2", ["unknown group 'heads'", "factors, bias, bn, head"]),
        ("bn=1,bn=2", ["'bn' twice"]),
        ("bn=-1", ["multiplier of 'bn'", ">= 0"]),
    ],
)
def test_bad_lr_groups_are_refused(digits_model, small_npz, tmp_path, value, words):
    out = tmp_path / "run"
    result = cli(*train_args(digits_model, small_npz, out, "--lr-groups", value))
    assert_refused(result, *words)
    assert not out.exists()


def test_stochastic_rounding_needs_a_block_codec(digits_model, small_npz, tmp_path):
    out = tmp_path / "run"
    args = ("--rounding", "stochastic", "--codec", "fp16")
    assert_refused(cli(*train_args(digits_model, small_npz, out, *args)), "codec rounding")
    assert not out.exists()


def image_folder(root, corrupt: int):
    from PIL import Image

    x, y = np.random.default_rng(0).integers(0, 255, (8, 16, 16), dtype=np.uint8), [0, 1] * 4
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / str(label) / f"{i}.png")
    for i in range(corrupt):
        (root / "0" / f"bad{i}.png").write_bytes(b"\x89PNG not really")
    return root


def test_corrupt_images_are_skipped_with_a_count_or_fail(digits_model, tmp_path):
    data = image_folder(tmp_path / "images", corrupt=2)
    args = train_args(digits_model, data, tmp_path / "run", "--val-split", 0.25)
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "warning: skipped 2 unreadable image(s)" in result.output
    failing = train_args(digits_model, data, tmp_path / "run2", "--on-corrupt", "fail")
    assert_refused(cli(*failing), "cannot read image", "bad0.png")


@pytest.fixture()
def finished_run(digits_model, small_npz, tmp_path):
    run = tmp_path / "run"
    assert cli(*train_args(digits_model, small_npz, run)).exit_code == 0
    return run


def test_run_directory_of_another_run_is_refused(digits_model, small_npz, finished_run):
    before = snapshot(finished_run)
    again = cli(*train_args(digits_model, small_npz, finished_run))
    assert_refused(again, "already holds this run", "--resume")
    other = cli(*train_args(digits_model, small_npz, finished_run, "--lr", 0.5))
    assert_refused(other, "holds another run", "lr: 0.01 -> 0.5")
    assert snapshot(finished_run) == before


def test_mismatched_resume_is_refused(digits_model, pretrained_pt, small_npz, finished_run):
    before = snapshot(finished_run)
    options = cli(*train_args(digits_model, small_npz, finished_run, "--resume", "--codec", "q4"))
    assert_refused(options, "cannot resume", "codec: 'q2' -> 'q4'")
    other = finished_run.parent / "other.facto"
    assert cli("export", pretrained_pt, "-o", other, "--no-ort", "--rank", 0.5).exit_code == 0
    model = cli(*train_args(other, small_npz, finished_run, "--resume"))
    assert_refused(model, "trained from another model")
    assert snapshot(finished_run) == before


def test_corrupt_checkpoint_on_resume_is_refused(digits_model, small_npz, finished_run):
    ckpt = finished_run / "checkpoint.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    before = snapshot(finished_run)
    result = cli(*train_args(digits_model, small_npz, finished_run, "--resume", "--epochs", 2))
    assert_refused(result, "checkpoint", "is corrupt")
    assert snapshot(finished_run) == before


def test_eval_and_export_onnx_of_nothing_are_refused(tmp_path):
    assert_refused(cli("eval", tmp_path, "--data", "digits:"), "neither a run directory")
    assert_refused(cli("export-onnx", tmp_path, "-o", tmp_path / "t.onnx"), "neither a run")


def test_delta_export_plans_trains_and_merges(pretrained_pt, small_npz, tmp_path):
    model, run = tmp_path / "delta.facto", tmp_path / "run"
    result = cli("export", pretrained_pt, "-o", model, "--no-ort", "--train", "delta")
    assert result.exit_code == 0 and "tucker2+W" in result.output, result.output
    planned = cli("plan", model, "--budget", "1GB")
    assert planned.exit_code == 0 and "saved for backward" in planned.output, planned.output
    extra = ("--lr", 0.05, "--lr-groups", "head=0.5", "--rounding", "stochastic")
    trained = cli(*train_args(model, small_npz, run, *extra))
    assert trained.exit_code == 0, trained.output
    config = json.loads((run / "run.json").read_text())["config"]
    assert config["lr_groups"] == {"head": 0.5} and config["rounding"] == "stochastic"
    from facto_edge.evaluate import trained_session

    session, _ = trained_session(run, 64)
    x = np.random.default_rng(1).standard_normal((16, 1, 16, 16)).astype(np.float32)
    result = cli("export-onnx", run, "-o", tmp_path / "merged.onnx", "--merge")
    assert result.exit_code == 0, result.output
    sess = ort.InferenceSession(str(tmp_path / "merged.onnx"))
    import onnx

    names = [n.name for n in onnx.load(str(tmp_path / "merged.onnx")).graph.node]
    assert not [n for n in names if n.endswith((".dense", ".delta_add", ".last"))]
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], session.predict(x), atol=1e-4)


def test_train_layers_auto_chooses_within_its_limit_and_resumes_with_its_choice(
    pretrained_pt, small_npz, tmp_path
):
    model, run = tmp_path / "delta.facto", tmp_path / "run"
    result = cli("export", pretrained_pt, "-o", model, "--no-ort", "--train", "delta")
    assert result.exit_code == 0, result.output
    trained = cli(*train_args(model, small_npz, run, "--train-layers", "auto:4KB"))
    assert trained.exit_code == 0, trained.output
    assert "chosen by gradient importance per saved byte" in trained.output
    chosen = json.loads((run / "run.json").read_text())["config"]["train_layers"]
    assert "classifier" in chosen and len(chosen) < 4
    again = cli(*train_args(model, small_npz, run, "--train-layers", "auto:4KB",
                            "--epochs", 2, "--resume"))  # fmt: skip
    assert again.exit_code == 0 and "chosen by" not in again.output, again.output
    from facto_edge.evaluate import trained_session

    session, _ = trained_session(run, 16)
    assert set(session.parameters()) < set(json.loads((model / "manifest.json").read_text())
                                           ["trainable"])  # fmt: skip
    named = cli(*train_args(model, small_npz, tmp_path / "named", "--train-layers", chosen[-1]))
    assert named.exit_code == 0, named.output


@pytest.mark.parametrize(
    "value, words",
    [("auto:lots", ["auto:3MB"]), ("features.9", ["no layer 'features.9'"]),
     ("auto:1B", ["head alone saves"])],
)  # fmt: skip
def test_bad_train_layers_are_refused(digits_model, small_npz, tmp_path, value, words):
    out = tmp_path / "run"
    result = cli(*train_args(digits_model, small_npz, out, "--train-layers", value))
    assert_refused(result, *words)
    assert not out.exists()
