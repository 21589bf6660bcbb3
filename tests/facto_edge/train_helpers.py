"""Helpers of the training tests (imported by their conftest and test modules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT_SHAPE = (1, 16, 16)


def digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The built-in digits' split as 8 x 8 float images in [0, 1] and int64 labels."""
    from facto_edge.data import open_dataset

    ds = open_dataset("digits:", (1, 8, 8), split=split, num_classes=10)
    x, y = ds.get(np.arange(len(ds)))
    return x[:, 0], y


def write_npz(path: Path, n: int, **overrides) -> Path:
    """The first `n` training digits (8 x 8 floats) as an .npz, arrays overridable."""
    x, y = digits_arrays("train")
    arrays = {"x": x[:n], "y": y[:n]} | overrides
    np.savez(path, **arrays)
    return path
