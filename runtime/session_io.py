"""What TrainingSession does beyond training, kept out of session.py: evaluation,
checkpoints (checkpoint.py: atomic .npz) and inference ONNX export (inference_onnx.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .checkpoint import (
    CHECKPOINT_FILE,
    Progress,
    capture,
    host_copy,
    load_checkpoint,
    restore,
    save_checkpoint,
)


def evaluate(session, x: np.ndarray, y: np.ndarray, batch_size: int | None) -> dict:
    """Mean cross-entropy and accuracy of `session` (eval mode) on (x, y)."""
    chunk = batch_size or session.batch_size
    loss, correct = 0.0, 0
    for start in range(0, x.shape[0], chunk):
        logits = session.predict(x[start : start + chunk]).astype(np.float64)
        labels = y[start : start + chunk]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss -= float(log_p[np.arange(labels.shape[0]), labels].sum())
        correct += int((logits.argmax(axis=1) == labels).sum())
    n = max(x.shape[0], 1)
    return {"loss": loss / n, "accuracy": correct / n, "samples": int(x.shape[0])}


def fingerprint(session) -> str:
    """Names and shapes of the trained tensors: what a checkpoint must match."""
    tensors = session.parameters() | session.buffers()
    text = ";".join(f"{k}:{list(v.shape)}" for k, v in sorted(tensors.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save(session, directory: str | Path) -> Path:
    """Write `directory`/checkpoint.npz atomically (tensors, optimizer state, step)."""
    path = Path(directory) / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress(step=session.step)
    ckpt = capture(session, progress, {"lr": session.lr}, fingerprint(session), [], {})
    return save_checkpoint(path, ckpt)


def load(session, directory: str | Path) -> None:
    """Restore `directory`/checkpoint.npz into `session`; CheckpointError if it does not
    fit, and then nothing changes."""
    path = Path(directory) / CHECKPOINT_FILE
    restore(session, load_checkpoint(path), path)


def export(session, source, out: str | Path, merge: bool) -> Path:
    """Write the session's current weights as an inference ONNX model at `out`."""
    import onnx

    from .inference_onnx import export_proto, set_initializers
    from .manifest import Manifest

    if isinstance(source, tuple):
        proto = onnx.ModelProto()
        proto.CopyFrom(source[0])
        manifest = Manifest.from_dict(source[1])
    else:
        proto = onnx.load(str(Path(source) / "model.onnx"))
        manifest = Manifest.load(source)
    tensors = {k: host_copy(v) for k, v in (session.parameters() | session.buffers()).items()}
    set_initializers(proto.graph, tensors, Path(out))
    return export_proto(proto, manifest, out, merge=merge).path
