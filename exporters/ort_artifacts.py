"""ONNX Runtime training artifacts for an export: the correctness and speed reference.

Writes ort/{training_model,eval_model,optimizer_model,checkpoint} (AdamW) and
ort/optimizer_sgd.onnx (plain SGD) for the same trainable set as the manifest. ORT 1.19
refuses IR versions above 10, so every written model is stamped ir_version = 10.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import onnx
from onnx import helper

from facto_edge.errors import ExportError
from facto_edge.runtime.manifest import Manifest

_NO_GRADIENT = re.compile(r"gradient builder has not been registered: (\w+) for node (\S+)")


def ort_training_available() -> bool:
    try:
        from onnxruntime.training import artifacts  # noqa: F401
    except ImportError:
        return False
    return True


def training_graph(proto: onnx.ModelProto, trainable: set[str]) -> onnx.ModelProto:
    """A copy of `proto` with BatchNormalization in training mode where BN is trainable,
    and every LayerNormalization with its Mean and InvStdDev outputs (ORT's gradient of
    LayerNormalization reads them, and fails on a node without them)."""
    model = copy.deepcopy(proto)
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            node.output.extend([f"{node.name}.mean", f"{node.name}.inv_std_dev"])
        if node.op_type == "BatchNormalization" and node.input[1] in trainable:
            kept = [a for a in node.attribute if a.name != "training_mode"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("training_mode", 1)])
            if len(node.output) == 1:
                node.output.extend(
                    [f"{node.name}.running_mean_out", f"{node.name}.running_var_out"]
                )
    return model


@contextlib.contextmanager
def _quiet_native_stderr():
    """ORT's graph builder logs every transformer pass at info level to fd 2; keep that
    out of the user's terminal, and replay it only if artifact generation fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _trim_eval_batchnorm(model: onnx.ModelProto) -> None:
    """The eval model keeps training-mode BN's three outputs while it sets inference mode,
    which ORT rejects; drop the running-statistics outputs nobody reads."""
    for node in model.graph.node:
        modes = [a.i for a in node.attribute if a.name == "training_mode"]
        if node.op_type == "BatchNormalization" and modes == [0] and len(node.output) > 1:
            del node.output[1:]


def _finish(directory: Path) -> None:
    for path in directory.glob("*.onnx"):
        model = onnx.load(str(path))
        if path.name == "eval_model.onnx":
            _trim_eval_batchnorm(model)
        model.ir_version = min(model.ir_version, 10)
        onnx.save(model, str(path))


def write_ort_artifacts(proto: onnx.ModelProto, manifest: Manifest, out: Path) -> bool:
    """Write the artifacts into `out`; False (nothing written) without onnxruntime-training,
    or, with a warning naming the op, where ONNX Runtime training has no gradient for an
    op of the graph (ORT 1.19 has none for HardSigmoid, for one): the runtime still trains
    the export. Any other failure of ORT is an ExportError."""
    if not ort_training_available():
        return False
    trainable = set(manifest.trainable)
    model = training_graph(proto, trainable)
    out.mkdir(parents=True)
    with _quiet_native_stderr():  # the warning goes out after it, to the real stderr
        missing = _try_generate(model, trainable, out)
    if missing is not None:
        op, node = missing
        warnings.warn(
            f"ONNX Runtime training has no gradient for {op} (node {node}): the export "
            "has no ort/ artifacts; the facto-edge runtime trains it all the same",
            UserWarning,
            stacklevel=2,
        )
        return False
    _finish(out)
    return True


def _try_generate(model: onnx.ModelProto, trainable: set[str], out: Path):
    """None when written; (op, node) and nothing in `out` when ORT has no gradient for
    that op; ExportError on any other failure of ORT."""
    try:
        _generate(model, trainable, out)
    except RuntimeError as e:
        shutil.rmtree(out)
        missing = _NO_GRADIENT.search(str(e))
        if missing is None:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ExportError(
                f"ONNX Runtime training could not build the artifacts ({first}); "
                "export with --no-ort to skip them"
            ) from None
        return missing.groups()
    return None


def _generate(model: onnx.ModelProto, trainable: set[str], out: Path) -> None:
    from onnxruntime.training import artifacts

    frozen = [t.name for t in model.graph.initializer if t.name not in trainable]
    common = dict(
        requires_grad=sorted(trainable), frozen_params=frozen,
        loss=artifacts.LossType.CrossEntropyLoss,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        artifacts.generate_artifacts(model, optimizer=artifacts.OptimType.AdamW,
                                     artifact_directory=str(out), **common)  # fmt: skip
        artifacts.generate_artifacts(model, optimizer=artifacts.OptimType.SGD,
                                     artifact_directory=tmp, **common)  # fmt: skip
        shutil.copy(Path(tmp) / "optimizer_model.onnx", out / "optimizer_sgd.onnx")
