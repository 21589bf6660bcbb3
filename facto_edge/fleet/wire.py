"""How the travelling tensors are encoded on the wire, both ways (`--wire`): a table of
three encodings, each `encode(x) -> Array` and `decode(array, shape) -> float32`.

| wire | one tensor on the wire | bytes per value |
| --- | --- | --- |
| fp32 | the tensor itself (npy) | 4 |
| fp16 | float16 (npy), rounded to nearest | 2 |
| q8 | int8 q and a float32 scale s: x ~ s q, s = max abs x / 127, to nearest | 1, + 4 a tensor |

The server keeps its global tensors in fp32. Down, it sends them encoded; a client decodes
them to fp32 and trains. Up, fp32 sends the trained tensors themselves (an update is the
client's tensors, bit for bit); a lossy wire sends the change from what the client
received (trained - received), which the server decodes and adds to its own fp32 global
tensors (`decode_up`). The downlink's rounding thus cancels out of the update, and only the
change, small beside the weights, is rounded on the way up. Rounding is to nearest, so a
round replayed sends the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord

Q8_STYPE = "facto-edge.q8"  # data: float32 scale, then int8 values (C order)


@dataclass(frozen=True)
class Wire:
    encode: Callable[[np.ndarray], Array]
    decode: Callable[[Array, tuple[int, ...]], np.ndarray]  # ValueError if malformed
    sends_change: bool  # up: trained - received, not the trained tensors


def _numpy_decoder(dtype: str):
    def decode(array: Array, shape: tuple[int, ...]) -> np.ndarray:
        try:
            got = array.numpy()
        except Exception as e:  # a payload numpy cannot read is a malformed tensor too
            raise ValueError(f"is unreadable ({type(e).__name__}: {e})") from e
        if got.dtype != np.dtype(dtype) or got.shape != shape:
            raise ValueError(f"is {got.dtype}{list(got.shape)}, expected {dtype}{list(shape)}")
        return got.astype(np.float32)

    return decode


def _q8_encode(x: np.ndarray) -> Array:
    x = np.asarray(x, np.float32)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    scale = np.float32(peak / 127 if peak > 0 else 1.0)
    q = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
    return Array("int8", tuple(x.shape), Q8_STYPE, scale.tobytes() + q.tobytes())


def _q8_decode(array: Array, shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape))
    if array.stype != Q8_STYPE or tuple(array.shape) != shape or len(array.data) != 4 + size:
        raise ValueError(
            f"is {array.stype} {array.dtype}{list(array.shape)} of {len(array.data)} bytes, "
            f"expected {Q8_STYPE} int8{list(shape)} of {4 + size}"
        )
    scale = np.frombuffer(array.data, np.float32, count=1)[0]
    q = np.frombuffer(array.data, np.int8, offset=4).reshape(shape)
    return q.astype(np.float32) * scale


WIRES: dict[str, Wire] = {
    "fp32": Wire(lambda x: Array(np.asarray(x, np.float32)), _numpy_decoder("float32"), False),
    "fp16": Wire(lambda x: Array(np.asarray(x, np.float16)), _numpy_decoder("float16"), True),
    "q8": Wire(_q8_encode, _q8_decode, True),
}


def encode(tensors: dict[str, np.ndarray], wire: str) -> ArrayRecord:
    """An ArrayRecord of `tensors` encoded for `wire`, in sorted name order."""
    enc = WIRES[wire].encode
    return ArrayRecord({k: enc(np.ascontiguousarray(tensors[k])) for k in sorted(tensors)})


def decode(record: ArrayRecord, shapes: dict[str, tuple[int, ...]], wire: str) -> dict:
    """The float32 tensors of `record` (named as `shapes`); ValueError naming the first
    tensor that is missing or malformed."""
    out = {}
    for name, shape in shapes.items():
        if name not in record:
            raise ValueError(f"tensor {name!r} is missing")
        try:
            out[name] = WIRES[wire].decode(record[name], tuple(shape))
        except ValueError as e:
            raise ValueError(f"tensor {name!r} {e}") from e
    return out


def encode_up(trained: dict, received: dict, wire: str) -> ArrayRecord:
    """A client's reply: its trained tensors, or their change from `received` (lossy wires)."""
    if WIRES[wire].sends_change:
        trained = {k: np.asarray(v, np.float32) - received[k] for k, v in trained.items()}
    return encode(trained, wire)


def decode_up(record: ArrayRecord, global_tensors: dict, wire: str) -> dict[str, np.ndarray]:
    """The client tensors an update stands for: the decoded tensors, or the server's fp32
    global tensors plus the decoded change (lossy wires). ValueError if malformed."""
    shapes = {k: v.shape for k, v in global_tensors.items()}
    got = decode(record, shapes, wire)
    if WIRES[wire].sends_change:
        return {k: global_tensors[k] + v for k, v in got.items()}
    return got
