"""The training loop: learning, exact resume after an interrupt, determinism, divergence,
Ctrl-C, and the budget check."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest

from facto_edge.checkpoint import load_checkpoint
from facto_edge.errors import BudgetError, NumericalError
from facto_edge.report import read_metrics_csv
from facto_edge.train import Callback, train

FAST = {"batch_size": 20, "optimizer": "adamw", "lr": 3e-3, "codec": "q4", "plot": False}


class Record(Callback):
    """Keeps every step's loss; raises KeyboardInterrupt after the steps in `stop_after`."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.losses: list[float] = []
        self.stop_after = stop_after
        self.session = None

    def on_start(self, info) -> None:
        self.session = info.session

    def on_step(self, step) -> None:
        self.losses.append(step.loss)
        if step.step == self.stop_after:
            raise KeyboardInterrupt


def run(model, data, out, callbacks=(), **options):
    return train(model, str(data), out, callbacks=callbacks, **(FAST | options))


def params(run_dir) -> dict[str, np.ndarray]:
    return load_checkpoint(run_dir / "checkpoint.npz").params


@pytest.mark.parametrize("stops", [(13,), (9, 14)], ids=["mid-epoch", "epoch-end-then-mid"])
def test_interrupt_and_resume_equals_uninterrupted(digits_model, small_npz, tmp_path, stops):
    opts = {"epochs": 2, "augment": True, "seed": 3}
    straight = Record()
    run(digits_model, small_npz, tmp_path / "straight", [straight], **opts)
    losses = []
    for i, stop in enumerate((*stops, None)):
        rec = Record(stop_after=stop)
        if stop is None:
            run(digits_model, small_npz, tmp_path / "resumed", [rec], resume=True, **opts)
        else:
            with pytest.raises(KeyboardInterrupt):
                run(digits_model, small_npz, tmp_path / "resumed", [rec], resume=i > 0, **opts)
            assert load_checkpoint(tmp_path / "resumed" / "checkpoint.npz").progress.step == stop
        losses += rec.losses
    assert len(straight.losses) == 18  # 180 images in batches of 20, two epochs
    assert losses == straight.losses  # bit for bit
    a, b = params(tmp_path / "straight"), params(tmp_path / "resumed")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    drop = ("train_seconds", "eval_seconds", "images_per_s")
    rows = [read_metrics_csv(tmp_path / d / "metrics.csv") for d in ("straight", "resumed")]
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows[0]] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows[1]
    ]


def test_same_seed_same_run_other_seed_other_run(digits_model, small_npz, tmp_path):
    recs = [Record() for _ in range(3)]
    for i, (rec, seed) in enumerate(zip(recs, (5, 5, 6), strict=True)):
        run(digits_model, small_npz, tmp_path / str(i), [rec], epochs=1, seed=seed, augment=True)
    assert recs[0].losses == recs[1].losses
    assert recs[0].losses != recs[2].losses


class Poison(Record):
    """Writes NaN into a trainable tensor after step `at`."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_step(self, step) -> None:
        super().on_step(step)
        if step.step == self.at:
            next(iter(self.session.parameters().values()))[...] = np.nan


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("codec", ["fp32", "q4"])
def test_nan_stops_training_and_keeps_last_good_checkpoint(
    digits_model, small_npz, tmp_path, codec
):
    out = tmp_path / "run"
    with pytest.raises(NumericalError, match=r"epoch 2, step 13.*checkpoint of epoch 1 is kept"):
        run(digits_model, small_npz, out, [Poison(at=12)], epochs=3, codec=codec)
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert (ckpt.progress.epoch, ckpt.progress.step) == (1, 9)
    assert all(np.isfinite(v).all() for v in ckpt.params.values())
    assert len(read_metrics_csv(out / "metrics.csv")) == 1


class SigInt(Record):
    def on_step(self, step) -> None:
        super().on_step(step)
        if step.step == 4:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_waits_for_the_step_then_checkpoints(digits_model, small_npz, tmp_path):
    rec, handler = SigInt(), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run(digits_model, small_npz, tmp_path / "run", [rec], epochs=1)
    assert len(rec.losses) == 4
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz").progress.step == 4
    assert signal.getsignal(signal.SIGINT) is handler


def test_budget_refused_before_anything_is_written(digits_model, small_npz, tmp_path, monkeypatch):
    monkeypatch.setattr("facto_edge.fit.measure_runtime_fixed_cost", lambda: 200 << 20)
    out = tmp_path / "run"
    with pytest.raises(BudgetError, match=r"give --budget .* or more"):
        run(digits_model, small_npz, out, epochs=1, budget="201MiB")
    assert not out.exists()


def test_auto_batch_is_the_largest_power_of_two_that_fits(
    digits_model, small_npz, tmp_path, monkeypatch
):
    from facto_edge.runtime import TrainingSession

    monkeypatch.setattr("facto_edge.fit.measure_runtime_fixed_cost", lambda: 200 << 20)
    arena = {
        b: TrainingSession(
            digits_model, batch_size=b, optimizer="adamw", codec="q4"
        ).memory_report()["arena_bytes"]
        for b in (16, 32)
    }
    budget = (200 << 20) + (arena[16] + arena[32]) // 2
    result = run(
        digits_model, small_npz, tmp_path / "run", epochs=1, batch_size="auto", budget=budget
    )
    assert result.fit.batch_size == 16 and result.fit.estimated_peak <= budget
    assert math.isclose(result.fit.arena_bytes, arena[16], rel_tol=0.05)
