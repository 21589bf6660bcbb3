"""Softmax cross-entropy over logits [N, K] and int64 labels [N], with label smoothing:
the target is (1 - eps) * onehot(label) + eps / K, as torch.nn.CrossEntropyLoss. The
signatures are cuda/loss.py's."""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def softmax_xent_fwd(logits, labels, smoothing, logp, losses):  # pragma: no cover - compiled
    """logp = log_softmax(logits); losses[n] = cross-entropy of sample n."""
    nb, nk = logits.shape
    for n in range(nb):
        m = logits[n, 0]
        for k in range(1, nk):
            m = max(m, logits[n, k])
        s = 0.0
        for k in range(nk):
            s += math.exp(logits[n, k] - m)
        lse = m + math.log(s)
        total = 0.0
        for k in range(nk):
            logp[n, k] = logits[n, k] - lse
            total += logits[n, k] - lse
        losses[n] = -(1.0 - smoothing) * (logits[n, labels[n]] - lse) - smoothing * total / nk


def loss_total(losses: np.ndarray, scale: float, out: np.ndarray) -> None:
    """out (one float32) = sum of losses in float64, times scale (the op's reduction)."""
    out[...] = np.add.reduce(losses, dtype=np.float64) * scale


def softmax_xent_bwd(logp, labels, smoothing: float, scale: float, glogits, gy) -> None:
    """glogits = scale * gy * (softmax - target); `gy` is the loss's incoming gradient,
    a one-element array."""
    _xent_bwd(logp, labels, smoothing, scale * gy.item(), glogits)


@njit(cache=True, nogil=True)
def _xent_bwd(logp, labels, smoothing, scale, glogits):  # pragma: no cover - compiled
    """glogits = scale * (softmax - target)."""
    nb, nk = logp.shape
    for n in range(nb):
        for k in range(nk):
            glogits[n, k] = scale * (math.exp(logp[n, k]) - smoothing / nk)
        glogits[n, labels[n]] -= scale * (1.0 - smoothing)
