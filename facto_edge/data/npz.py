"""`.npz` archives with `x` and `y` (and optionally `x_test` and `y_test`).

`x` holds images as NHWC uint8, or NCHW / NHW floats in [0, 1] (see convert.py for how a
layout is told); `y` holds integer class indices. Without `x_test` the archive has no
train/test parts and both splits give all of `x` (split "all"). Arrays are loaded once;
pickled (object) arrays are refused.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from numpy.lib.npyio import NpzFile

from facto_edge.data.dataset import ArrayDataset, DataRequest, array_dataset
from facto_edge.errors import DataError

_KEYS = {"train": ("x", "y"), "test": ("x_test", "y_test")}


def _pick(path: Path, keys: list[str], split: str) -> tuple[tuple[str, str], str]:
    """The (images, labels) keys for `split`, and the split they really are."""
    if "x" not in keys or "y" not in keys:
        raise DataError(
            f"{path} holds arrays {keys}: expected x (images) and y (labels), "
            "optionally x_test and y_test"
        )
    has_x_test, has_y_test = "x_test" in keys, "y_test" in keys
    if has_x_test != has_y_test:
        raise DataError(f"{path} holds arrays {keys}: expected x_test and y_test together")
    return (_KEYS[split], split) if has_x_test else (_KEYS["train"], "all")


def open_npz(path: Path, req: DataRequest) -> ArrayDataset:
    """The requested split of an .npz archive (see the module docstring)."""
    with path.open("rb") as f:
        magic = f.read(6)
    if not magic.startswith(b"PK") and magic != b"\x93NUMPY":
        raise DataError(
            f"{path} is not an .npz archive (no zip header): expected a file written by "
            "np.savez(path, x=images, y=labels)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(
            f"cannot read {path} ({e}): expected an .npz written by np.savez with "
            "numeric arrays x and y"
        ) from e
    if not isinstance(archive, NpzFile):
        raise DataError(
            f"{path} holds a single array: expected an .npz archive with x and y, "
            "e.g. np.savez(path, x=images, y=labels)"
        )
    with archive:
        (x_key, y_key), split = _pick(path, list(archive.files), req.split)
        try:
            x, y = archive[x_key], archive[y_key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"cannot read {x_key}/{y_key} from {path} ({e})") from e
    return array_dataset(x, y, req, name=str(path), split=split)
