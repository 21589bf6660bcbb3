"""StreamingTrainer: train on batches as they arrive (a camera loop), each new batch
mixed with samples replayed from a ReplayBuffer, in memory allocated once.

Each `step(x, y)` copies the new samples into a preallocated mixing batch, tops it up with
`replay` samples drawn from the buffer, runs one `TrainingSession.train_step` on it, and
only then offers the new samples to the buffer (so replay rehearses the past, not the
batch itself). The mixing batch has the session's batch_size, so the number of distinct
step sizes is bounded and, once the buffer holds `replay` samples, every step has the same
size: after that warm-up nothing is allocated and resident memory stays flat.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import DataError
from .replay import ReplayBuffer
from .session import TrainingSession


class StreamingTrainer:
    """Train a session on a stream of batches with rehearsal from a replay buffer.

    Parameters
    ----------
    session : TrainingSession
        The session to train; its batch_size bounds new + replayed samples per step.
    buffer : ReplayBuffer, optional
        Where past samples are kept; by default a reservoir of `capacity` samples
        allocated through the session.
    replay : int, optional
        Replayed samples per step (default: half the session's batch_size).
    capacity : int
        Size of the default buffer.
    seed : int
        Seed of the default buffer.
    """

    def __init__(
        self,
        session: TrainingSession,
        buffer: ReplayBuffer | None = None,
        *,
        replay: int | None = None,
        capacity: int = 256,
        seed: int = 0,
    ) -> None:
        shape = tuple(session.input_shape)
        self.session = session
        self.buffer = buffer or ReplayBuffer(capacity, shape, seed=seed, session=session)
        if self.buffer.sample_shape != shape:
            raise DataError(f"the buffer holds samples {self.buffer.sample_shape}, not {shape}")
        self.replay = session.batch_size // 2 if replay is None else int(replay)
        batch = session.batch_size
        self._x = session.allocate("stream:x", (batch, *shape), np.dtype(np.float32), "stream")
        self._y = session.allocate("stream:y", (batch,), np.dtype(np.int64), "stream")
        self.steps = 0

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        """Train on the new batch (x, y) mixed with replayed samples; returns the loss.

        Parameters
        ----------
        x : numpy.ndarray
            float32 ``[b, *input_shape]`` new samples, b <= batch_size.
        y : numpy.ndarray
            int ``[b]`` labels.

        Returns
        -------
        float
            Mean loss of the mixed batch before the update.
        """
        b = x.shape[0]
        if not 1 <= b <= self.session.batch_size:
            raise DataError(
                f"a stream batch needs 1 to {self.session.batch_size} samples, found {b}"
            )
        self._x[:b] = x
        self._y[:b] = y
        k = min(self.replay, self.session.batch_size - b, len(self.buffer))
        k = self.buffer.sample(k, self._x[b:], self._y[b:])
        loss = self.session.train_step(self._x[: b + k], self._y[: b + k])
        self.buffer.add(x, y)
        self.steps += 1
        return loss

    def run(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
        """`step` on every (x, y) of `batches` (e.g. a camera generator); returns the last
        loss (nan for an empty stream). Metrics go to the session's callbacks."""
        loss = float("nan")
        for x, y in batches:
            loss = self.step(x, y)
        return loss
