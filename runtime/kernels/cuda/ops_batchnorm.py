"""Forward and backward of BatchNormalization on CUDA, mirroring runtime/ops_batchnorm.py
(which also supplies what the op keeps and its workspace): the inference form with
given statistics and the training form with batch statistics."""

from __future__ import annotations

import numpy as np

from ...bound import Bound, opt
from ...ops_batchnorm import _bn_batch, _channels
from . import bn as bnk
from .conv import channel_sum
from .elementwise import copy


def _running_stats(b: Bound):
    """(mean, 1/sqrt(var + eps)) of the node's mean and variance inputs, in workspace."""
    st = b.ws["stats"]
    copy(b.x[3], st[0])
    bnk.invstd_of(b.x[4], b.site.node.attrs.get("epsilon", 1e-5), st[1])
    return st


def _batch_stats(b: Bound):
    """Where the batch statistics live: the saved bytes when backward keeps them."""
    if "stats" in b.saved:
        return b.saved["stats"].view(np.float32).reshape(2, -1)
    return b.ws["stats"]


def fwd(b: Bound, training: bool) -> None:
    a = b.site.node.attrs
    cm = b.site.cm_in(0)
    x3, y3 = _channels(b.x[0], cm), _channels(b.y[0], cm)
    if not (training and _bn_batch(b.site)):
        st = _running_stats(b)
        bnk.bn_fwd(x3, b.x[1], b.x[2], st[0], st[1], y3)
        return
    st, eps = _batch_stats(b), a.get("epsilon", 1e-5)
    bnk.batch_stats(x3, eps, st)
    bnk.bn_fwd(x3, b.x[1], b.x[2], st[0], st[1], y3)
    if len(b.y) == 3 and b.y[1] is not None and b.y[2] is not None:
        bnk.running_update(st, eps, a.get("momentum", 0.9), b.x[3], b.x[4], b.y[1], b.y[2])


def bwd(b: Bound) -> None:
    batch = _bn_batch(b.site)
    st = _batch_stats(b) if batch else _running_stats(b)
    cm = b.site.cm_in(0)
    gy3 = _channels(b.gy, cm)
    spare = b.ws["bgrads"]
    gscale = opt(b.gx, 1) if opt(b.gx, 1) is not None else spare[0]
    gbias = opt(b.gx, 2) if opt(b.gx, 2) is not None else spare[1]
    gx3 = _channels(b.gx[0], cm) if b.gx[0] is not None else gy3  # gy3: never written then
    need = tuple(opt(b.gx, i) is not None for i in range(3))
    if batch or need[1]:
        x3 = _channels(b.input(0), cm)
        bnk.bn_bwd(gy3, x3, b.x[1], st[0], st[1], batch, gx3, gscale, gbias, need)
        return
    if need[2]:
        channel_sum(gy3, gbias)
    if need[0]:
        bnk.channel_scale(gy3, b.x[1], st[1], gx3)
