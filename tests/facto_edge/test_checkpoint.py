"""Checkpoints: exact round trip, atomic writes, corrupt and mismatched files, and the
run directory's ownership rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facto_edge.errors import CheckpointError, NumericalError
from facto_edge.rundir import prepare_run
from facto_edge.runtime import TrainingSession
from facto_edge.runtime.checkpoint import (
    Checkpoint,
    Progress,
    capture,
    load_checkpoint,
    restore,
    save_checkpoint,
    write_atomic,
)

CONFIG = {"lr": 0.01, "epochs": 2, "seed": 0}


def trained_session(model, steps: int = 2) -> TrainingSession:
    s = TrainingSession(model, batch_size=4, optimizer="adamw", lr=1e-3)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = rng.standard_normal((4, 1, 16, 16)).astype(np.float32)
        s.train_step(x, rng.integers(0, 10, 4))
    return s


def saved(model, path, steps: int = 2) -> tuple[TrainingSession, Checkpoint]:
    s = trained_session(model, steps)
    ckpt = capture(s, Progress(1, 3, steps), CONFIG, "abc", [{"epoch": 1, "loss": 2.0}], {})
    save_checkpoint(path, ckpt)
    return s, ckpt


def test_round_trip_restores_tensors_optimizer_and_progress(digits_model, tmp_path):
    path = tmp_path / "checkpoint.npz"
    s, _ = saved(digits_model, path)
    fresh = TrainingSession(digits_model, batch_size=4, optimizer="adamw", lr=1e-3)
    ckpt = load_checkpoint(path)
    restore(fresh, ckpt, path)
    for name, p in s.parameters().items():
        assert np.array_equal(fresh.parameters()[name], p)
    assert ckpt.progress == Progress(1, 3, 2)
    assert (ckpt.config, ckpt.fingerprint, ckpt.history) == (
        CONFIG,
        "abc",
        [{"epoch": 1, "loss": 2.0}],
    )
    x, y = np.ones((4, 1, 16, 16), np.float32), np.arange(4)
    assert fresh.train_step(x, y) == s.train_step(x, y)  # same state, same next step
    assert all(np.array_equal(fresh.parameters()[k], v) for k, v in s.parameters().items())


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "f.bin"
    write_atomic(path, lambda f: f.write(b"good"))

    def half_then_crash(f):
        f.write(b"torn")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_crash)
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip", "empty"])
def test_corrupt_checkpoint_is_refused(digits_model, tmp_path, damage):
    path = tmp_path / "checkpoint.npz"
    saved(digits_model, path)
    data = path.read_bytes()
    damaged = {
        "truncate": data[: len(data) // 2],
        "garbage": b"not a checkpoint at all",
        "flip": data[:200] + bytes([data[200] ^ 0xFF]) + data[201:],
        "empty": b"",
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def rewrite(path, **changes) -> None:
    """Rewrite the checkpoint file `path` with some arrays changed (bypassing the
    checks of save_checkpoint, as a corrupt or foreign file would)."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, change in changes.items():
        arrays[key.replace("__", "/")] = change(arrays[key.replace("__", "/")])
    np.savez(path, **arrays)


def test_non_finite_tensor_is_neither_saved_nor_loaded(digits_model, tmp_path):
    path = tmp_path / "checkpoint.npz"
    _, ckpt = saved(digits_model, path)
    before = path.read_bytes()
    name = next(iter(ckpt.params))
    ckpt.params[name][0] = np.inf
    with pytest.raises(NumericalError, match="not finite"):
        save_checkpoint(path, ckpt)
    assert path.read_bytes() == before
    rewrite(path, **{f"param__{name}": lambda a: a * np.inf})
    with pytest.raises(CheckpointError, match="not finite"):
        load_checkpoint(path)


def test_non_finite_optimizer_state_is_refused_on_resume(digits_model, tmp_path):
    path = tmp_path / "checkpoint.npz"
    _, ckpt = saved(digits_model, path)
    key = next(k for k, v in ckpt.optimizer.items() if isinstance(v, np.ndarray))
    rewrite(path, **{f"opt__{key}": lambda a: np.full_like(a, np.nan)})
    with pytest.raises(CheckpointError, match="optimizer state.*not finite"):
        load_checkpoint(path)


def _meta_with(**progress):
    def change(meta):
        d = json.loads(meta.tobytes())
        d["progress"] |= progress
        return np.frombuffer(json.dumps(d).encode(), dtype=np.uint8)

    return change


@pytest.mark.parametrize("progress", [{"epoch": -3}, {"step": 1.5}, {"batch": "2"}])
def test_checkpoint_meta_of_wrong_type_or_sign_is_refused(digits_model, tmp_path, progress):
    path = tmp_path / "checkpoint.npz"
    saved(digits_model, path)
    rewrite(path, meta=_meta_with(**progress))
    with pytest.raises(CheckpointError, match=r"progress \(epoch, batch, step\) must be"):
        load_checkpoint(path)


def test_nan_validation_loss_is_not_saved(digits_model, tmp_path):
    path = tmp_path / "checkpoint.npz"
    _, ckpt = saved(digits_model, path)
    ckpt.history.append({"epoch": 2, "loss": 1.0, "val_loss": float("nan")})
    with pytest.raises(NumericalError, match="val_loss is nan"):
        save_checkpoint(path, ckpt)


def test_other_models_checkpoint_changes_nothing(digits_model, tmp_path):
    path = tmp_path / "checkpoint.npz"
    _, ckpt = saved(digits_model, path)
    name = next(iter(ckpt.params))
    ckpt.params[name] = np.zeros((3, 3), np.float32)
    save_checkpoint(path, ckpt)
    fresh = TrainingSession(digits_model, batch_size=4, optimizer="adamw", lr=1e-3)
    before = {k: v.copy() for k, v in fresh.parameters().items()}
    with pytest.raises(CheckpointError, match=f"{name}.*shape"):
        restore(fresh, load_checkpoint(path), path)
    assert all(np.array_equal(before[k], v) for k, v in fresh.parameters().items())


def test_other_optimizers_state_is_refused(digits_model, tmp_path):
    path = tmp_path / "checkpoint.npz"
    saved(digits_model, path)
    sgd = TrainingSession(digits_model, batch_size=4, optimizer="sgd", momentum=0.9)
    with pytest.raises(CheckpointError, match="optimizer state"):
        restore(sgd, load_checkpoint(path), path)


def test_run_directory_belongs_to_its_run(digits_model, pretrained_pt, tmp_path):
    out = tmp_path / "run"
    prepare_run(out, digits_model, CONFIG, resume=False)
    assert json.loads((out / "run.json").read_text())["config"] == CONFIG
    assert (out / "model.facto" / "model.onnx").is_file()
    prepare_run(out, digits_model, CONFIG, resume=False)  # no checkpoint yet: nothing to lose
    with pytest.raises(CheckpointError, match=r"nothing to resume"):
        prepare_run(out, digits_model, CONFIG, resume=True)
    saved(digits_model, out / "checkpoint.npz")
    with pytest.raises(CheckpointError, match="pass --resume"):
        prepare_run(out, digits_model, CONFIG, resume=False)
    with pytest.raises(CheckpointError, match=r"another run \(options differ: lr: 0.01 -> 0.1\)"):
        prepare_run(out, digits_model, CONFIG | {"lr": 0.1}, resume=False)
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="holds no facto-edge run"):
        prepare_run(tmp_path / "stray", digits_model, CONFIG, resume=False)
    assert (tmp_path / "stray" / "notes.txt").read_text() == "mine"
