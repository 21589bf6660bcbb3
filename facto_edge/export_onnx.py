"""`facto-edge export-onnx`: a run's trained weights as an inference ONNX model (the
writing itself is the runtime's: facto_edge/runtime/inference_onnx.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from facto_edge.rundir import resolve_trained
from facto_edge.runtime.checkpoint import load_checkpoint
from facto_edge.runtime.inference_onnx import (
    OnnxExport,
    export_proto,
    is_inference_onnx,
    set_initializers,
)
from facto_edge.runtime.manifest import Manifest
from facto_edge.safe_io import check_output_file

__all__ = ["OnnxExport", "compare_with_runtime", "export_onnx"]


def export_onnx(
    path: str | Path, out: str | Path, *, merge: bool = False, force: bool = False
) -> OnnxExport:
    """Write the trained model of `path` (a RUN_DIR, or a *.facto as exported) to `out`
    as an inference ONNX model; `merge` rebuilds factorized layers into dense ones. An
    existing `out` is replaced only with `force`, and only when export-onnx wrote it."""
    what = "an ONNX model export-onnx wrote"
    check_output_file(Path(out), force, is_inference_onnx, what, "export-onnx")
    model_dir, ckpt_path = resolve_trained(path)
    proto = onnx.load(str(Path(model_dir) / "model.onnx"))
    manifest = Manifest.load(model_dir)
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        set_initializers(proto.graph, ckpt.params | ckpt.buffers, ckpt_path)
    return export_proto(proto, manifest, out, merge=merge)


def compare_with_runtime(onnx_path: str | Path, path: str | Path, n: int = 8) -> float | None:
    """Max |logit difference| between onnxruntime running `onnx_path` and the facto-edge
    runtime holding the trained weights of `path`, on `n` random inputs (seed 0); None
    where onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    from facto_edge.evaluate import trained_session

    session, manifest = trained_session(path, n)
    x = np.random.default_rng(0).standard_normal((n, *manifest.input_shape)).astype(np.float32)
    ort = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits = ort.run(None, {ort.get_inputs()[0].name: x})[0]
    return float(np.abs(logits - session.predict(x)).max())
