"""The training loop of `facto-edge train`, as a library function that reports through
callbacks and never prints.

    from facto_edge.train import train, Callback
    result = train("model.facto", "digits:", "run/", epochs=5, batch_size=32, lr=0.01)
    result.history[-1]["accuracy"]

Order of work, so that a refused run loses nothing: options are checked, the data opened
and checked, the session built and fitted into the budget, and only then is RUN_DIR
touched (`rundir.prepare_run`). Each epoch ends with a validation pass, a checkpoint and
metrics.csv; Ctrl-C saves a checkpoint at the step boundary, then re-raises.

Exact resume: the batches of epoch e depend only on (seed, e) (`data.iterate_batches`),
codec rounding on (seed, step), and the checkpoint restores the trainable tensors, the
optimizer state and the step. A run interrupted and resumed therefore produces the same
losses, bit for bit, as one that ran straight through.
"""

from __future__ import annotations

import inspect
import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facto_edge.budget import parse_size
from facto_edge.checkpoint import Checkpoint, Progress, capture, restore, save_checkpoint
from facto_edge.data import iterate_batches, open_for_model, split_validation
from facto_edge.data.dataset import Dataset
from facto_edge.data.digits import NAMES as DIGITS_NAMES
from facto_edge.errors import DataError, FactoEdgeError, NumericalError
from facto_edge.evaluate import evaluate_session
from facto_edge.fit import Fit, check_fits, fit_batch_size, peak_rss_bytes
from facto_edge.manifest import Manifest
from facto_edge.report import plot_metrics, write_metrics_csv
from facto_edge.rundir import RunDir, model_fingerprint, prepare_run

DEFAULT_BATCH = 32
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "step")


@dataclass
class RunInfo:
    """What a run is about to do, given to `Callback.on_start`."""

    session: Any
    run_dir: Path
    config: dict
    epochs: int
    start: Progress
    batches_per_epoch: int
    train_samples: int
    val_samples: int
    memory: dict
    fit: Fit | None
    resumed: bool


@dataclass(frozen=True)
class StepInfo:
    """One finished optimizer step: `epoch` and `batch` are 0-based, `step` counts steps
    taken in all (this one included); `images` and `seconds` are so far in this epoch."""

    epoch: int
    batch: int
    batches: int
    step: int
    loss: float
    lr: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class TrainResult:
    """A finished (or already complete) run: its history is also in RUN_DIR/metrics.csv."""

    run_dir: Path
    history: list[dict]
    progress: Progress
    epochs: int
    memory: dict
    fit: Fit | None
    peak_rss: int
    skipped: list[str] = field(default_factory=list)

    @property
    def final(self) -> dict | None:
        return self.history[-1] if self.history else None


class Callback:
    """Hooks of the training loop; subclass and override what you need. Raising
    KeyboardInterrupt from a hook stops the run as Ctrl-C does (checkpoint, re-raise)."""

    def on_start(self, info: RunInfo) -> None:
        """Before the first step (also when resuming)."""

    def on_epoch_start(self, epoch: int, batches: int) -> None:
        """Before the first batch of 0-based `epoch` (of `batches` in all)."""

    def on_step(self, step: StepInfo) -> None:
        """After each optimizer step."""

    def on_epoch_end(self, metrics: dict) -> None:
        """After the epoch's validation and checkpoint; `metrics` is its metrics.csv row."""

    def on_warning(self, message: str) -> None:
        """Something the user should know that does not stop the run."""


class _Callbacks(Callback):
    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_start(self, info: RunInfo) -> None:
        for cb in self.callbacks:
            cb.on_start(info)

    def on_epoch_start(self, epoch: int, batches: int) -> None:
        for cb in self.callbacks:
            cb.on_epoch_start(epoch, batches)

    def on_step(self, step: StepInfo) -> None:
        for cb in self.callbacks:
            cb.on_step(step)

    def on_epoch_end(self, metrics: dict) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(metrics)

    def on_warning(self, message: str) -> None:
        for cb in self.callbacks:
            cb.on_warning(message)


class _Interrupts:
    """Holds a first Ctrl-C until `check()`, at a step boundary; a second one interrupts
    at once (the checkpoint is then skipped if a step was cut in half)."""

    def __init__(self) -> None:
        self.pending = False

    def handle(self, signum, frame) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def check(self) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


@contextmanager
def _deferred_sigint() -> Iterator[_Interrupts]:
    interrupts = _Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous = signal.signal(signal.SIGINT, interrupts.handle)
    try:
        yield interrupts
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_options(epochs: int, batch_size: int | str, optimizer: str, lr: float, schedule: str, val_split: float, seed: int) -> None:  # fmt: skip
    if not isinstance(epochs, int) or epochs < 1:
        raise FactoEdgeError(f"epochs must be a positive integer, found {epochs!r}")
    if batch_size != "auto" and not (isinstance(batch_size, int) and batch_size >= 1):
        raise FactoEdgeError(f"batch size must be a positive integer or 'auto', found {batch_size!r}")  # fmt: skip
    if optimizer not in OPTIMIZERS:
        raise FactoEdgeError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, found {optimizer!r}")  # fmt: skip
    if not (math.isfinite(lr) and lr > 0):
        raise FactoEdgeError(f"learning rate must be a finite number > 0, found {lr!r}")
    if schedule not in SCHEDULES:
        raise FactoEdgeError(f"schedule must be one of {', '.join(SCHEDULES)}, found {schedule!r}")  # fmt: skip
    if not 0 <= val_split < 1:
        raise FactoEdgeError(f"validation split must lie in [0, 1), found {val_split!r}")
    if not isinstance(seed, int) or seed < 0:
        raise FactoEdgeError(f"seed must be a non-negative integer, found {seed!r}")


def _open_data(data: str, manifest: Manifest, val_split: float, seed: int, on_corrupt: str) -> tuple[Dataset, Dataset | None]:  # fmt: skip
    ds = open_for_model(data, manifest, split="train", on_corrupt=on_corrupt)
    if val_split == 0:
        return ds, None
    return split_validation(ds, val_split, seed)


def _data_key(data: str) -> str:
    """The data path as recorded in the run's config: absolute, built-ins as named."""
    return data if data.lower() in DIGITS_NAMES else str(Path(data).resolve())


def _session_factory(model_dir, optimizer: str, lr: float, momentum: float, weight_decay: float, codec: str, label_smoothing: float, seed: int, budget: int | None):  # fmt: skip
    """`make(batch_size)` building sessions with these options (and the budget, where the
    session takes one)."""
    from facto_edge.runtime import TrainingSession

    extra = {}
    if budget is not None and "budget" in inspect.signature(TrainingSession).parameters:
        extra["budget"] = budget

    def make(batch_size: int):
        return TrainingSession(
            model_dir, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
            weight_decay=weight_decay, codec=codec, label_smoothing=label_smoothing,
            seed=seed, **extra,
        )  # fmt: skip

    return make


def _resolve_batch(batch_size: int | str, make, budget: int | None, n_train: int, saved: dict | None) -> tuple[int, Fit | None]:  # fmt: skip
    if batch_size != "auto":
        return batch_size, None
    if saved is not None:
        return int(saved["batch_size"]), None
    if budget is None:
        return min(DEFAULT_BATCH, n_train), None
    fit = fit_batch_size(make, budget, max_batch=n_train)
    return fit.batch_size, fit


def _saved_config(out_dir, resume: bool) -> dict | None:
    run = RunDir(Path(out_dir))
    return run.read_run().get("config") if resume and run.is_run() else None


def _schedule(name: str, lr: float, epochs: int, batches: int, warmup_steps: int):
    from facto_edge.runtime.schedules import make_schedule

    total = epochs * batches
    if name == "step":
        step_size = batches * max(1, epochs // 3)
        return make_schedule(name, lr, total, warmup_steps=warmup_steps, step_size=step_size)
    return make_schedule(name, lr, total, warmup_steps=min(warmup_steps, total))
