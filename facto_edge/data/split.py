"""Deterministic, stratified splits of a dataset into two parts."""

from __future__ import annotations

import numpy as np

from facto_edge.data.dataset import Dataset, DatasetView
from facto_edge.errors import DataError

# Seeds (seed, 0, 2): apart from iterate_batches' (seed, epoch, 0) and (seed, epoch, 1, b).
_STREAM = (0, 2)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """(rest, held-out) sorted indices; each class gives round(fraction * its count)."""
    rng = np.random.default_rng([seed, *_STREAM])
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = int(round(fraction * len(members)))
        held.append(rng.permutation(members)[:k])
    held_out = np.sort(np.concatenate(held)).astype(np.intp)
    rest = np.setdiff1d(np.arange(len(labels), dtype=np.intp), held_out)
    return rest, held_out


def split_validation(ds: Dataset, fraction: float, seed: int) -> tuple[DatasetView, DatasetView]:
    """Split `ds` into (train, validation) views, stratified by label, same for a seed.

    Each class gives round(fraction * its count) samples to validation; both views
    keep the source order (shuffle with `iterate_batches`).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction {fraction}: expected a value in (0, 1)")
    if seed < 0:
        raise ValueError(f"seed {seed}: expected a non-negative integer")
    train, val = stratified_split(ds.labels, fraction, seed)
    if len(train) == 0 or len(val) == 0:
        raise DataError(
            f"{ds.name} has {len(ds)} samples: too few to hold out {fraction:.0%} for "
            "validation and keep some for training; use a larger fraction or more data"
        )
    return DatasetView(ds, train), DatasetView(ds, val)
