"""BatchNormalization kernels over x viewed as [N, C, P] (P = product of spatial axes).

Inference form: y = (x - mean) / sqrt(var + eps) * scale + bias with given statistics.
Training form: the statistics are the batch's (biased variance), kept as `stats`
[2, C] = (mean, 1 / sqrt(var + eps)) for backward. Sums accumulate in float64.
"""

from __future__ import annotations

import math

from numba import prange

from .dispatch import REASSOC, kernel


@kernel
def bn_fwd(x, scale, bias, mean, invstd, y):  # pragma: no cover - compiled
    """y = (x - mean[c]) * invstd[c] * scale[c] + bias[c]."""
    nb, nc, npix = x.shape
    for t in prange(nb * nc):
        n, c = t // nc, t % nc
        a = scale[c] * invstd[c]
        b = bias[c] - mean[c] * a
        for p in range(npix):
            y[n, c, p] = x[n, c, p] * a + b


@kernel
def channel_scale(g, scale, invstd, out):  # pragma: no cover - compiled
    """out = g * scale[c] * invstd[c]: the input gradient with fixed statistics."""
    nb, nc, npix = g.shape
    for t in prange(nb * nc):
        n, c = t // nc, t % nc
        a = scale[c] * invstd[c]
        for p in range(npix):
            out[n, c, p] = g[n, c, p] * a


@kernel
def invstd_of(var, eps, out):  # pragma: no cover - compiled
    """out[c] = 1 / sqrt(var[c] + eps)."""
    for c in prange(var.size):
        out[c] = 1.0 / math.sqrt(var[c] + eps)


@kernel(fastmath=REASSOC)
def batch_stats(x, eps, stats):  # pragma: no cover - compiled
    """stats[0] = per-channel mean of x, stats[1] = 1 / sqrt(biased variance + eps)."""
    nb, nc, npix = x.shape
    count = nb * npix
    for c in prange(nc):
        s = 0.0
        for n in range(nb):
            for p in range(npix):
                s += x[n, c, p]
        mu = s / count
        q = 0.0
        for n in range(nb):
            for p in range(npix):
                d = x[n, c, p] - mu
                q += d * d
        stats[0, c] = mu
        stats[1, c] = 1.0 / math.sqrt(q / count + eps)


@kernel
def running_update(stats, eps, momentum, mean_in, var_in, mean_out, var_out):  # pragma: no cover
    """ONNX running statistics: out = in * momentum + batch * (1 - momentum)."""
    for c in prange(mean_in.size):
        var = 1.0 / (stats[1, c] * stats[1, c]) - eps
        mean_out[c] = mean_in[c] * momentum + stats[0, c] * (1.0 - momentum)
        var_out[c] = var_in[c] * momentum + var * (1.0 - momentum)


@kernel(fastmath=REASSOC)
def bn_bwd(gy, x, scale, mean, invstd, batch, gx, gscale, gbias, need):  # pragma: no cover
    """Gradients of bn_fwd: need = (x, scale, bias) flags. With `batch` the statistics are
    the batch's, so gx also flows through the mean and variance."""
    nb, nc, npix = gy.shape
    count = nb * npix
    for c in prange(nc):
        sg = 0.0
        sgx = 0.0
        for n in range(nb):
            for p in range(npix):
                g = gy[n, c, p]
                sg += g
                sgx += g * (x[n, c, p] - mean[c])
        sgx *= invstd[c]
        if need[1]:
            gscale[c] = sgx
        if need[2]:
            gbias[c] = sg
        if need[0]:
            k = scale[c] * invstd[c]
            mg = sg / count if batch else 0.0
            mgx = sgx / count if batch else 0.0
            for n in range(nb):
                for p in range(npix):
                    xh = (x[n, c, p] - mean[c]) * invstd[c]
                    gx[n, c, p] = k * (gy[n, c, p] - mg - xh * mgx)
