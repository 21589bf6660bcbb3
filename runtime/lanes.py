"""Lanes: a batch cut into slices, one per thread, trained side by side.

Each lane runs serial kernels and single-threaded BLAS (kernels/blas.py sets OpenBLAS's
thread count to 1 for the span of a step, or OPENBLAS_NUM_THREADS=1 says so): a step then
has one barrier instead of one per kernel, which measured 20-40% faster on a busy 2-core
machine. Where BLAS's threads cannot be set, every kernel is split across the cores
instead (numba threads, and BLAS's own). A single lane runs numba's parallel kernels on
`threads` threads and BLAS on one where it can be set: OpenBLAS's threads meet at each of
a convolution's many small sgemms, and on the busy 2-core machine (load average 10) they
made a one-lane step (resnet20, batch-statistics BN, batch 32, two threads) 30x slower
than one BLAS thread did (13.7 s against 0.40 s a step; serial kernels took 0.56 s).
Lane k's loss gradient is seeded with n_k / n, so the lanes' parameter gradients, added
into lane 0's, are those of the mean loss over the batch.
Graphs with batch-statistics BatchNormalization need the whole batch: one lane.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .binding import LABELS, LOSS
from .kernels import blas
from .kernels.dispatch import serial_in_this_thread


def lane_pool(lanes: int) -> ThreadPoolExecutor | None:
    """The threads that run lanes 1.. (lane 0 runs in the caller's thread)."""
    if lanes <= 1:
        return None
    return ThreadPoolExecutor(lanes - 1, initializer=serial_in_this_thread, initargs=(True,))


def run_micro(binding, pool, x: np.ndarray, y: np.ndarray, n: int, seeds: tuple) -> float:
    """Forward and backward of one micro-batch (x, y) of a batch of n over the lanes of
    `binding`: its share of the mean loss, with its gradients in lane 0's buffers. Lane
    k's codec rounding is seeded from hash((*seeds[:2], seeds[2] + k))."""
    io, jobs, weights = binding.io, [], []
    for lane, a, b in binding.slices(x.shape[0]):
        ex = binding.executor(b - a, lane)
        binding.feed_x(ex, x[a:b])
        io.put(ex.values[LABELS], y[a:b])
        weights.append((b - a) / n)
        io.fill(ex.grads[LOSS], weights[-1])
        seed = hash((seeds[0], seeds[1], seeds[2] + lane)) & (2**62 - 1)
        jobs.append((ex, seed))
    with blas.threads(1):
        others = [pool.submit(_forward_backward, *job) for job in jobs[1:]]
        serial_in_this_thread(len(jobs) > 1)
        try:
            _forward_backward(*jobs[0])
        finally:
            serial_in_this_thread(False)
            for f in others:
                f.result()
    for ex, _ in jobs[1:]:
        for name, g in binding.lane_grads.items():
            if name in ex.grads:
                np.add(g, ex.grads[name], out=g)
    losses = [io.scalar(ex.values[LOSS]) for ex, _ in jobs]
    return sum(loss * float(np.float32(w)) for loss, w in zip(losses, weights, strict=True))


def _forward_backward(ex, seed: int) -> None:
    ex.forward(training=True, seed=seed)
    ex.backward()
