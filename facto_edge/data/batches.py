"""Batches in a reproducible order, with reproducible augmentation.

Every random draw comes from `np.random.default_rng` seeded by a tuple of integers:
the epoch's order from (seed, epoch, 0), batch b's augmentation from (seed, epoch, 1, b).
So the batches of epoch k depend on nothing but (seed, k): a run resumed at epoch k sees
exactly the batches it would have seen without the interruption.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from facto_edge.data.dataset import Dataset

PAD = 4  # pixels of padding around each image before the random crop
_ORDER, _AUGMENT = 0, 1


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a permutation drawn from (seed, epoch), or 0..n-1."""
    if not shuffle:
        return np.arange(n, dtype=np.intp)
    return np.random.default_rng([seed, epoch, _ORDER]).permutation(n).astype(np.intp)


def random_crop_flip(
    x: np.ndarray,
    rng: np.random.Generator,
    pad_value: np.ndarray,
    out: np.ndarray,
    padded: np.ndarray | None = None,
) -> np.ndarray:
    """Random crop of each image padded by PAD pixels, then a horizontal flip half the time.

    `pad_value` ((C, 1, 1)) fills the padding: the normalized value of a black pixel, as
    torchvision's RandomCrop(padding=4) before Normalize gives. Writes into `out[:N]`;
    `padded` (at least N x C x (H + 8) x (W + 8)) is scratch space, allocated if not given.
    """
    n, c, h, w = x.shape
    shifts = rng.integers(0, 2 * PAD + 1, size=(n, 2))
    flips = rng.random(n) < 0.5
    if padded is None:
        padded = np.empty((n, c, h + 2 * PAD, w + 2 * PAD), np.float32)
    padded = padded[:n]
    padded[...] = pad_value
    padded[:, :, PAD : PAD + h, PAD : PAD + w] = x
    out = out[:n]
    for i, ((dy, dx), flip) in enumerate(zip(shifts, flips, strict=True)):
        crop = padded[i, :, dy : dy + h, dx : dx + w]
        out[i] = crop[..., ::-1] if flip else crop
    return out


def iterate_batches(
    ds: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    augment: bool = False,
    drop_last: bool = False,
    reuse: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of (x float32 NCHW, y int64) batches of `ds`, reproducible from (seed, epoch).

    `augment` applies a random 4-pixel-padded crop and horizontal flip per image.
    `drop_last` leaves out a final batch smaller than `batch_size`. With `reuse` every
    batch is written into the same preallocated arrays: each x is valid only until the
    next batch is drawn (copy it to keep it). Unreadable images skipped by an image folder
    make a batch shorter; a batch left empty is not yielded.
    """
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: expected a positive integer")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed {seed}, epoch {epoch}: expected non-negative integers")
    order = epoch_order(len(ds), shuffle=shuffle, seed=seed, epoch=epoch)
    c, h, w = ds.input_shape
    loaded = np.empty((batch_size, c, h, w), np.float32) if reuse else None
    augmented = np.empty_like(loaded) if reuse and augment else None
    padded = np.empty((batch_size, c, h + 2 * PAD, w + 2 * PAD), np.float32) if augment else None
    pad_value = -ds.mean / ds.std
    for b, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start : start + batch_size]
        if drop_last and len(idx) < batch_size:
            return
        x, y = ds.get(idx, out=loaded)
        if len(y) == 0:
            continue
        if augment:
            rng = np.random.default_rng([seed, epoch, _AUGMENT, b])
            out = augmented if augmented is not None else np.empty_like(x)
            x = random_crop_flip(x, rng, pad_value, out, padded)
        yield x, y
