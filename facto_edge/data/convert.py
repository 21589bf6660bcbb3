"""Turn raw pixel arrays of any supported layout into the model's normalized float32 NCHW.

A batch goes: raw (uint8, uint16 or float; NHW, NHWC or NCHW) -> float32 NCHW scaled to
[0, 1] -> alpha dropped / luminance if the model has one channel -> bilinear resize to the
model's H x W -> (x - mean) / std, broadcasting one channel to C where the model has more.
Float sources must hold pixel values in [0, 1], as torchvision's ToTensor gives (others
are refused, naming the range found).
The resize uses half-pixel centers without antialiasing (torch `interpolate(...,
mode="bilinear", align_corners=False)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from facto_edge.errors import DataError

CHW = tuple[int, int, int]
_CHANNEL_COUNTS = (1, 3, 4)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(1, 3, 1, 1)
_FINITE_CHUNK = 4096
FLOAT_SLACK = 1e-3


def infer_layout(shape: tuple[int, ...], dtype: np.dtype, what: str) -> str:
    """The layout of an image array: "NHW", "NHWC" or "NCHW" (uint8 ties go to NHWC)."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        raise DataError(
            f"{what} has shape {tuple(shape)}: expected images of rank 3 (N,H,W) or 4 "
            "(N,H,W,C or N,C,H,W); reshape it to one of those"
        )
    last, second = shape[3] in _CHANNEL_COUNTS, shape[1] in _CHANNEL_COUNTS
    if last != second:
        return "NHWC" if last else "NCHW"
    return "NHWC" if dtype == np.uint8 else "NCHW"


def source_chw(shape: tuple[int, ...], layout: str) -> CHW:
    """(C, H, W) of one image in an array of the given shape and layout."""
    if layout == "NHW":
        return (1, shape[1], shape[2])
    if layout == "NHWC":
        return (shape[3], shape[1], shape[2])
    return (shape[1], shape[2], shape[3])


def pixel_scale(dtype: np.dtype, what: str) -> float:
    """The factor that maps raw pixel values of this dtype to [0, 1]."""
    if dtype == np.uint8:
        return 1 / 255
    if dtype == np.uint16:
        return 1 / 65535
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise DataError(
        f"{what} holds {np.dtype(dtype).name} values: expected uint8 or uint16 pixels, or "
        "floats in [0, 1]; convert it, e.g. x.astype(np.uint8)"
    )


def check_channels(src: int, dst: int, what: str) -> None:
    """Raise unless images with `src` channels can be converted to `dst` channels."""
    if src == dst or src == 1 or (src in (3, 4) and dst in (1, 3)):
        return
    raise DataError(
        f"{what} has {src} channels but the model expects {dst}: only 1 -> C, 3 -> 1 "
        "(luminance) and 4 -> 3 or 1 (alpha dropped) can be converted"
    )


def check_finite(x: np.ndarray, what: str) -> None:
    """Raise naming the first sample of a float array that holds NaN or Inf."""
    if not np.issubdtype(x.dtype, np.floating):
        return
    for start in range(0, len(x), _FINITE_CHUNK):
        chunk = x[start : start + _FINITE_CHUNK]
        bad = ~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if bad.any():
            first = start + int(np.argmax(bad))
            raise DataError(
                f"{what} contains NaN or Inf (first at index {first}): remove or fix those samples"
            )


def check_float_range(x: np.ndarray, what: str) -> None:
    """Raise unless float pixels lie in [0, 1] (a tolerance of FLOAT_SLACK), the range
    float sources are read in: [0, 255] floats would otherwise be read as near-white."""
    if not np.issubdtype(x.dtype, np.floating) or x.size == 0:
        return
    low = min(float(x[i : i + _FINITE_CHUNK].min()) for i in range(0, len(x), _FINITE_CHUNK))
    high = max(float(x[i : i + _FINITE_CHUNK].max()) for i in range(0, len(x), _FINITE_CHUNK))
    if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:
        hint = "divide by 255" if high <= 255 + FLOAT_SLACK and low >= 0 else "rescale them"
        raise DataError(
            f"{what} holds float pixels in [{low:g}, {high:g}]: expected floats in [0, 1] "
            f"(or uint8 pixels in [0, 255]); {hint}, or store them as uint8"
        )


def per_channel(
    value: float | Sequence[float] | None, default: float, channels: int, what: str
) -> np.ndarray:
    """A mean or std given as one value or one per channel, as a (C, 1, 1) float32 array."""
    arr = np.asarray(default if value is None else value, dtype=np.float32).reshape(-1)
    if arr.size == 1:
        arr = np.full(channels, arr[0], dtype=np.float32)
    if arr.size != channels or not np.isfinite(arr).all():
        raise DataError(
            f"normalization {what} {arr.tolist()}: expected 1 or {channels} finite values "
            "(one per model input channel)"
        )
    if what == "std" and (arr <= 0).any():
        raise DataError(f"normalization std {arr.tolist()}: expected values > 0")
    return arr.reshape(channels, 1, 1)


@lru_cache(maxsize=32)
def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (pos - lo).astype(np.float32)
    for a in (lo, hi, w):
        a.flags.writeable = False
    return lo, hi, w


def resize_bilinear(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 NCHW batch to `hw` (half-pixel centers, no antialias)."""
    if x.shape[2:] == tuple(hw):
        return x
    lo, hi, w = _axis_weights(x.shape[2], hw[0])
    x = x[:, :, lo, :] * (1 - w)[:, None] + x[:, :, hi, :] * w[:, None]
    lo, hi, w = _axis_weights(x.shape[3], hw[1])
    return x[..., lo] * (1 - w) + x[..., hi] * w


def _to_nchw(raw: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NHW":
        return raw[:, None]
    if layout == "NHWC":
        return raw.transpose(0, 3, 1, 2)
    return raw


@dataclass(frozen=True, eq=False)
class Conversion:
    """How raw batches of one source become model input: layout, scale, shape, norm."""

    layout: str
    scale: float
    src: CHW
    dst: CHW
    mean: np.ndarray  # (C, 1, 1) float32
    std: np.ndarray  # (C, 1, 1) float32

    def apply(self, raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Convert a raw batch; write into `out[:n]` when given (float32, n x C x H x W)."""
        x = np.ascontiguousarray(_to_nchw(raw, self.layout), dtype=np.float32)
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        x = self._reduce_channels(x)
        x = resize_bilinear(x, self.dst[1:])
        n = len(x)
        target = np.empty((n, *self.dst), np.float32) if out is None else out[:n]
        np.subtract(x, self.mean, out=target)  # broadcasts one channel to C
        target /= self.std
        return target

    def _reduce_channels(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] == 4 and self.dst[0] != 4:
            x = x[:, :3]
        if x.shape[1] == 3 and self.dst[0] == 1:
            x = (x * _LUMA).sum(axis=1, keepdims=True, dtype=np.float32)
        return x
