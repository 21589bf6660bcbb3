"""One test per defect of issue 13 (docs/reliability.md): nothing of the user's lost,
nothing run that should not be, no tracebacks."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_faults import assert_cli_failed, cli, snapshot
from train_helpers import write_npz

from facto_edge.errors import CheckpointError, FactoEdgeError, NumericalError
from facto_edge.runtime import TrainingSession

torch = pytest.importorskip("torch")


def resume_args(model, data, run, epochs: int) -> tuple:
    """`train --resume` with the options of the `trained_run` fixture."""
    return ("train", model, "--data", data, "-o", run, "--epochs", epochs, "--batch-size", 20,
            "--lr", 0.05, "--schedule", "constant", "--resume")  # fmt: skip


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# Data loss ---------------------------------------------------------------------------


def test_export_force_into_a_folder_without_a_model_deletes_nothing(
    pretrained_pt, tmp_path, monkeypatch
):
    (tmp_path / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path)):
        result = cli("export", pretrained_pt, "-o", out, "--force", "--no-ort")
        assert_cli_failed(result, "--force replaces only a previous export")
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_export_force_replaces_a_previous_export(pretrained_pt, digits_model, tmp_path):
    out = tmp_path / "m.facto"
    shutil.copytree(digits_model, out)
    (out / "manifest.json").write_text((out / "manifest.json").read_text() + " ")
    result = cli("export", pretrained_pt, "-o", out, "--force", "--no-ort")
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").read_bytes() == (digits_model / "manifest.json").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["m.facto"]


def test_replace_without_exchange_and_recovery_of_a_crash_between_the_renames(
    digits_model, tmp_path, monkeypatch
):
    from facto_edge import safe_io
    from facto_edge.exporters.export import is_export

    out = tmp_path / "m.facto"
    shutil.copytree(digits_model, out)
    monkeypatch.setattr(safe_io, "_exchange", lambda a, b: False)
    build = safe_io.new_build_dir(out)
    (build / "manifest.json").write_text("{}")
    safe_io.replace_dir(build, out)
    assert [p.name for p in tmp_path.iterdir()] == ["m.facto"]
    assert (out / "manifest.json").read_text() == "{}"
    # A writer killed after moving the old model aside, before renaming the new one in:
    aside = tmp_path / f".m.facto.old-{_dead_pid()}-0a1b2c3d"
    out.rename(aside)
    shutil.rmtree(aside)
    shutil.copytree(digits_model, aside)
    assert safe_io.clean_leftovers(out, is_export) == [aside]
    assert is_export(out) and not aside.exists()


def test_killed_exports_leftovers_are_removed_by_the_next(pretrained_pt, tmp_path):
    pid = _dead_pid()
    left = [tmp_path / f".m.facto.new-{pid}-00ff00ff", tmp_path / f".m.facto.old-{pid}-00ff00ff"]
    for path in left:
        path.mkdir()
        (path / "model.onnx").write_bytes(b"half")
    live = tmp_path / f".m.facto.new-{os.getpid()}-0000abcd"  # a writer still running
    live.mkdir()
    result = cli("export", pretrained_pt, "-o", tmp_path / "m.facto", "--no-ort")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "m.facto"]


def test_exported_model_is_readable_by_others(pretrained_pt, tmp_path):
    umask = os.umask(0o022)
    try:
        assert cli("export", pretrained_pt, "-o", tmp_path / "m.facto", "--no-ort").exit_code == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "m.facto").stat().st_mode) == 0o755


def test_demo_replaces_only_a_previous_demo(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text('{"budget": 1, "seed": 0}')
    (out / "photos").mkdir()
    (out / "photos" / "a.jpg").write_bytes(b"jpeg")
    before = snapshot(out)
    assert_cli_failed(cli("demo", "-o", out), "files the demo did not write (photos)")
    assert snapshot(out) == before


def test_demo_refuses_a_too_small_budget_before_any_work(tmp_path):
    out = tmp_path / "demo"
    assert_cli_failed(cli("demo", "-o", out, "--budget", "8MB"), "too small", "--budget")
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered:RuntimeWarning")
def test_nan_weights_after_an_epoch_keep_the_last_finite_checkpoint(
    digits_model, small_npz, tmp_path
):
    from facto_edge.runtime.checkpoint import load_checkpoint
    from facto_edge.train import Callback, train

    class Blowup(Callback):
        """Weights of 1e30 on the last step of epoch 2: its losses are finite, its
        validation loss is not."""

        def on_start(self, info):
            self.session = info.session

        def on_step(self, step):
            if step.epoch == 1 and step.batch == step.batches - 1:
                for p in self.session.parameters().values():
                    p[...] = 1e30

    out = tmp_path / "run"
    with pytest.raises(NumericalError, match="checkpoint of epoch 1 is kept"):
        train(digits_model, str(small_npz), out, epochs=3, batch_size=20, lr=0.05,
              callbacks=[Blowup()], plot=False)  # fmt: skip
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert ckpt.progress.epoch == 1 and len(ckpt.history) == 1
    assert all(np.isfinite(a).all() for a in ckpt.params.values())
    assert len((out / "metrics.csv").read_text().splitlines()) == 2


def test_nan_optimizer_state_is_refused_on_resume(digits_model, small_npz, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with np.load(run / "checkpoint.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    key = next(k for k in arrays if k.startswith("opt/"))
    arrays[key] = np.full_like(arrays[key], np.nan)
    np.savez(run / "checkpoint.npz", **arrays)
    result = cli(*resume_args(digits_model, small_npz, run, 2))
    assert_cli_failed(result, "optimizer state", "not finite")


def test_a_second_train_in_the_same_run_directory_names_the_first(
    digits_model, small_npz, tmp_path
):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from facto_edge.safe_io import run_lock\n"
         f"with run_lock(Path({str(run)!r}), 'facto-edge train (first)'):\n"
         "    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        for resume in ((), ("--resume",)):
            result = cli("train", digits_model, "--data", small_npz, "-o", run, "--epochs", 1,
                         "--batch-size", 20, *resume)  # fmt: skip
            assert_cli_failed(result, f"in use by process {holder.pid}", "(first)")
        assert [p.name for p in run.iterdir()] == [".lock"]
    finally:
        holder.communicate("", timeout=60)
    result = cli("train", digits_model, "--data", small_npz, "-o", run, "--epochs", 1,
                 "--batch-size", 20)  # fmt: skip
    assert result.exit_code == 0, result.output


def test_zoo_and_export_onnx_need_force_and_replace_only_their_own(trained_run, tmp_path):
    pt, onnx_out = tmp_path / "m.pt", tmp_path / "t.onnx"
    assert cli("zoo", "simple_cnn", "-o", pt).exit_code == 0
    assert cli("export-onnx", trained_run, "-o", onnx_out).exit_code == 0
    again = [("zoo", "simple_cnn", "-o", pt), ("export-onnx", trained_run, "-o", onnx_out)]
    for args in again:
        before = Path(args[-1]).read_bytes()
        assert_cli_failed(cli(*args), "already exists", "--force")
        assert Path(args[-1]).read_bytes() == before
        assert cli(*args, "--force").exit_code == 0
    shutil.copyfile(pt, onnx_out)  # each --force replaces its own command's output only
    assert_cli_failed(cli("export-onnx", trained_run, "-o", onnx_out, "--force"), "not an ONNX")
    (tmp_path / "notes").write_text("mine")
    assert_cli_failed(cli("zoo", "simple_cnn", "-o", tmp_path / "notes", "--force"), "not a zoo")
    assert (tmp_path / "notes").read_text() == "mine"


# Security ----------------------------------------------------------------------------


class Payload:
    """Unpickling this runs os.system, which writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("form", ["plain pickle", "torch.save", "state_dict with a payload"])
def test_pickled_payload_is_refused_before_it_runs(tmp_path, form):
    import pickle

    marker, path = tmp_path / "pwned", tmp_path / "m.pt"
    if form == "plain pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
    elif form == "torch.save":
        torch.save(Payload(marker), path)
    else:
        torch.save({"weight": torch.zeros(2), "extra": Payload(marker)}, path)
    result = cli("export", path, "-o", tmp_path / "o.facto", "--no-ort")
    assert_cli_failed(result, "refused", "torch.jit.save", "--trust-pickle")
    assert not marker.exists()


def test_state_dict_is_told_apart_without_running_code(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"state_dict": torch.nn.Linear(4, 2).state_dict(), "epoch": 3}, path)
    assert_cli_failed(cli("export", path, "-o", tmp_path / "o.facto"), "state_dict", "jit.save")


# Tracebacks for user mistakes ----------------------------------------------------------


MANIFEST_MISTAKES = [
    ({"num_classes": "ten"}, "num_classes must be a positive integer"),
    ({"input_shape": "1x16x16"}, "input_shape must be a list of 2 or 3 positive integers"),
    ({"input_shape": [1, -16, 16]}, "input_shape must be a list of 2 or 3 positive integers"),
    ({"normalization": "none"}, "normalization must be a mapping with mean and std"),
    ({"normalization": {"mean": [0.5], "std": [0.0]}}, "std must be numbers > 0"),
    ({"format_version": 99}, "format version 99 is not supported"),
]


@pytest.mark.parametrize(("change", "message"), MANIFEST_MISTAKES)
def test_manifest_of_wrong_types_fails_in_one_line(
    change, message, digits_model, small_npz, tmp_path
):
    model = tmp_path / "m.facto"
    shutil.copytree(digits_model, model)
    manifest = json.loads((model / "manifest.json").read_text()) | change
    (model / "manifest.json").write_text(json.dumps(manifest))
    commands = [
        ("plan", model, "--budget", "1GB"),
        ("train", model, "--data", small_npz, "-o", tmp_path / "run", "--epochs", 1),
        ("eval", model, "--data", small_npz),
        ("export-onnx", model, "-o", tmp_path / "m.onnx"),
    ]
    for args in commands:
        assert_cli_failed(cli(*args), message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--num-classes", "-3"), ("--num-classes", "0"),
        ("--input-shape", "0x16x16"), ("--input-shape", "-1x16x16"),
    ],
)  # fmt: skip
def test_zoo_refuses_sizes_below_one(args, tmp_path):
    out = tmp_path / "m.pt"
    assert_cli_failed(cli("zoo", "simple_cnn", "-o", out, *args), "positive")
    assert not out.exists()


def test_export_refuses_negative_min_channels(pretrained_pt, tmp_path):
    result = cli("export", pretrained_pt, "-o", tmp_path / "o", "--min-channels", -5)
    assert_cli_failed(result, "--min-channels must be an integer >= 0")


def test_a_batch_larger_than_the_data_needs_no_more_memory_than_the_data(
    digits_model, small_npz, tmp_path
):
    result = cli("train", digits_model, "--data", small_npz, "-o", tmp_path / "run",
                 "--batch-size", 100000000, "--budget", "256MB", "--epochs", 1)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "larger than the 180 training samples" in result.stderr
    assert (tmp_path / "run" / "checkpoint.npz").is_file()


@pytest.mark.parametrize("text", ["{not json", '{"config": 3}', "[]"])
def test_bench_from_bad_results_fails_in_one_line(text, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(text)
    result = cli("bench", "--from-results", path, "-o", tmp_path / "out")
    assert_cli_failed(result, "is not a results.json written by `facto-edge bench`")


@pytest.mark.parametrize("momentum", ["2", "-0.5", "nan"])
def test_train_refuses_momentum_outside_0_1(momentum, digits_model, small_npz, tmp_path):
    result = cli("train", digits_model, "--data", small_npz, "-o", tmp_path / "run",
                 "--momentum", momentum)  # fmt: skip
    assert_cli_failed(result, "momentum must be a number in [0, 1)")


def test_session_refuses_nan_lr_negative_step_and_use_after_close(digits_model, tmp_path):
    s = TrainingSession(digits_model, batch_size=4, momentum=0.5)
    for value in (float("nan"), float("inf"), -0.1):
        with pytest.raises(FactoEdgeError, match="lr must be a finite number >= 0"):
            s.lr = value
    with pytest.raises(FactoEdgeError, match="step must be an integer >= 0"):
        s.step = -1
    s.close()
    for act in (lambda: s.save_checkpoint(tmp_path), lambda: s.export_onnx(tmp_path / "m.onnx")):
        with pytest.raises(FactoEdgeError, match="was closed"):
            act()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FactoEdgeError, match="momentum"):
        TrainingSession(digits_model, batch_size=4, momentum=2.0)


def test_checkpoint_of_another_model_of_the_same_architecture_is_refused(
    pretrained_pt, digits_model, tmp_path
):
    from facto_edge import export, zoo

    other = export(zoo.build("simple_cnn", seed=7, in_channels=1), tmp_path / "other.facto",
                   input_shape=(1, 16, 16), ort=False)  # fmt: skip
    assert other.input_shape == [1, 16, 16]
    a = TrainingSession(digits_model, batch_size=4)
    a.save_checkpoint(tmp_path / "ckpt")
    b = TrainingSession(tmp_path / "other.facto", batch_size=4)
    before = {k: v.copy() for k, v in b.parameters().items()}
    with pytest.raises(CheckpointError, match="saved from another model"):
        b.load_checkpoint(tmp_path / "ckpt")
    assert all(np.array_equal(before[k], v) for k, v in b.parameters().items())
    TrainingSession(digits_model, batch_size=4).load_checkpoint(tmp_path / "ckpt")


def test_ctrl_c_before_the_run_starts_claims_no_checkpoint(
    digits_model, small_npz, tmp_path, monkeypatch
):
    import facto_edge.train as train_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_session_factory", interrupted)
    result = cli("train", digits_model, "--data", small_npz, "-o", tmp_path / "run")
    assert result.exit_code == 130
    assert "checkpoint" not in result.output and "interrupted" in result.stderr
    assert not (tmp_path / "run").exists()


def test_float_images_in_0_255_are_refused(digits_model, tmp_path):
    data = write_npz(tmp_path / "d.npz", 50)
    with np.load(data) as npz:
        x, y = npz["x"] * 255.0, npz["y"]
    np.savez(data, x=x, y=y)
    result = cli("train", digits_model, "--data", data, "-o", tmp_path / "run")
    assert_cli_failed(result, "float pixels in [0, 255]", "divide by 255")


def test_run_lock_leaves_no_folder_behind_when_the_run_is_refused(digits_model, tmp_path):
    result = cli("train", digits_model, "--data", "digits:", "-o", tmp_path / "run", "--resume")
    assert_cli_failed(result, "nothing to resume")
    assert not (tmp_path / "run").exists()


def test_killed_trains_temporaries_are_removed_on_the_next_start(
    digits_model, small_npz, trained_run, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / ".model.facto.abc123").mkdir()
    (run / ".checkpoint.npz.tmp").write_bytes(b"torn")
    (run / f".metrics.csv.tmp-{_dead_pid()}").write_bytes(b"torn")
    result = cli(*resume_args(digits_model, small_npz, run, 1))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock"]
