"""CIFAR-10 and CIFAR-100 "python version" batch folders.

CIFAR-10: data_batch_1..5 and test_batch, class names in batches.meta. CIFAR-100: train
and test, fine labels, class names in meta. Each batch is a pickle of a dict with b"data"
(N x 3072 uint8, channel-major 32 x 32) and b"labels" or b"fine_labels". The pickles are
read with an unpickler that only rebuilds numpy arrays, so a data file cannot run code.
The arrays are loaded once (50000 images are 150 MB of uint8).
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np

from facto_edge.data.dataset import ArrayDataset, DataRequest, array_dataset
from facto_edge.errors import DataError

try:
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

SUBDIRS = ("cifar-10-batches-py", "cifar-100-python")
_PARTS = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    "cifar100": {"train": ["train"], "test": ["test"]},
}
_META = {"cifar10": ("batches.meta", b"label_names"), "cifar100": ("meta", b"fine_label_names")}
_GLOBALS = {
    (module, name): obj
    for core in ("numpy.core", "numpy._core")
    for module, name, obj in (
        (f"{core}.multiarray", "_reconstruct", _multiarray._reconstruct),
        (f"{core}.multiarray", "scalar", _multiarray.scalar),
        (f"{core}.numeric", "_frombuffer", _numeric._frombuffer),
    )
} | {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
_GLOBALS[("builtins", "bytearray")] = bytearray
_GLOBALS[("_codecs", "encode")] = codecs.encode  # bytes in protocol-2 pickles


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return _GLOBALS[(module, name)]


def find_cifar(path: Path) -> tuple[Path, str] | None:
    """The batch folder and kind ("cifar10" or "cifar100") at or just under `path`."""
    for folder in (path, *(path / d for d in SUBDIRS)):
        for kind, parts in _PARTS.items():
            names = parts["train"] + parts["test"]
            if any((folder / n).is_file() for n in names):
                return folder, kind
    return None


def _load_pickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(f"cannot read CIFAR batch {path} ({e}): re-download it") from e
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR batch {path} holds a {type(obj).__name__}: expected a dict")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _load_pickle(path)
    label_key = b"fine_labels" if b"fine_labels" in d else b"labels"
    if b"data" not in d or label_key not in d:
        raise DataError(
            f"CIFAR batch {path} has keys {sorted(d)}: expected b'data' and b'labels' or "
            "b'fine_labels'"
        )
    data = np.asarray(d[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"CIFAR batch {path} has data {data.dtype.name} {data.shape}: expected uint8 (N, 3072)"
        )
    return data.reshape(-1, 3, 32, 32), np.asarray(d[label_key])


def _class_names(folder: Path, kind: str) -> list[str] | None:
    name, key = _META[kind]
    if not (folder / name).is_file():
        return None
    names = _load_pickle(folder / name).get(key)
    if names is None:
        return None
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def open_cifar(folder: Path, kind: str, req: DataRequest) -> ArrayDataset:
    """The requested split of a CIFAR-10/100 python batch folder found by `find_cifar`."""
    files = [folder / n for n in _PARTS[kind][req.split] if (folder / n).is_file()]
    if not files:
        wanted = " or ".join(_PARTS[kind][req.split])
        raise DataError(f"{folder} has no {wanted} for the {req.split} split of {kind}")
    batches = [_read_batch(f) for f in files]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    classes = _class_names(folder, kind)
    return array_dataset(x, y, req, name=str(folder), split=req.split, classes=classes)
