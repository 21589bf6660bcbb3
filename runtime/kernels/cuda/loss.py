"""Softmax cross-entropy on CUDA over logits [N, K] and int64 labels [N], with label
smoothing, mirroring runtime/kernels/loss.py (one thread per sample; N is a batch)."""

from __future__ import annotations

import math

from numba import cuda, float64

from .launch import THREADS, blocks


@cuda.jit(cache=True)
def _xent_fwd(logits, labels, smoothing, logp, losses):  # pragma: no cover - compiled
    nb, nk = logits.shape
    for n in range(cuda.grid(1), nb, cuda.gridsize(1)):
        m = logits[n, 0]
        for k in range(1, nk):
            m = max(m, logits[n, k])
        s = float64(0.0)
        for k in range(nk):
            s += math.exp(logits[n, k] - m)
        lse = m + math.log(s)
        total = float64(0.0)
        for k in range(nk):
            logp[n, k] = logits[n, k] - lse
            total += logits[n, k] - lse
        losses[n] = -(1.0 - smoothing) * (logits[n, labels[n]] - lse) - smoothing * total / nk


@cuda.jit(cache=True)
def _sum_scaled(losses, scale, out):  # pragma: no cover - compiled
    if cuda.grid(1) == 0:
        acc = float64(0.0)
        for n in range(losses.size):
            acc += losses[n]
        out[0] = acc * scale


@cuda.jit(cache=True)
def _xent_bwd(logp, labels, smoothing, scale, gy, glogits):  # pragma: no cover - compiled
    nb, nk = logp.shape
    s = scale * gy[0]
    for t in range(cuda.grid(1), logp.size, cuda.gridsize(1)):
        n, k = t // nk, t % nk
        g = s * (math.exp(logp[n, k]) - smoothing / nk)
        if k == labels[n]:
            g -= s * (1.0 - smoothing)
        glogits[n, k] = g


def softmax_xent_fwd(logits, labels, smoothing: float, logp, losses) -> None:
    """logp = log_softmax(logits); losses[n] = cross-entropy of sample n."""
    _xent_fwd[blocks(logits.shape[0]), THREADS](logits, labels, float(smoothing), logp, losses)


def loss_total(losses, scale: float, out) -> None:
    """out (one float32) = sum of losses in float64, times scale (the op's reduction)."""
    _sum_scaled[1, 1](losses, float(scale), out.reshape(-1))


def softmax_xent_bwd(logp, labels, smoothing: float, scale: float, glogits, gy) -> None:
    """glogits = scale * gy * (softmax - target); `gy`, the loss's incoming gradient, is a
    one-element device array read on the device."""
    args = (logp, labels, float(smoothing), float(scale), gy.reshape(-1), glogits)
    _xent_bwd[blocks(logp.size), THREADS](*args)
