"""`open_dataset`: tell the format of a data path and open the split asked for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from facto_edge.data.cifar import find_cifar, open_cifar
from facto_edge.data.dataset import CORRUPT_POLICIES, SPLITS, DataRequest, Dataset
from facto_edge.data.digits import NAMES as DIGITS_NAMES
from facto_edge.data.digits import open_digits
from facto_edge.data.idx import find_idx, open_idx
from facto_edge.data.imagefolder import is_image_folder, open_image_folder
from facto_edge.data.npz import open_npz
from facto_edge.errors import DataError

if TYPE_CHECKING:
    from facto_edge.runtime.manifest import Manifest

SUPPORTED = (
    "a folder of class folders of PNG/JPEG images (optionally under train/ and test/ or "
    "val/), a CIFAR-10/100 python batch folder, a folder of MNIST IDX files (raw or .gz), "
    "an .npz with x and y, or the built-in 'digits:'"
)


def detect_format(path: str) -> str:
    """The format of a data path: "digits", "npz", "cifar", "idx" or "imagefolder"."""
    if path.lower() in DIGITS_NAMES:
        return "digits"
    if path.lower().startswith("builtin:"):
        raise DataError(f"unknown built-in dataset {path!r}: the built-in one is 'digits:'")
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {path!r} does not exist: expected {SUPPORTED}")
    if p.is_file():
        if p.suffix.lower() == ".npz":
            return "npz"
        raise DataError(f"cannot read {path!r} as data: expected {SUPPORTED}")
    if not any(p.iterdir()):
        raise DataError(f"data folder {path!r} is empty: expected {SUPPORTED}")
    if find_idx(p):
        return "idx"
    if find_cifar(p) is not None:
        return "cifar"
    if is_image_folder(p):
        return "imagefolder"
    raise DataError(
        f"{path!r} holds files but no class folders or known data files: expected {SUPPORTED}"
    )


def open_dataset(
    path: str,
    input_shape: tuple[int, int, int],
    *,
    split: str = "train",
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    num_classes: int | None = None,
    on_corrupt: str = "skip",
) -> Dataset:
    """Open the `split` ("train" or "test") of the data at `path` for a model.

    `input_shape` is the model's (C, H, W): images are converted (1 <-> 3 channels,
    alpha dropped) and resized to it. Pixels are scaled to [0, 1], then normalized with
    `mean` and `std` (one value or one per channel; pass the manifest's; None means 0
    and 1). `num_classes` is the model's class count: every label must lie in
    [0, num_classes). `on_corrupt` says what an unreadable image in an image folder does:
    "skip" leaves it out and lists it in `ds.skipped`, "fail" raises naming the file.
    Sources without train/test parts give all their samples for either split
    (`ds.split == "all"`). Raises DataError for any problem with the data.
    """
    req = _request(input_shape, split, mean, std, num_classes, on_corrupt)
    fmt = detect_format(path)
    if fmt == "digits":
        return open_digits(req)
    p = Path(path)
    if fmt == "npz":
        return open_npz(p, req)
    if fmt == "idx":
        return open_idx(p, find_idx(p), req)
    if fmt == "cifar":
        folder, kind = find_cifar(p)
        return open_cifar(folder, kind, req)
    return open_image_folder(p, req)


def open_for_model(
    path: str,
    manifest: Manifest,
    *,
    split: str = "train",
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    on_corrupt: str = "skip",
) -> Dataset:
    """`open_dataset` with the input shape, class count and normalization of an exported
    model's manifest; `mean` and `std` override the manifest's when given."""
    norm = manifest.normalization or {}
    return open_dataset(
        path,
        tuple(manifest.input_shape),
        split=split,
        mean=norm.get("mean") if mean is None else mean,
        std=norm.get("std") if std is None else std,
        num_classes=manifest.num_classes,
        on_corrupt=on_corrupt,
    )


def _request(
    input_shape: tuple[int, int, int],
    split: str,
    mean: float | Sequence[float] | None,
    std: float | Sequence[float] | None,
    num_classes: int | None,
    on_corrupt: str,
) -> DataRequest:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input shape {input_shape}: expected (C, H, W) positive integers")
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")
    if on_corrupt not in CORRUPT_POLICIES:
        raise ValueError(f"on_corrupt {on_corrupt!r}: expected one of {CORRUPT_POLICIES}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes {num_classes}: expected a positive integer")
    return DataRequest(shape, split, mean, std, num_classes, on_corrupt)
