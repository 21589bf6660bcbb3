"""The training loop: learning, exact resume after an interrupt, determinism, divergence,
Ctrl-C, and the budget check."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest

from facto_edge.errors import BudgetError, NumericalError
from facto_edge.report import read_metrics_csv
from facto_edge.runtime.checkpoint import load_checkpoint
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
    drop = ("train_seconds", "eval_seconds", "images_per_s", "peak_rss")  # measurements
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


def fixed_cost(monkeypatch, mib: int) -> None:
    """Pretend the runtime's measured fixed cost (and start-up peak) is `mib` MiB
    (wherever it is read)."""
    for module in ("facto_edge.runtime.budget",):
        monkeypatch.setattr(f"{module}.measure_runtime_fixed_cost", lambda codec: mib << 20)
        monkeypatch.setattr(f"{module}.measure_runtime_startup_peak", lambda codec: mib << 20)


def test_budget_refused_before_anything_is_written(digits_model, small_npz, tmp_path, monkeypatch):
    fixed_cost(monkeypatch, 200)
    out = tmp_path / "run"
    with pytest.raises(BudgetError, match=r"--budget"):
        run(digits_model, small_npz, out, epochs=1, budget="201MiB")
    assert not out.exists()


def tightest_budget(model) -> int:
    """The smallest whole MiB budget at which a batch-1 session fits (fixed cost 200 MiB)."""
    from facto_edge.runtime import TrainingSession

    for mib in range(200, 300):
        try:
            TrainingSession(model, batch_size=1, codec="q4", budget=mib << 20)
            return mib << 20
        except BudgetError:
            continue
    raise AssertionError("no budget fits")


def test_auto_batch_is_the_largest_power_of_two_that_fits(
    digits_model, small_npz, tmp_path, monkeypatch
):
    from facto_edge.runtime import TrainingSession

    fixed_cost(monkeypatch, 200)
    roomy = run(digits_model, small_npz, tmp_path / "a", epochs=1, batch_size="auto", budget="1GiB")
    assert roomy.fit.batch_size == 128  # the largest power of two in 180 images
    budget = tightest_budget(digits_model) + (1 << 20)
    tight = run(digits_model, small_npz, tmp_path / "b", epochs=1, batch_size="auto", budget=budget)
    b = tight.fit.batch_size
    assert 1 <= b < 128 and tight.fit.accumulate == 1
    twice = TrainingSession(digits_model, batch_size=2 * b, codec="q4", budget=budget)
    assert twice.memory_report()["accumulate"] > 1  # 2b would not fit whole
    assert tight.history[-1]["step"] == math.ceil(180 / b)


class Warnings(Callback):
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def on_warning(self, message: str) -> None:
        self.warnings.append(message)


def test_the_plot_is_skipped_where_it_would_break_the_budget(
    digits_model, small_npz, tmp_path, monkeypatch
):
    import facto_edge.train as train_mod

    fixed_cost(monkeypatch, 50)
    monkeypatch.setattr(train_mod, "PLOT_COST", 100 << 30)  # never fits
    seen = Warnings()
    result = run(digits_model, small_npz, tmp_path / "tight", [seen], epochs=1, budget="1GiB",
                 plot=True)  # fmt: skip
    assert not (result.run_dir / "metrics.png").exists()
    assert (result.run_dir / "metrics.csv").exists()
    assert any("metrics.png not drawn" in w and "metrics.csv" in w for w in seen.warnings)
    roomy = run(digits_model, small_npz, tmp_path / "roomy", epochs=1, plot=True)
    assert (roomy.run_dir / "metrics.png").exists()  # no budget: always drawn
