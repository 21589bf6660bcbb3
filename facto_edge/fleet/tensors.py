"""What travels between the server and a client: the trainable tensors only, as one
Flower ArrayRecord keyed by initializer name. The frozen factors never leave the model
directory that every node holds.

`check_update` is the gate before aggregation: an update is rejected, never merged,
unless it carries exactly the expected names, each with the expected shape and the wire's
encoding (wire.py), and only finite values.
"""

from __future__ import annotations

import numpy as np
import onnx
from flwr.app import Array, ArrayRecord
from onnx import numpy_helper

from facto_edge.fleet.wire import decode
from facto_edge.runtime.checkpoint import host_copy
from facto_edge.runtime.manifest import Manifest


def to_record(tensors: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of host copies of `tensors`, in sorted name order."""
    arrays = {k: Array(np.ascontiguousarray(host_copy(tensors[k]))) for k in sorted(tensors)}
    return ArrayRecord(arrays)


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The arrays of `record` by name."""
    return {k: v.numpy() for k, v in record.items()}


def record_bytes(record: ArrayRecord) -> int:
    """Bytes of `record`'s tensors as Flower serializes them (data, numpy headers, keys:
    ArrayRecord.count_bytes)."""
    return record.count_bytes()


def check_update(
    record: ArrayRecord, expected: dict[str, np.ndarray], wire: str = "fp32"
) -> str | None:
    """Why the update `record`, encoded for `wire` (wire.py), must be rejected (one line),
    or None if it may merge: exactly the expected names, each with the expected shape and
    the wire's encoding, and only finite values."""
    missing = sorted(expected.keys() - record.keys())
    extra = sorted(record.keys() - expected.keys())
    if missing or extra:
        return f"wrong tensors: missing {missing[:3]}, unexpected {extra[:3]}"
    try:
        got = decode(record, {k: v.shape for k, v in expected.items()}, wire)
    except ValueError as e:
        return str(e)
    for name, a in got.items():
        if not np.isfinite(a).all():
            return f"tensor {name!r} holds NaN or Inf"
    return None


def full_model_bytes(model_dir: str) -> dict[str, int]:
    """What exchanging the whole model would cost one way, in bytes: `factorized` (every
    initializer of model.onnx, frozen factors included, as an ArrayRecord) and `dense`
    (the original model's weights before factorization, fp32, from the manifest)."""
    proto = onnx.load(f"{model_dir}/model.onnx")
    arrays = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    manifest = Manifest.load(model_dir)
    dense = 4 * manifest.totals()["params_before"]
    return {"factorized": record_bytes(to_record(arrays)), "dense": dense}
