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

import math
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from facto_edge.data import iterate_batches, open_for_model, split_validation
from facto_edge.data.dataset import Dataset
from facto_edge.data.digits import NAMES as DIGITS_NAMES
from facto_edge.errors import FactoEdgeError, NumericalError
from facto_edge.evaluate import evaluate_session
from facto_edge.layer_select import AutoLayers, choose_layers
from facto_edge.report import plot_metrics, write_metrics_csv
from facto_edge.rundir import RunDir, model_fingerprint, prepare_run
from facto_edge.runtime.budget import format_size, parse_size
from facto_edge.runtime.checkpoint import Checkpoint, Progress, capture, restore, save_checkpoint
from facto_edge.runtime.codecs import ROUNDINGS
from facto_edge.runtime.fitting import Fit, largest_batch
from facto_edge.runtime.manifest import Manifest
from facto_edge.runtime.param_groups import check_lr_groups
from facto_edge.runtime.rss import current_rss_bytes, peak_rss_bytes
from facto_edge.safe_io import run_lock

DEFAULT_BATCH = 32
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "step")
# What drawing metrics.png adds to the process (importing matplotlib, one figure):
# measured 46 MiB with matplotlib 3.10 on Linux x86-64.
PLOT_COST = 48 << 20


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
    peak_rss: int  # bytes, the process's peak until the last epoch ended
    skipped: list[str] = field(default_factory=list)

    @property
    def final(self) -> dict | None:
        return self.history[-1] if self.history else None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a callback's KeyboardInterrupt) stopped a run; `outcome` says what was
    kept, e.g. "checkpoint saved in run/; continue with --resume"."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


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

    def on_selection(self, selection) -> None:
        """`train_layers` auto: the layers chosen (runtime/importance.Selection), before
        the session is built."""


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

    def on_selection(self, selection) -> None:
        for cb in self.callbacks:
            getattr(cb, "on_selection", lambda s: None)(selection)


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


@dataclass(frozen=True)
class TrainConfig:
    """The options that define a run; a resume must repeat them. `epochs` may change on
    resume (a cosine or step schedule then stretches to the new total from that step on).
    `batch_size` is "auto" only until the run resolves it."""

    data: str
    epochs: int
    batch_size: int | str
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    warmup_steps: int
    codec: str
    val_split: float
    augment: bool
    seed: int
    label_smoothing: float
    lr_groups: dict = field(default_factory=dict)  # group -> multiplier of lr
    rounding: str = "nearest"  # of the q8/q4/q2 codecs: nearest or stochastic
    train_layers: list = field(default_factory=list)  # layer names; empty: every layer

    def check(self) -> None:
        """Raise FactoEdgeError naming the first option that makes no run."""
        _require(
            _is_int(self.epochs) and self.epochs >= 1, "epochs", "a positive integer", self.epochs
        )
        ok = self.batch_size == "auto" or (_is_int(self.batch_size) and self.batch_size >= 1)
        _require(ok, "batch size", "a positive integer or 'auto'", self.batch_size)
        _require(self.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}", self.optimizer)
        ok = isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0
        _require(ok, "learning rate", "a finite number > 0", self.lr)
        _require(self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}", self.schedule)
        ok = _is_int(self.warmup_steps) and self.warmup_steps >= 0
        _require(ok, "warmup steps", "an integer >= 0", self.warmup_steps)
        _require(
            0 <= self.val_split < 1, "validation split", "a fraction in [0, 1)", self.val_split
        )
        _require(_is_int(self.seed) and self.seed >= 0, "seed", "an integer >= 0", self.seed)
        _require(_in(self.momentum, 0, 1), "momentum", "a number in [0, 1)", self.momentum)
        ok = _in(self.weight_decay, 0, math.inf)
        _require(ok, "weight decay", "a finite number >= 0", self.weight_decay)
        ok = _in(self.label_smoothing, 0, 1)
        _require(ok, "label smoothing", "a number in [0, 1)", self.label_smoothing)
        check_lr_groups(self.lr_groups)
        ok = self.rounding in ROUNDINGS and (self.rounding == "nearest" or self.codec[0] == "q")
        _require(ok, "codec rounding", "nearest, or stochastic with a q8/q4/q2 codec",
                 f"{self.rounding} with codec {self.codec}")  # fmt: skip

    def to_dict(self) -> dict:
        """The config as run.json records it: the options added since runs first
        recorded it only where they differ from their default, so older runs resume."""
        d = asdict(self)
        for key, default in LATER_OPTIONS.items():
            if d[key] == default:
                del d[key]
        return d


LATER_OPTIONS = {"lr_groups": {}, "rounding": "nearest", "train_layers": []}


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _in(x: object, low: float, high: float) -> bool:
    """Whether `x` is a finite number in [low, high)."""
    number = isinstance(x, int | float) and not isinstance(x, bool)
    return number and math.isfinite(x) and low <= x < high


def _require(ok: bool, what: str, expected: str, found: object) -> None:
    if not ok:
        raise FactoEdgeError(f"{what} must be {expected}, found {found!r}")


def _open_data(data: str, manifest: Manifest, cfg: TrainConfig, on_corrupt: str):
    """(training set, validation set or None) of `data`, checked against the model."""
    ds = open_for_model(data, manifest, split="train", on_corrupt=on_corrupt)
    if cfg.val_split == 0:
        return ds, None
    return split_validation(ds, cfg.val_split, cfg.seed)


def _data_key(data: str) -> str:
    """The data path as recorded in the run's config: absolute, built-ins as named."""
    return data if data.lower() in DIGITS_NAMES else str(Path(data).resolve())


def _session_factory(
    model_dir: str | Path, cfg: TrainConfig, budget: int | None, device: str = "cpu"
):
    """`make(batch_size, accumulate=None)` building sessions with the run's options and
    budget: each plans its arena (and micro-batches) to fit, or raises BudgetError."""
    from facto_edge.runtime import TrainingSession

    def make(batch_size: int, accumulate: int | None = None):
        return TrainingSession(
            model_dir, batch_size=batch_size, optimizer=cfg.optimizer, lr=cfg.lr,
            momentum=cfg.momentum, weight_decay=cfg.weight_decay, codec=cfg.codec,
            label_smoothing=cfg.label_smoothing, seed=cfg.seed, device=device,
            budget=budget, accumulate=accumulate, lr_groups=cfg.lr_groups,
            rounding=cfg.rounding, train_layers=cfg.train_layers or None,
        )  # fmt: skip

    return make


def _make_session(cfg: TrainConfig, make, budget: int | None, n_train: int, saved: dict | None):
    """The run's session, its batch no larger than the data. Batch "auto" is the saved
    run's size on resume, the largest power of two that fits the budget in one
    micro-batch (runtime/fitting.py), or DEFAULT_BATCH without a budget."""
    if cfg.batch_size != "auto":
        return make(min(cfg.batch_size, n_train))  # no batch holds more than the data
    if saved is not None and "batch_size" in saved:
        return make(int(saved["batch_size"]))
    if budget is None:
        return make(min(DEFAULT_BATCH, n_train))
    return largest_batch(lambda b: make(b, accumulate=1), n_train) or make(1)  # make(1) says why


def _auto_layers(model_dir, train_ds, auto: AutoLayers, cfg: TrainConfig, saved: dict | None,
                 in_child: bool, cbs: _Callbacks) -> list[str]:  # fmt: skip
    """The layers `auto` chooses; a resumed run's own choice."""
    if saved is not None and saved.get("train_layers"):
        return list(saved["train_layers"])
    batch = cfg.batch_size if cfg.batch_size != "auto" else DEFAULT_BATCH
    selection = choose_layers(
        model_dir, train_ds, auto, min(batch, len(train_ds)), cfg.codec, cfg.seed,
        in_child=in_child,
    )  # fmt: skip
    cbs.on_selection(selection)
    return selection.layers


def _saved_config(out_dir: str | Path, resume: bool) -> dict | None:
    run = RunDir(Path(out_dir))
    return run.read_run().get("config") if resume and run.is_run() else None


def _schedule(cfg: TrainConfig, batches: int):
    """The learning rate per step over the whole run ("step": x0.1 every third)."""
    from facto_edge.runtime.schedules import make_schedule

    total = cfg.epochs * batches
    step_size = batches * max(1, cfg.epochs // 3) if cfg.schedule == "step" else None
    warmup = min(cfg.warmup_steps, total)
    return make_schedule(cfg.schedule, cfg.lr, total, warmup_steps=warmup, step_size=step_size)


@dataclass
class _Loop:
    """The state of a run between steps, and the steps, epochs and checkpoints."""

    session: Any
    run: RunDir
    cfg: TrainConfig
    fingerprint: str
    train_ds: Dataset
    val_ds: Dataset | None
    callbacks: _Callbacks
    progress: Progress = field(default_factory=Progress)
    history: list[dict] = field(default_factory=list)
    partial: dict = field(default_factory=dict)
    consistent: bool = True
    interrupts: _Interrupts = field(default_factory=_Interrupts)
    saved: Progress | None = None  # where the checkpoint on disk stands
    budget: int | None = None

    def __post_init__(self) -> None:
        self.batch_size = min(int(self.cfg.batch_size), len(self.train_ds))
        self.batches = math.ceil(len(self.train_ds) / self.batch_size)
        self.schedule = _schedule(self.cfg, self.batches)

    def resume_from(self, ckpt: Checkpoint) -> None:
        restore(self.session, ckpt, self.run.checkpoint)
        self.progress, self.history, self.partial = ckpt.progress, ckpt.history, ckpt.partial
        self.saved = Progress(**vars(ckpt.progress))

    def run_epochs(self) -> None:
        for epoch in range(self.progress.epoch, self.cfg.epochs):
            self.callbacks.on_epoch_start(epoch, self.batches)
            batches = iterate_batches(
                self.train_ds, self.batch_size, shuffle=True, seed=self.cfg.seed,
                epoch=epoch, augment=self.cfg.augment, reuse=True,
            )  # fmt: skip
            for b, (x, y) in enumerate(batches):
                if b >= self.progress.batch:
                    self.interrupts.check()
                    self._step(epoch, b, x, y)
            self._end_epoch(epoch)

    def _train_step(self, x, y) -> float:
        try:
            return self.session.train_step(x, y)
        except NumericalError as e:
            raise self._diverged(str(e)) from e

    def _diverged(self, what: str, at: str | None = None) -> NumericalError:
        p, kept = self.progress, "no checkpoint was written"
        if self.saved is not None:
            s = self.saved
            within = f", step {s.step}" if s.batch else ""
            kept = f"the checkpoint of epoch {s.epoch}{within} is kept (the last finite one)"
        return NumericalError(
            f"training stopped at {at or f'epoch {p.epoch + 1}, step {p.step + 1}'}: {what}; "
            f"{kept} in {self.run.path}; lower --lr or check the data"
        )

    def _step(self, epoch: int, b: int, x, y) -> None:
        lr = self.schedule(self.progress.step)
        self.session.lr = lr
        started = time.perf_counter()
        self.consistent = False
        loss = self._train_step(x, y)
        if not math.isfinite(loss):
            raise self._diverged(f"the loss is {loss}")
        p, part = self.progress, self.partial
        p.batch, p.step = b + 1, p.step + 1
        part["loss_sum"] = part.get("loss_sum", 0.0) + loss
        part["images"] = part.get("images", 0) + len(y)
        part["seconds"] = part.get("seconds", 0.0) + time.perf_counter() - started
        self.consistent = True
        info = StepInfo(epoch, b, self.batches, p.step, loss, lr, part["images"], part["seconds"])
        self.callbacks.on_step(info)

    def _end_epoch(self, epoch: int) -> None:
        started = time.perf_counter()
        val = evaluate_session(self.session, self.val_ds, self.batch_size) if self.val_ds else None
        if val is not None and not math.isfinite(val.loss):
            raise self._diverged(
                f"the validation loss is {val.loss}", f"the end of epoch {epoch + 1}"
            )
        part = self.partial
        seconds = part.get("seconds", 0.0)
        row = {
            "epoch": epoch + 1, "step": self.progress.step, "lr": self.session.lr,
            "loss": part.get("loss_sum", math.nan) / max(self.progress.batch, 1),
            "accuracy": val.accuracy if val else None, "val_loss": val.loss if val else None,
            "train_seconds": seconds, "eval_seconds": time.perf_counter() - started,
            "images_per_s": part.get("images", 0) / seconds if seconds > 0 else None,
        }  # fmt: skip
        row.update(peak_row(peak_rss_bytes(), self.budget))
        self.history.append(row)
        self.progress = Progress(epoch + 1, 0, self.progress.step)
        self.partial = {}
        self.save()
        self.callbacks.on_epoch_end(row)

    def save(self) -> None:
        """Checkpoint now, then the metrics that agree with it; NumericalError (the
        checkpoint on disk kept) when a weight or the optimizer state is not finite."""
        ckpt = capture(
            self.session, self.progress, self.cfg.to_dict(), self.fingerprint, self.history,
            self.partial,
        )  # fmt: skip
        try:
            save_checkpoint(self.run.checkpoint, ckpt)
        except NumericalError as e:
            raise self._diverged(str(e).split(": ", 1)[-1], "a checkpoint") from e
        self.saved = Progress(**vars(self.progress))
        write_metrics_csv(self.run.metrics, self.history)

    def interrupted(self) -> str:
        """Checkpoint after Ctrl-C when no step was cut short; what was kept, in words."""
        if self.consistent:
            self.save()
            return f"checkpoint saved in {self.run.path}; continue with --resume"
        if self.saved is not None:
            return (
                f"a step was cut short; the checkpoint of step {self.saved.step} in "
                f"{self.run.path} is kept; continue with --resume"
            )
        return f"a step was cut short before any checkpoint; nothing is saved in {self.run.path}"


def train(
    model_dir: str | Path,
    data: str,
    out_dir: str | Path,
    *,
    epochs: int = 5,
    batch_size: int | str = DEFAULT_BATCH,
    optimizer: str = "sgd",
    lr: float = 0.01,
    schedule: str = "constant",
    codec: str = "q2",
    val_split: float = 0.1,
    augment: bool = False,
    seed: int = 0,
    budget: str | int | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    label_smoothing: float = 0.0,
    on_corrupt: str = "skip",
    plot: bool = True,
    device: str = "cpu",
    lr_groups: dict[str, float] | None = None,
    rounding: str = "nearest",
    train_layers: Sequence[str] | AutoLayers | None = None,
) -> TrainResult:
    """Train the exported model `model_dir` on `data` into the run directory `out_dir`.

    `epochs` is the total: with `resume` the run in `out_dir` continues from its
    checkpoint up to it. `batch_size` "auto" takes the largest power of two that fits
    `budget` (the process's peak memory, e.g. "512MB"); with a budget, a run that cannot
    fit stops before training with BudgetError. `schedule` is "constant", "cosine" or
    "step" (x0.1 every third of the run) over all the run's steps, after `warmup_steps`.
    `val_split` holds out that fraction of the data (stratified, from `seed`) for the
    per-epoch accuracy; 0 turns validation off. `on_corrupt` "skip" leaves unreadable
    images out (reported through `Callback.on_warning`), "fail" stops. `lr_groups`
    multiplies the learning rate of parameter groups ({"bn": 10, "head": 0.5}; groups
    factors, bias, bn, head: runtime/param_groups.py). `rounding` "stochastic" makes the
    q8/q4/q2 codec round unbiased (runtime/codecs.py), "nearest" is the default.
    `train_layers` names the layers that train (the others stay frozen), or
    `AutoLayers(saved_limit)` chooses them by gradient importance per saved byte
    (facto_edge/layer_select.py, reported through `Callback.on_selection`); None trains
    every layer.

    Raises DataError, CheckpointError, BudgetError or NumericalError (a NaN/Inf loss,
    weight or validation loss: the last finite checkpoint stays) with a message saying
    what to do; FactoEdgeError naming the other process when one trains in `out_dir`
    (facto_edge/safe_io.run_lock); TrainingInterrupted (a KeyboardInterrupt) saying what
    was saved.
    """
    cbs = _Callbacks(callbacks)
    if isinstance(train_layers, str):
        raise FactoEdgeError(
            f"train_layers must be a list of layer names or AutoLayers, found {train_layers!r}"
        )
    cfg = TrainConfig(
        _data_key(data), epochs, batch_size, optimizer, lr, momentum, weight_decay,
        schedule, warmup_steps, codec, val_split, augment, seed, label_smoothing,
        dict(lr_groups or {}), rounding,
        [] if isinstance(train_layers, AutoLayers) else list(train_layers or []),
    )  # fmt: skip
    cfg.check()
    budget_bytes = parse_size(budget) if budget is not None else None
    manifest = Manifest.load(model_dir)
    train_ds, val_ds = _open_data(data, manifest, cfg, on_corrupt)
    if train_ds.skipped:
        cbs.on_warning(
            f"skipped {len(train_ds.skipped)} unreadable image(s) in {data} "
            f"(first: {train_ds.skipped[0]})"
        )
    saved = _saved_config(out_dir, resume)
    if isinstance(train_layers, AutoLayers):
        cfg = replace(cfg, train_layers=_auto_layers(
            model_dir, train_ds, train_layers, cfg, saved, budget_bytes is not None, cbs
        ))  # fmt: skip
    make = _session_factory(model_dir, cfg, budget_bytes, device)
    if cfg.batch_size != "auto" and cfg.batch_size > len(train_ds):
        cbs.on_warning(
            f"batch size {cfg.batch_size} is larger than the {len(train_ds)} training samples "
            f"of {data}: each epoch is one batch of {len(train_ds)}"
        )
    session = _make_session(cfg, make, budget_bytes, len(train_ds), saved)
    cfg, fit = replace(cfg, batch_size=session.batch_size), session.fit
    with run_lock(Path(out_dir), shlex.join(sys.argv)[:200]):
        run, ckpt = prepare_run(out_dir, model_dir, cfg.to_dict(), resume)
        loop = _Loop(session, run, cfg, model_fingerprint(model_dir), train_ds, val_ds, cbs)
        loop.budget = budget_bytes
        if ckpt is not None:
            loop.resume_from(ckpt)
            if loop.progress.epoch >= epochs:
                cbs.on_warning(f"{run.path} has already trained {loop.progress.epoch} epoch(s)")
        memory = session.memory_report()
        cbs.on_start(
            RunInfo(
                session, run.path, cfg.to_dict(), epochs, Progress(**vars(loop.progress)),
                loop.batches, len(train_ds), len(val_ds) if val_ds else 0, memory, fit,
                ckpt is not None,
            )
        )  # fmt: skip
        peak = _run(loop, plot, budget_bytes, cbs)
    if budget_bytes is not None and peak > budget_bytes:
        compiled = memory.get("kernels_compiled_in_process") or 0
        cause = (
            f"{compiled} kernel(s) compiled inside this process (run `facto-edge compile "
            f"{model_dir}` first)"
            if compiled
            else "what the arena does not plan counts too (the data loader and the "
            "libraries it imports, e.g. scikit-learn for 'digits:')"
        )
        cbs.on_warning(
            f"the process peaked at {format_size(peak)}, OVER the {format_size(budget_bytes)} "
            f"budget: {cause}; {run.metrics.name} says so (over_budget)"
        )
        if loop.history:  # the last row gets the run's final peak (the plot included)
            loop.history[-1].update(peak_row(peak, budget_bytes))
            write_metrics_csv(run.metrics, loop.history)
    return TrainResult(
        run.path, loop.history, loop.progress, epochs, memory, fit, peak,
        list(train_ds.skipped),
    )  # fmt: skip


def peak_row(peak: int, budget: int | None) -> dict:
    """The metrics.csv cells of the process's peak against the budget."""
    return {"peak_rss": peak, "over_budget": None if budget is None else int(peak > budget)}


def _run(loop: _Loop, plot: bool, budget: int | None, cbs: _Callbacks) -> int:
    """Run the epochs and return the process's peak RSS, the plot included; on Ctrl-C
    checkpoint (if no step was cut short) and raise TrainingInterrupted. The session is
    closed (its arena freed) before the plot is drawn, and the plot is skipped, with a
    warning, where drawing it (matplotlib) would take the process over `budget`; a run
    that fails draws none."""
    try:
        try:
            with _deferred_sigint() as interrupts:
                loop.interrupts = interrupts
                loop.run_epochs()
        except KeyboardInterrupt:
            raise TrainingInterrupted(loop.interrupted()) from None
    except TrainingInterrupted:
        _finish(loop, plot, budget, cbs)
        raise
    except BaseException:
        loop.session.close()
        raise
    _finish(loop, plot, budget, cbs)
    return peak_rss_bytes()


def _finish(loop: _Loop, plot: bool, budget: int | None, cbs: _Callbacks) -> None:
    loop.session.close()
    if plot and loop.history:
        _plot(loop, budget, cbs)


def _plot(loop: _Loop, budget: int | None, cbs: _Callbacks) -> None:
    if budget is not None and current_rss_bytes() + PLOT_COST > budget:
        cbs.on_warning(
            f"{loop.run.plot.name} not drawn: matplotlib needs about "
            f"{format_size(PLOT_COST)}, more than the budget leaves; the figures are in "
            f"{loop.run.metrics}"
        )
        return
    plot_metrics(loop.run.plot, loop.history)
