"""`facto-edge demo`: the whole flow on real handwriting, in a few minutes on two cores.

1. zoo: simple_cnn for 1 x 16 x 16 input;
2. pretrain it in PyTorch on a source task, the digits turned a quarter turn, and give
   it a fresh head (`pretrain.py`): the pretrained model a user would bring;
3. export: factorize at rank 0.25 (Tucker-2 / SVD); the `core` and `last` factors and the
   factorized layers' BatchNorms train (docs/accuracy.md: the configuration closest to
   full fine-tuning);
4. fit and train: in a fresh process that imports only the runtime (no torch, no
   scikit-learn), as a device would, fine-tune on the upright digits (scikit-learn's
   1797 8 x 8 images, upscaled) inside the budget, then evaluate on the held-out test
   part;
5. report: test accuracy, the training process's peak resident memory against the budget,
   and the bytes kept for backward against what dense PyTorch training of the original
   model keeps (counted with torch.autograd.graph.saved_tensors_hooks on one batch).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from facto_edge.child import run_in_child
from facto_edge.errors import FactoEdgeError
from facto_edge.runtime.budget import allowance, format_size, parse_size
from facto_edge.runtime.checkpoint import write_text_atomic
from facto_edge.runtime.preload import release_compiler_pages
from facto_edge.safe_io import aside_path, clean_leftovers
from facto_edge.train import Callback, RunInfo

INPUT_SHAPE = (1, 16, 16)
TRAIN_OPTIONS = {
    "batch_size": 32,
    "optimizer": "sgd",
    "lr": 0.05,  # the rate docs/accuracy.md's validation tuning chose for this setup
    "schedule": "cosine",
    "codec": "q2",
}
MARKER = "demo.json"
OUTPUTS = {MARKER, "pretrained.pt", "model.facto", "digits.npz", "run", "report.json"}
Say = Callable[[str], None]


@dataclass
class DemoReport:
    """What the demo measured."""

    out_dir: str
    budget: int
    epochs: int
    batch_size: int
    codec: str
    source_accuracy: float  # pretrained model on the source task's test images
    accuracy: float  # fine-tuned model on the digits' test split
    loss: float
    test_samples: int
    peak_rss: int  # of the training process
    arena_bytes: int
    saved_bytes: int  # what backward keeps per step, facto-edge
    dense_saved_bytes: int  # what dense PyTorch training keeps per step
    train_seconds: float


def _is_demo(path: Path) -> bool:
    """Whether `path` holds a demo's output and nothing else: its marker, and only the
    entries the demo writes."""
    try:
        marker = json.loads((path / MARKER).read_text())
        names = {p.name for p in path.iterdir()}
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and {"budget", "seed"} <= marker.keys() and names <= OUTPUTS


def _prepare_dir(out: Path) -> Path | None:
    """Make `out` ready for a new demo: new or empty, or a previous demo, which is moved
    aside (its path returned) until the new one is complete."""
    clean_leftovers(out, _is_demo)
    if out.exists() and not out.is_dir():
        raise FactoEdgeError(
            f"{out} is a file: expected a directory for the demo; choose another -o"
        )
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return None
    if not _is_demo(out):
        others = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS)
        found = f"files the demo did not write ({', '.join(others[:3])})" if others else "no demo"
        raise FactoEdgeError(
            f"{out} exists and holds {found}: the demo replaces only a previous demo; "
            "choose another -o directory"
        )
    aside = aside_path(out)
    os.rename(out, aside)
    out.mkdir()
    return aside


def _check_budget(budget: int) -> None:
    """BudgetError, before any work, for a budget below the runtime's own cost."""
    room = allowance(budget, TRAIN_OPTIONS["codec"])
    if room.peak(0) > room.budget:
        raise room.too_small(0, "before the model's")


def _digits(shape: tuple[int, int, int], mean: list[float], std: list[float], split: str):
    from facto_edge.data import open_dataset

    ds = open_dataset("digits:", shape, split=split, mean=mean, std=std, num_classes=10)
    return ds.get(np.arange(len(ds)))


def write_digits_npz(path: Path) -> Path:
    """The built-in digits (8 x 8, [0, 1]) with their train/test split, as an .npz that a
    process without scikit-learn can read."""
    x, y = _digits((1, 8, 8), [0.0], [1.0], "train")
    x_test, y_test = _digits((1, 8, 8), [0.0], [1.0], "test")
    np.savez(path, x=x[:, 0], y=y, x_test=x_test[:, 0], y_test=y_test)
    return path


def dense_saved_bytes(model, batch_size: int, input_shape: tuple[int, ...] = INPUT_SHAPE) -> int:
    """Bytes of the tensors PyTorch keeps for backward in one training step of `model`
    (train mode, every parameter trainable) on a batch of `input_shape` images, each
    storage counted once and the parameters not at all."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.zeros(batch_size, *input_shape)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    model.zero_grad()
    model.eval()
    return sum(kept.values())


def pretrained_model(out: Path, seed: int, say: Say):
    """(pretrained torch model with a fresh head, its TorchScript path, its accuracy on
    the source task's test images)."""
    import torch

    from facto_edge import zoo
    from facto_edge.pretrain import accuracy_torch, quarter_turn, reset_classifier, train_torch

    torch.manual_seed(seed)
    meta = zoo.metadata(INPUT_SHAPE, 10)
    norm = meta["normalization"]
    x, y = _digits(INPUT_SHAPE, norm["mean"], norm["std"], "train")
    x_test, y_test = _digits(INPUT_SHAPE, norm["mean"], norm["std"], "test")
    model = zoo.build("simple_cnn", seed=seed, in_channels=INPUT_SHAPE[0])
    say("pretraining simple_cnn in PyTorch on the source task (digits turned 90 degrees)")
    train_torch(model, quarter_turn(x), y, epochs=3, batch_size=32, lr=0.05, seed=seed)
    source = accuracy_torch(model, quarter_turn(x_test), y_test)
    reset_classifier(model)
    return model, zoo.save_torchscript(model, out / "pretrained.pt", meta), source


class _Forward(Callback):
    """In the training process: sends every callback event to the parent."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def on_start(self, info: RunInfo) -> None:
        self.queue.put(("on_start", replace(info, session=None)))

    def on_epoch_start(self, epoch: int, batches: int) -> None:
        self.queue.put(("on_epoch_start", epoch, batches))

    def on_step(self, step) -> None:
        self.queue.put(("on_step", step))

    def on_epoch_end(self, metrics: dict) -> None:
        self.queue.put(("on_epoch_end", metrics))

    def on_warning(self, message: str) -> None:
        self.queue.put(("on_warning", message))


def _train_process(queue, model_dir: str, data: str, run_dir: str, options: dict) -> None:
    """The training process: train, measure peak RSS, evaluate; results go to `queue`."""
    from facto_edge.evaluate import evaluate
    from facto_edge.train import train

    try:
        result = train(model_dir, data, run_dir, callbacks=[_Forward(queue)], plot=False, **options)
        ev = evaluate(run_dir, data, split="test")
        queue.put(("done", result.peak_rss, result.memory, ev.accuracy, ev.loss, ev.samples))
    except (FactoEdgeError, KeyboardInterrupt) as e:
        queue.put(("error", e))
    except Exception as e:  # anything else: re-raised in the parent, with its text
        queue.put(("error", RuntimeError(f"{type(e).__name__}: {e}")))


def train_in_fresh_process(
    model_dir: Path, data: Path, run_dir: Path, options: dict, callbacks: Sequence[Callback]
) -> tuple:
    """Run `train` and a test evaluation in a new interpreter (spawned: it imports only
    what training needs), relaying its callbacks; returns its "done" message."""
    release_compiler_pages()  # the export imported numba: LLVM pages held here stay in the child
    args = (str(model_dir), str(data), str(run_dir), options)
    return run_in_child(_train_process, args, "training process", callbacks)


def run_demo(
    out_dir: str | Path = "facto-demo",
    *,
    budget: str | int = "256MB",
    epochs: int = 10,
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    say: Say | None = None,
) -> DemoReport:
    """Run the demo into `out_dir` (see the module docstring); `say` gets one line per
    stage, `callbacks` the training events. A previous demo in `out_dir` (and nothing
    else) is replaced, once the new one is complete; a too-small budget stops the demo
    before it starts."""
    budget_bytes = parse_size(budget)
    _check_budget(budget_bytes)
    out = Path(out_dir)
    aside = _prepare_dir(out)
    try:
        report = _demo(out, budget_bytes, epochs, seed, callbacks, say or (lambda msg: None))
    except BaseException:
        if aside is not None:
            shutil.rmtree(out, ignore_errors=True)
            os.rename(aside, out)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return report


def _demo(out: Path, budget_bytes: int, epochs: int, seed: int, callbacks, say: Say):
    from facto_edge.exporters.export import export

    write_text_atomic(out / MARKER, json.dumps({"budget": budget_bytes, "seed": seed}))
    model, pretrained, source = pretrained_model(out, seed, say)
    say(
        "exporting: Tucker-2/SVD factorization at rank 0.25, `core` and `last` factors and "
        "BatchNorm trainable"
    )
    export(pretrained, out / "model.facto", rank=0.25, train="core,last", bn="train", ort=False)
    data = write_digits_npz(out / "digits.npz")
    _prepare_kernels(out / "model.facto", say)
    say(f"fine-tuning on the upright digits in a fresh process, budget {format_size(budget_bytes)}")
    options = dict(TRAIN_OPTIONS, epochs=epochs, seed=seed, budget=budget_bytes)
    done = train_in_fresh_process(out / "model.facto", data, out / "run", options, callbacks)
    _, peak, memory, accuracy, loss, samples = done
    report = DemoReport(
        out_dir=str(out), budget=budget_bytes, epochs=epochs, batch_size=memory["batch_size"],
        codec=memory["codec"], source_accuracy=source, accuracy=accuracy, loss=loss,
        test_samples=samples, peak_rss=peak, arena_bytes=memory["arena_bytes"],
        saved_bytes=memory["saved_bytes"],
        dense_saved_bytes=dense_saved_bytes(model, memory["batch_size"]),
        train_seconds=_train_seconds(out / "run"),
    )  # fmt: skip
    write_text_atomic(out / "report.json", json.dumps(asdict(report), indent=2))
    return report


def _prepare_kernels(model_dir: Path, say: Say) -> None:
    """Compile the kernels training needs in child processes, before the budgeted process
    starts (nothing to compile on a prepared machine); say so when it compiles."""
    from facto_edge.runtime.prepare import prepare_kernels

    def started(done: int, total: int, kernel: str) -> None:
        if not done:
            say(f"compiling {total} kernel(s) in child processes, once per machine")

    codec, optimizer = TRAIN_OPTIONS["codec"], TRAIN_OPTIONS["optimizer"]
    report = prepare_kernels(model_dir, (codec,), optimizer, on_progress=started)
    if report.compiled:
        say(
            f"compiled {report.compiled} kernel(s) in {report.seconds:.1f} s, peak "
            f"{format_size(report.peak_together)} (outside the training process)"
        )


def _train_seconds(run_dir: Path) -> float:
    from facto_edge.report import read_metrics_csv

    return sum(row["train_seconds"] for row in read_metrics_csv(run_dir / "metrics.csv"))


def format_report(r: DemoReport) -> str:
    """The demo's closing report, a few lines."""
    verdict = "within" if r.peak_rss <= r.budget else "OVER"
    share = r.saved_bytes / r.dense_saved_bytes if r.dense_saved_bytes else float("nan")
    return "\n".join(
        [
            f"accuracy      {100 * r.accuracy:.1f}% on {r.test_samples} held-out digits "
            f"(chance 10%; pretrained on the turned digits: {100 * r.source_accuracy:.1f}%)",
            f"memory        peak {format_size(r.peak_rss)} of the training process, {verdict} "
            f"the {format_size(r.budget)} budget (arena {format_size(r.arena_bytes)})",
            f"saved for backward  {format_size(r.saved_bytes)} per step ({r.codec}, batch "
            f"{r.batch_size}) vs {format_size(r.dense_saved_bytes)} for dense PyTorch "
            f"training ({share:.1%}; counted with torch saved_tensors_hooks)",
            f"training      {r.epochs} epochs in {r.train_seconds:.1f} s; outputs in {r.out_dir}",
        ]
    )
