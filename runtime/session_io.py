"""What TrainingSession does beyond training, kept out of session.py: evaluation,
checkpoints (checkpoint.py: atomic .npz) and inference ONNX export (inference_onnx.py)."""

from __future__ import annotations

import hashlib
import json
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
from .errors import CheckpointError


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


MODEL_FILES = ("model.onnx", "manifest.json")


def model_fingerprint(source) -> str:
    """sha256 over the exported graph and manifest of `source` (a `*.facto` directory:
    its files' bytes; an (onnx.ModelProto, manifest dict) pair: their serialized forms):
    which model, weights included, a checkpoint belongs to."""
    digest = hashlib.sha256()
    if isinstance(source, tuple):
        digest.update(source[0].SerializeToString())
        digest.update(json.dumps(source[1], sort_keys=True).encode())
        return digest.hexdigest()
    for name in MODEL_FILES:
        path = Path(source) / name
        if not path.is_file():
            raise CheckpointError(
                f"{source} is not an exported model: {name} is missing; "
                "create one with `facto-edge export model.pt -o model.facto`"
            )
        digest.update(path.read_bytes())
    return digest.hexdigest()


def save(session, directory: str | Path, source) -> Path:
    """Write `directory`/checkpoint.npz atomically (tensors, optimizer state, step), with
    the fingerprint of the model `source`."""
    path = Path(directory) / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress(step=session.step)
    ckpt = capture(session, progress, {"lr": session.lr}, model_fingerprint(source), [], {})
    return save_checkpoint(path, ckpt)


def load(session, directory: str | Path, source) -> None:
    """Restore `directory`/checkpoint.npz into `session` of the model `source`;
    CheckpointError if it belongs to another model or does not fit (nothing changes)."""
    path = Path(directory) / CHECKPOINT_FILE
    ckpt = load_checkpoint(path)
    if ckpt.fingerprint != model_fingerprint(source):
        raise CheckpointError(
            f"checkpoint {path} was saved from another model (fingerprint "
            f"{ckpt.fingerprint[:12]}, this session's model has "
            f"{model_fingerprint(source)[:12]}): load it into a session of the model it "
            "was trained from"
        )
    restore(session, ckpt, path)


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
