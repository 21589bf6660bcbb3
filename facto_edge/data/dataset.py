"""The dataset object every format opens into, its array-backed form, and subset views.

A dataset knows its labels up front (cheap for every format) and produces pixels only
when asked, one batch at a time, through `get(indices)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facto_edge.data.convert import (
    CHW,
    Conversion,
    check_channels,
    check_finite,
    check_float_range,
    infer_layout,
    per_channel,
    pixel_scale,
    source_chw,
)
from facto_edge.errors import DataError

SPLITS = ("train", "test")
CORRUPT_POLICIES = ("skip", "fail")


@dataclass(frozen=True)
class DataRequest:
    """What the caller of `open_dataset` asked for, handed to each format's opener."""

    input_shape: CHW
    split: str
    mean: float | Sequence[float] | None
    std: float | Sequence[float] | None
    num_classes: int | None
    on_corrupt: str

    def conversion(self, layout: str, scale: float, src: CHW) -> Conversion:
        c = self.input_shape[0]
        mean = per_channel(self.mean, 0.0, c, "mean")
        std = per_channel(self.std, 1.0, c, "std")
        return Conversion(layout, scale, src, self.input_shape, mean, std)


class Dataset(ABC):
    """Labelled images, converted on demand to the model's normalized float32 NCHW input.

    Attributes: `name` (the path or "digits"), `split` ("train", "test", or "all" where
    the source has no train/test parts), `classes` (label index -> name, for the labels
    the data has), `num_classes` (the label space: the model's when given),
    `input_shape` (C, H, W), `labels` (int64, one per sample), `mean` and `std`
    ((C, 1, 1) float32), `skipped` (paths of unreadable files left out, image folders).
    """

    def __init__(
        self,
        *,
        name: str,
        split: str,
        classes: list[str],
        num_classes: int,
        labels: np.ndarray,
        conversion: Conversion,
    ) -> None:
        self.name = name
        self.split = split
        self.classes = classes
        self.num_classes = num_classes
        self.labels = labels
        self.conversion = conversion
        self.skipped: list[str] = []

    @property
    def input_shape(self) -> CHW:
        return self.conversion.dst

    @property
    def mean(self) -> np.ndarray:
        return self.conversion.mean

    @property
    def std(self) -> np.ndarray:
        return self.conversion.std

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def get(
        self, indices: Sequence[int] | np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Samples `indices` as (x float32 N x C x H x W normalized, y int64 N).

        With `out` (float32, at least N x C x H x W) x is written into `out[:N]`.
        Image folders leave out unreadable files under on_corrupt="skip", so N may be
        smaller than len(indices); y always matches x.
        """


class ArrayDataset(Dataset):
    """A dataset over one in-memory or memory-mapped array of raw images."""

    def __init__(
        self,
        raw: np.ndarray,
        *,
        name: str,
        split: str,
        classes: list[str],
        num_classes: int,
        labels: np.ndarray,
        conversion: Conversion,
    ) -> None:
        super().__init__(
            name=name,
            split=split,
            classes=classes,
            num_classes=num_classes,
            labels=labels,
            conversion=conversion,
        )
        self.raw = raw

    def get(
        self, indices: Sequence[int] | np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        idx = as_indices(indices, len(self))
        return self.conversion.apply(self.raw[idx], out), self.labels[idx]


class DatasetView(Dataset):
    """The samples `indices` of another dataset, in that order."""

    def __init__(self, base: Dataset, indices: np.ndarray) -> None:
        indices = as_indices(indices, len(base))
        super().__init__(
            name=base.name,
            split=base.split,
            classes=base.classes,
            num_classes=base.num_classes,
            labels=base.labels[indices],
            conversion=base.conversion,
        )
        self.base = base
        self.indices = indices
        self.skipped = base.skipped

    def get(
        self, indices: Sequence[int] | np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.base.get(self.indices[as_indices(indices, len(self))], out)


def as_indices(indices: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Indices as a 1-D intp array, checked against a dataset of `n` samples."""
    idx = np.asarray(indices, dtype=np.intp).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = idx[(idx < 0) | (idx >= n)][0]
        raise IndexError(f"sample index {bad} is outside a dataset of {n} samples")
    return idx


def as_labels(y: np.ndarray, what: str) -> np.ndarray:
    """Labels as int64 class indices; integral floats are accepted."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(
            f"{what} has shape {y.shape}: expected 1-D integer class indices; "
            "for one-hot labels pass y.argmax(1)"
        )
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if not bad.any():
            return y.astype(np.int64)
        i = int(np.argmax(bad))
        raise DataError(f"{what} holds {y[i]} at index {i}: expected integer class indices")
    raise DataError(f"{what} holds {y.dtype.name} values: expected integer class indices")


def resolve_num_classes(labels: np.ndarray, num_classes: int | None, name: str) -> int:
    """The label space: the model's class count, checked against every label."""
    neg = labels < 0
    if neg.any():
        i = int(np.argmax(neg))
        raise DataError(
            f"{name}: label {labels[i]} at index {i} is negative: expected class indices "
            "0..K-1; relabel the data"
        )
    if num_classes is None:
        return int(labels.max()) + 1
    over = labels >= num_classes
    if over.any():
        i = int(np.argmax(over))
        raise DataError(
            f"{name}: label {labels[i]} at index {i} is outside [0, {num_classes}): the "
            f"model has {num_classes} classes; relabel the data or export a model with "
            f"at least {int(labels.max()) + 1} classes"
        )
    return num_classes


def array_dataset(
    raw: np.ndarray,
    y: np.ndarray,
    req: DataRequest,
    *,
    name: str,
    split: str,
    classes: list[str] | None = None,
) -> ArrayDataset:
    """Check a raw image array and its labels against the model, and wrap them."""
    what = f"{name} ({split})" if split != "all" else name
    if len(raw) == 0:
        raise DataError(f"{what} has no samples: expected at least one image")
    labels = as_labels(y, f"labels of {what}")
    if len(labels) != len(raw):
        raise DataError(
            f"{what} has {len(raw)} images but {len(labels)} labels: expected one label per image"
        )
    layout = infer_layout(raw.shape, raw.dtype, f"images of {what}")
    src = source_chw(raw.shape, layout)
    check_channels(src[0], req.input_shape[0], f"images of {what}")
    check_finite(raw, f"images of {what}")
    check_float_range(raw, f"images of {what}")
    conversion = req.conversion(layout, pixel_scale(raw.dtype, f"images of {what}"), src)
    num_classes = resolve_num_classes(labels, req.num_classes, what)
    names = classes if classes is not None else [str(i) for i in range(num_classes)]
    return ArrayDataset(
        raw,
        name=name,
        split=split,
        classes=names,
        num_classes=num_classes,
        labels=labels,
        conversion=conversion,
    )
