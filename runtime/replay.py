"""ReplayBuffer: a fixed number of past samples, kept for rehearsal while training on a
stream, in memory allocated once.

Policies: "reservoir" keeps a uniform sample of everything seen (Vitter's algorithm R:
sample t, counted from 0, replaces a random slot with probability capacity / (t + 1));
"ring" keeps the latest `capacity` samples. Every random draw comes from one
numpy Generator seeded by `seed`, so a run is reproducible.

Memory: the samples, labels and the index/draw scratch of `sample` are allocated in the
constructor (from the session's allocator when one is given, so the session's
`memory_report` counts them, else as plain numpy arrays); `add` and `sample` write into
them and into the caller's arrays and never allocate an array.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from .errors import DataError, FactoEdgeError

POLICIES = ("reservoir", "ring")
_COUNT = itertools.count()
Alloc = Callable[[str, tuple[int, ...], np.dtype], np.ndarray]


class ReplayBuffer:
    """A fixed-size store of (x, y) samples with a reservoir or ring policy.

    Parameters
    ----------
    capacity : int
        Samples kept at most.
    sample_shape : tuple of int
        Shape of one input sample, e.g. ``(1, 16, 16)``.
    policy : {"reservoir", "ring"}
        Which samples stay once the buffer is full (see the module docstring).
    seed : int
        Seed of the random draws (reservoir replacement and `sample`).
    session : TrainingSession, optional
        Allocate the buffer through this session, so that its ``memory_report()``
        accounts for it (as ``unplanned_bytes``: it lives beside the planned arena).
    """

    def __init__(
        self,
        capacity: int,
        sample_shape: tuple[int, ...],
        *,
        policy: str = "reservoir",
        seed: int = 0,
        session=None,
    ) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise FactoEdgeError(f"capacity must be a positive int, found {capacity!r}")
        if policy not in POLICIES:
            raise FactoEdgeError(f"policy must be one of {POLICIES}, found {policy!r}")
        alloc = _allocator(session)
        self.capacity, self.policy = capacity, policy
        self.sample_shape = tuple(int(d) for d in sample_shape)
        self._x = alloc("x", (capacity, *self.sample_shape), np.dtype(np.float32))
        self._y = alloc("y", (capacity,), np.dtype(np.int64))
        self._draw = alloc("draw", (capacity,), np.dtype(np.float64))
        self._index = alloc("index", (capacity,), np.dtype(np.int64))
        self._rng = np.random.default_rng(seed)
        self._size = 0
        self._seen = 0

    def __len__(self) -> int:
        """Samples held now (at most `capacity`)."""
        return self._size

    @property
    def seen(self) -> int:
        """Samples offered to `add` so far."""
        return self._seen

    @property
    def nbytes(self) -> int:
        """Bytes the buffer holds, fixed at construction."""
        return sum(a.nbytes for a in (self._x, self._y, self._draw, self._index))

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Offer a batch of samples (x float32 ``[b, *sample_shape]``, y int ``[b]``);
        the policy decides which are kept."""
        if x.shape[1:] != self.sample_shape or y.shape != (x.shape[0],):
            raise DataError(
                f"add expects x [b, {', '.join(map(str, self.sample_shape))}] and y [b], "
                f"found x {list(x.shape)} and y {list(y.shape)}"
            )
        for i in range(x.shape[0]):
            slot = self._slot()
            if slot >= 0:
                self._x[slot] = x[i]
                self._y[slot] = y[i]
            self._seen += 1

    def sample(self, n: int, out_x: np.ndarray, out_y: np.ndarray) -> int:
        """Draw n samples uniformly, with replacement, into ``out_x[:n]`` and ``out_y[:n]``;
        returns n, or 0 (nothing written) while the buffer is empty."""
        if self._size == 0:
            return 0
        if not 0 <= n <= self.capacity or out_x.shape[0] < n or out_y.shape[0] < n:
            raise DataError(f"cannot sample {n} into arrays of {out_x.shape[0]} samples")
        draw, index = self._draw[:n], self._index[:n]
        self._rng.random(out=draw)
        np.multiply(draw, self._size, out=draw)
        np.copyto(index, draw, casting="unsafe")
        np.take(self._x, index, axis=0, out=out_x[:n], mode="clip")  # unbuffered
        np.take(self._y, index, out=out_y[:n], mode="clip")
        return n

    def _slot(self) -> int:
        """Where the next offered sample goes, or -1 to drop it."""
        if self._size < self.capacity:
            self._size += 1
            return self._size - 1
        if self.policy == "ring":
            return self._seen % self.capacity
        j = int(self._rng.random() * (self._seen + 1))
        return j if j < self.capacity else -1


def _allocator(session) -> Alloc:
    if session is None:
        return lambda name, shape, dtype: np.zeros(shape, dtype)
    prefix = f"replay{next(_COUNT)}:"  # one name space per buffer
    return lambda name, shape, dtype: session.allocate(prefix + name, shape, dtype, "replay")
