"""Every command against a read-only output, a disk that fills (`ulimit -f`) and an
output path that is an existing file: one line on stderr, a non-zero exit, no traceback,
and nothing of the user's lost (docs/reliability.md)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_faults import assert_cli_failed, assert_one_line_failure, cli, read_only, run_limited
from cli_faults import snapshot as folder_snapshot

pytest.importorskip("onnxruntime")

RESULTS = Path(__file__).parents[2] / "docs" / "bench" / "results.json"
COMMANDS = ["zoo", "export", "plan", "train", "eval", "export-onnx", "demo", "bench"]
FULL_DISK = 4096  # bytes a file may hold: every command's main output is larger


@pytest.fixture(scope="module")
def fx(pretrained_pt, digits_model, small_npz, trained_run, tmp_path_factory):
    """Previous outputs of each command, to be protected, and the inputs."""
    from facto_edge.export_onnx import export_onnx
    from facto_edge.report import plot_confusion
    from facto_edge.runtime.budget import measure_runtime_fixed_cost

    measure_runtime_fixed_cost()  # cached for the processes below
    root = tmp_path_factory.mktemp("previous")
    onnx_path = export_onnx(trained_run, root / "trained.onnx").path
    png = plot_confusion(root / "plot.png", np.eye(3, dtype=np.int64), ["a", "b", "c"])
    bench = root / "bench"
    result = cli("bench", "--from-results", RESULTS, "-o", bench, "--report", root / "bench.md")
    assert result.exit_code == 0, result.output
    demo = root / "demo"
    demo.mkdir()
    (demo / "demo.json").write_text('{"budget": 268435456, "seed": 0}')
    (demo / "report.json").write_text('{"accuracy": 0.9}')
    return SimpleNamespace(
        pt=pretrained_pt, model=digits_model, npz=small_npz, run=trained_run,
        onnx=onnx_path, png=png, bench=bench, demo=demo,
    )  # fmt: skip


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst


def _train(fx, out, *extra):
    return ["train", fx.model, "--data", fx.npz, "-o", out, "--epochs", 1, "--batch-size", 20,
            "--lr", 0.05, "--schedule", "constant", *extra]  # fmt: skip


def _writing_into(command: str, fx, out: Path) -> list:
    """The command line of `command` writing its output at `out`."""
    return {
        "zoo": ["zoo", "simple_cnn", "-o", out, "--input-shape", "1x16x16"],
        "export": ["export", fx.pt, "-o", out, "--no-ort"],
        "plan": ["plan", fx.model, "--budget", "1GB", "--batch-size", 8, "--plot", out],
        "train": _train(fx, out),
        "eval": ["eval", fx.run, "--data", fx.npz, "--plot", out],
        "export-onnx": ["export-onnx", fx.run, "-o", out],
        "demo": ["demo", "-o", out],
        "bench": ["bench", "--from-results", RESULTS, "-o", out, "--report", f"{out}.md"],
    }[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_output(command, fx, tmp_path):
    with read_only(tmp_path / "ro") as ro:
        result = cli(*_writing_into(command, fx, ro / "out"))
        assert_cli_failed(result, str(ro))
        assert list(ro.iterdir()) == []


def _previous_output(command: str, fx, tmp_path: Path) -> tuple[list, Path]:
    """(command line replacing a previous output of `command`, that output)."""
    source, name = {
        "zoo": (fx.pt, "m.pt"), "export": (fx.model, "m.facto"), "plan": (fx.png, "t.png"),
        "train": (fx.run, "run"), "eval": (fx.png, "c.png"), "export-onnx": (fx.onnx, "t.onnx"),
        "demo": (fx.demo, "demo"), "bench": (fx.bench, "bench"),
    }[command]  # fmt: skip
    out = _copy(source, tmp_path / name)
    args = _writing_into(command, fx, out)
    if command in ("zoo", "export", "export-onnx"):
        args.append("--force")
    if command == "train":
        args = _train(fx, out, "--resume")
        args[args.index("--epochs") + 1] = 2
    return args, out


@pytest.mark.parametrize("command", COMMANDS)
def test_disk_full_keeps_the_previous_output(command, fx, tmp_path):
    args, out = _previous_output(command, fx, tmp_path)
    before = folder_snapshot(out) if out.is_dir() else out.read_bytes()
    limit = 16 if command == "demo" else FULL_DISK  # the demo's first file is its marker
    proc = run_limited(args, limit, cwd=tmp_path)
    assert_one_line_failure(proc.returncode, proc.stderr, "File too large")
    assert (folder_snapshot(out) if out.is_dir() else out.read_bytes()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]


FORCED = [(c, False) for c in COMMANDS] + [(c, True) for c in ("zoo", "export", "export-onnx")]


@pytest.mark.parametrize(("command", "force"), FORCED)
def test_output_path_is_an_existing_file(command, force, fx, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"precious")
    args = _writing_into(command, fx, notes) + (["--force"] if force else [])
    assert_cli_failed(cli(*args), str(notes))
    assert notes.read_bytes() == b"precious"
