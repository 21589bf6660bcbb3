"""Softmax cross-entropy over logits [N, K] and int64 labels [N], with label smoothing:
the target is (1 - eps) * onehot(label) + eps / K, as torch.nn.CrossEntropyLoss."""

from __future__ import annotations

import math

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


@njit(cache=True, nogil=True)
def softmax_xent_bwd(logp, labels, smoothing, scale, glogits):  # pragma: no cover - compiled
    """glogits = scale * (softmax - target)."""
    nb, nk = logp.shape
    for n in range(nb):
        for k in range(nk):
            glogits[n, k] = scale * (math.exp(logp[n, k]) - smoothing / nk)
        glogits[n, labels[n]] -= scale * (1.0 - smoothing)
