"""BatchNormalization kernels on CUDA over x viewed as [N, C, P], mirroring
runtime/kernels/bn.py: the inference form with given statistics, the training form with
batch statistics kept as `stats` [2, C] = (mean, 1 / sqrt(var + eps)), and backward.
Per-channel sums run one block per channel and accumulate in float64, as on the CPU."""

from __future__ import annotations

import math

from numba import cuda, float64

from .launch import THREADS, blocks, tree_sum, unravel4


@cuda.jit(cache=True)
def _bn_fwd(x, scale, bias, mean, invstd, y):  # pragma: no cover - compiled
    nb, nc, npix = x.shape
    for t in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        _, n, c, p = unravel4(t, nb, nc, npix)
        a = scale[c] * invstd[c]
        b = bias[c] - mean[c] * a
        y[n, c, p] = x[n, c, p] * a + b


@cuda.jit(cache=True)
def _channel_scale(g, scale, invstd, out):  # pragma: no cover - compiled
    nb, nc, npix = g.shape
    for t in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        _, n, c, p = unravel4(t, nb, nc, npix)
        out[n, c, p] = g[n, c, p] * (scale[c] * invstd[c])


@cuda.jit(cache=True)
def _invstd_of(var, eps, out):  # pragma: no cover - compiled
    for c in range(cuda.grid(1), var.size, cuda.gridsize(1)):
        out[c] = 1.0 / math.sqrt(var[c] + eps)


@cuda.jit(cache=True)
def _batch_stats(x, eps, stats):  # pragma: no cover - compiled
    buf = cuda.shared.array(THREADS, float64)
    tid = cuda.threadIdx.x
    nb, nc, npix = x.shape
    count = nb * npix
    for c in range(cuda.blockIdx.x, nc, cuda.gridDim.x):
        s = float64(0.0)
        for q in range(tid, count, THREADS):
            s += x[q // npix, c, q % npix]
        buf[tid] = s
        mu = tree_sum(buf, tid) / count
        s = float64(0.0)
        for q in range(tid, count, THREADS):
            d = x[q // npix, c, q % npix] - mu
            s += d * d
        buf[tid] = s
        var = tree_sum(buf, tid) / count
        if tid == 0:
            stats[0, c] = mu
            stats[1, c] = 1.0 / math.sqrt(var + eps)


@cuda.jit(cache=True)
def _running_update(stats, eps, momentum, mean_in, var_in, mean_out, var_out):  # pragma: no cover
    for c in range(cuda.grid(1), mean_in.size, cuda.gridsize(1)):
        var = 1.0 / (stats[1, c] * stats[1, c]) - eps
        mean_out[c] = mean_in[c] * momentum + stats[0, c] * (1.0 - momentum)
        var_out[c] = var_in[c] * momentum + var * (1.0 - momentum)


@cuda.jit(cache=True)
def _bn_bwd(gy, x, scale, mean, invstd, batch, gx, gscale, gbias, need):  # pragma: no cover
    buf = cuda.shared.array(THREADS, float64)
    tid = cuda.threadIdx.x
    nb, nc, npix = gy.shape
    count = nb * npix
    for c in range(cuda.blockIdx.x, nc, cuda.gridDim.x):
        sg = float64(0.0)
        sgx = float64(0.0)
        for q in range(tid, count, THREADS):
            g = gy[q // npix, c, q % npix]
            sg += g
            sgx += g * (x[q // npix, c, q % npix] - mean[c])
        buf[tid] = sg
        sg = tree_sum(buf, tid)
        buf[tid] = sgx
        sgx = tree_sum(buf, tid) * invstd[c]
        if tid == 0 and need[1]:
            gscale[c] = sgx
        if tid == 0 and need[2]:
            gbias[c] = sg
        if need[0]:
            k = scale[c] * invstd[c]
            mg = sg / count if batch else 0.0
            mgx = sgx / count if batch else 0.0
            for q in range(tid, count, THREADS):
                n, p = q // npix, q % npix
                xh = (x[n, c, p] - mean[c]) * invstd[c]
                gx[n, c, p] = k * (gy[n, c, p] - mg - xh * mgx)


def _per_channel(nc: int) -> int:
    return blocks(nc * THREADS)


def bn_fwd(x, scale, bias, mean, invstd, y) -> None:
    """y = (x - mean[c]) * invstd[c] * scale[c] + bias[c]."""
    _bn_fwd[blocks(x.size), THREADS](x, scale, bias, mean, invstd, y)


def channel_scale(g, scale, invstd, out) -> None:
    """out = g * scale[c] * invstd[c]: the input gradient with fixed statistics."""
    _channel_scale[blocks(g.size), THREADS](g, scale, invstd, out)


def invstd_of(var, eps: float, out) -> None:
    """out[c] = 1 / sqrt(var[c] + eps)."""
    _invstd_of[blocks(var.size), THREADS](var, float(eps), out)


def batch_stats(x, eps: float, stats) -> None:
    """stats[0] = per-channel mean of x, stats[1] = 1 / sqrt(biased variance + eps)."""
    _batch_stats[_per_channel(x.shape[1]), THREADS](x, float(eps), stats)


def running_update(stats, eps, momentum, mean_in, var_in, mean_out, var_out) -> None:
    """ONNX running statistics: out = in * momentum + batch * (1 - momentum)."""
    args = (stats, float(eps), float(momentum), mean_in, var_in, mean_out, var_out)
    _running_update[blocks(mean_in.size), THREADS](*args)


def bn_bwd(gy, x, scale, mean, invstd, batch, gx, gscale, gbias, need) -> None:
    """Gradients of bn_fwd: need = (x, scale, bias) flags. With `batch` the statistics are
    the batch's, so gx also flows through the mean and variance."""
    args = (gy, x, scale, mean, invstd, bool(batch), gx, gscale, gbias, tuple(map(bool, need)))
    _bn_bwd[_per_channel(gy.shape[1]), THREADS](*args)
