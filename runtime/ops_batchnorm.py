"""Forward and backward of BatchNormalization: the inference form (given statistics;
its scale and bias may train) and the training form (training_mode=1: batch statistics,
kept for backward with the input; optional running-statistics outputs), on the kernels
of `k.bn` with `k.conv.channel_sum`."""

from __future__ import annotations

import numpy as np

from .bound import F32, Bound, Saved, Site, Workspace, keep_input, opt
from .kernels import Kernels


def _bn_batch(site: Site) -> bool:
    return bool(site.node.attrs.get("training_mode", 0))


def saved(site: Site) -> tuple[Saved, ...]:
    if _bn_batch(site):
        return keep_input(0), Saved("stats", nbytes=8 * site.ins[0][1])
    return (keep_input(0),) if site.need[1] else ()


def workspace(k: Kernels, site: Site) -> Workspace:
    return {"stats": ((2, site.ins[0][1]), F32), "bgrads": ((2, site.ins[0][1]), F32)}


def _channels(a, stored_channel_major: bool):
    """[A, C, B] view of a stored tensor whose channels are logical axis 1."""
    if stored_channel_major:
        return a.reshape(1, a.shape[0], -1)
    return a.reshape(a.shape[0], a.shape[1], -1)


def _running_stats(k: Kernels, b: Bound):
    """(mean, 1/sqrt(var + eps)) of the node's mean and variance inputs, in workspace."""
    st = b.ws["stats"]
    k.elementwise.copy(b.x[3], st[0])
    k.bn.invstd_of(b.x[4], b.site.node.attrs.get("epsilon", 1e-5), st[1])
    return st


def _batch_stats(b: Bound):
    """Where the batch statistics live: the saved bytes when backward keeps them."""
    if "stats" in b.saved:
        return b.saved["stats"].view(np.float32).reshape(2, -1)
    return b.ws["stats"]


def fwd(k: Kernels, b: Bound, training: bool) -> None:
    a = b.site.node.attrs
    cm = b.site.cm_in(0)
    x3, y3 = _channels(b.x[0], cm), _channels(b.y[0], cm)
    if not (training and _bn_batch(b.site)):
        st = _running_stats(k, b)
        k.bn.bn_fwd(x3, b.x[1], b.x[2], st[0], st[1], y3)
        return
    st, eps = _batch_stats(b), a.get("epsilon", 1e-5)
    k.bn.batch_stats(x3, eps, st)
    k.bn.bn_fwd(x3, b.x[1], b.x[2], st[0], st[1], y3)
    if len(b.y) == 3 and b.y[1] is not None and b.y[2] is not None:
        k.bn.running_update(st, eps, a.get("momentum", 0.9), b.x[3], b.x[4], b.y[1], b.y[2])


def bwd(k: Kernels, b: Bound) -> None:
    batch = _bn_batch(b.site)
    st = _batch_stats(b) if batch else _running_stats(k, b)
    cm = b.site.cm_in(0)
    gy3 = _channels(b.gy, cm)
    spare = b.ws["bgrads"]
    gscale = opt(b.gx, 1) if opt(b.gx, 1) is not None else spare[0]
    gbias = opt(b.gx, 2) if opt(b.gx, 2) is not None else spare[1]
    gx3 = _channels(b.gx[0], cm) if b.gx[0] is not None else gy3  # gy3: never written then
    need = tuple(opt(b.gx, i) is not None for i in range(3))
    if batch or need[1]:
        x3 = _channels(b.input(0), cm)
        k.bn.bn_bwd(gy3, x3, b.x[1], st[0], st[1], batch, gx3, gscale, gbias, need)
        return
    if need[2]:
        k.conv.channel_sum(gy3, gbias)
    if need[0]:
        k.bn.channel_scale(gy3, b.x[1], st[1], gx3)
