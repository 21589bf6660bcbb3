"""Evaluation: accuracy, mean cross-entropy loss and the confusion matrix of a model.

    result = evaluate("run/", "digits:")          # a RUN_DIR (its latest checkpoint)
    result = evaluate("model.facto", "data/")     # or an exported model as it is
    print(result.accuracy, result.loss, result.confusion)

Predictions come from the runtime's `TrainingSession.predict` (eval mode), so they are
what the trained model gives on a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facto_edge.data import iterate_batches, open_for_model
from facto_edge.data.dataset import Dataset
from facto_edge.rundir import resolve_trained
from facto_edge.runtime.checkpoint import load_checkpoint, load_weights
from facto_edge.runtime.manifest import Manifest


@dataclass
class EvalResult:
    """What `evaluate` measured. `confusion[i, j]` counts samples of class i predicted j."""

    accuracy: float
    loss: float
    confusion: np.ndarray
    classes: list[str]
    samples: int
    skipped: list[str] = field(default_factory=list)
    plot: Path | None = None

    def per_class_accuracy(self) -> np.ndarray:
        """Recall of each class (NaN for a class with no samples)."""
        totals = self.confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(self.confusion) / totals


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample softmax cross-entropy of float logits [n, k] and labels [n], in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return log_norm - z[np.arange(len(y)), y]


def evaluate_session(session, ds: Dataset, batch_size: int) -> EvalResult:
    """Accuracy, loss and confusion matrix of `session` over every sample of `ds`."""
    k = ds.num_classes
    confusion = np.zeros((k, k), np.int64)
    loss_sum, n = 0.0, 0
    for x, y in iterate_batches(ds, batch_size, shuffle=False, seed=0, epoch=0):
        logits = session.predict(x)
        np.add.at(confusion, (y, logits.argmax(axis=1)), 1)
        loss_sum += float(cross_entropy(logits, y).sum())
        n += len(y)
    correct = int(np.trace(confusion))
    return EvalResult(
        accuracy=correct / max(n, 1),
        loss=loss_sum / max(n, 1),
        confusion=confusion,
        classes=_class_names(ds, k),
        samples=n,
        skipped=list(ds.skipped),
    )


def _class_names(ds: Dataset, k: int) -> list[str]:
    names = list(ds.classes)[:k]
    return names + [str(i) for i in range(len(names), k)]


def trained_session(path: str | Path, batch_size: int):
    """A session of the model at `path` (RUN_DIR or *.facto) holding its trained weights,
    and the model's manifest."""
    from facto_edge.runtime import TrainingSession

    model_dir, ckpt_path = resolve_trained(path)
    manifest = Manifest.load(model_dir)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    layers = (ckpt.config.get("train_layers") or None) if ckpt is not None else None
    session = TrainingSession(model_dir, batch_size=batch_size, momentum=0.0, train_layers=layers)
    if ckpt is not None:
        load_weights(session, ckpt, ckpt_path)
    return session, manifest


def evaluate(
    path: str | Path,
    data: str,
    *,
    split: str = "test",
    batch_size: int = 64,
    plot: str | Path | None = None,
    on_corrupt: str = "skip",
) -> EvalResult:
    """Evaluate the model at `path` (a RUN_DIR: its latest checkpoint; or a *.facto) on the
    `split` of `data` (sources without a test part give all their samples).

    `plot` writes the confusion matrix as a PNG there. Raises DataError for bad data and
    CheckpointError for a run or checkpoint that cannot be read.
    """
    session, manifest = trained_session(path, batch_size)
    ds = open_for_model(data, manifest, split=split, on_corrupt=on_corrupt)
    result = evaluate_session(session, ds, batch_size)
    if plot is not None:
        from facto_edge.report import plot_confusion

        result.plot = plot_confusion(plot, result.confusion, result.classes)
    return result


def format_eval(result: EvalResult) -> str:
    """Accuracy, loss and the confusion matrix as text."""
    k = len(result.classes)
    width = max(5, *(len(c) for c in result.classes), len(str(result.confusion.max())) + 1)
    lines = [
        f"accuracy {100 * result.accuracy:.2f}% ({int(np.trace(result.confusion))}/"
        f"{result.samples}), loss {result.loss:.4f}",
        "confusion matrix (rows: true, columns: predicted):",
        " " * width + "".join(f"{c:>{width}}" for c in result.classes),
    ]
    for i in range(k):
        cells = "".join(f"{n:>{width}}" for n in result.confusion[i])
        lines.append(f"{result.classes[i]:>{width}}{cells}")
    if result.skipped:
        skipped = result.skipped
        lines.append(f"skipped {len(skipped)} unreadable image(s), first {skipped[0]}")
    return "\n".join(lines)
