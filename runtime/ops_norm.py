"""Forward and backward of the normalizations over a tensor's own values:
LayerNormalization (over axis..last; ConvNeXt's channels-last norm after a Transpose),
GroupNormalization (over each group of channels of one sample, with a per-channel scale
and bias, as opset 21 and nn.GroupNorm define it; the loaded graph fuses torch.onnx's
Reshape -> InstanceNormalization -> Reshape -> Mul -> Add form into one, see fusion.py),
InstanceNormalization (a GroupNormalization of one channel per group) and Softmax (one
axis). Each keeps only its input, through the codec, and recomputes its statistics (or
its output) in backward from that; the kernels are `k.norm`."""

from __future__ import annotations

import math

from . import shapes
from .bound import F32, Bound, Saved, Site, Workspace, keep_input, opt, stored_shape
from .kernels import Kernels


def _rows(site: Site) -> tuple[int, int]:
    """(rows, D) of a LayerNormalization input: the trailing axes are contiguous in the
    stored layout too (rank-4 tensors swap only axes 0 and 1, and axis >= 2)."""
    x = site.ins[0]
    d = math.prod(x[shapes.norm_axis(site.node, x) :])
    return math.prod(x) // d, d


def ln_saved(site: Site) -> tuple[Saved, ...]:
    return (keep_input(0),) if site.need[0] or site.need[1] else ()


def ln_workspace(k: Kernels, site: Site) -> Workspace:
    return {"stats": ((2, _rows(site)[0]), F32)}


def _eps(b: Bound) -> float:
    return float(b.site.node.attrs.get("epsilon", 1e-5))


def _flat(a):
    return None if a is None else a.reshape(-1)


def ln_fwd(k: Kernels, b: Bound, training: bool) -> None:
    rd = _rows(b.site)
    x, st = b.x[0].reshape(rd), b.ws["stats"]
    k.norm.layernorm_stats(x, _eps(b), st)
    k.norm.layernorm_fwd(x, _flat(b.x[1]), _flat(opt(b.x, 2)), st, b.y[0].reshape(rd))


def ln_bwd(k: Kernels, b: Bound) -> None:
    rd, st = _rows(b.site), b.ws["stats"]
    gy, gscale, gbias = b.gy.reshape(rd), _flat(b.gx[1]), _flat(opt(b.gx, 2))
    if gscale is None and b.gx[0] is None:
        k.norm.layernorm_bwd_params(gy, gy, st, None, gbias)  # gbias needs no x
        return
    x = b.input(0).reshape(rd)
    k.norm.layernorm_stats(x, _eps(b), st)
    k.norm.layernorm_bwd_params(gy, x, st, gscale, gbias)
    if b.gx[0] is not None:
        k.norm.layernorm_bwd_input(gy, x, _flat(b.x[1]), st, b.gx[0].reshape(rd))


def _lanes(site: Site) -> tuple[int, int, int]:
    """[outer, L, inner] of a Softmax input as stored, L its softmax axis."""
    x = site.ins[0]
    axis = site.node.attrs.get("axis", -1) % len(x)
    if site.cm_in(0) and axis < 2:
        axis = 1 - axis
    s = stored_shape(x)
    return math.prod(s[:axis]), s[axis], math.prod(s[axis + 1 :])


def softmax_saved(site: Site) -> tuple[Saved, ...]:
    return (keep_input(0),) if site.need[0] else ()


def softmax_workspace(k: Kernels, site: Site) -> Workspace:
    return {"y": (_lanes(site), F32)} if site.need[0] else {}


def softmax_fwd(k: Kernels, b: Bound, training: bool) -> None:
    lanes = _lanes(b.site)
    k.norm.softmax_fwd(b.x[0].reshape(lanes), b.y[0].reshape(lanes))


def softmax_bwd(k: Kernels, b: Bound) -> None:
    lanes, y = _lanes(b.site), b.ws["y"]
    k.norm.softmax_fwd(b.input(0).reshape(lanes), y)
    k.norm.softmax_bwd(b.gy.reshape(lanes), y, b.gx[0].reshape(lanes))


def _groups(site: Site) -> int:
    """Groups of a GroupNormalization node; an InstanceNormalization is one per channel."""
    if site.node.op_type == "InstanceNormalization":
        return site.ins[0][1]
    return int(site.node.attrs["num_groups"])


def _planes3(a):
    """A stored [C, N, H, W] or [N, C, L] tensor as [C, N, S] or [N, C, S] (a view)."""
    return None if a is None else a.reshape(a.shape[0], a.shape[1], -1)


def gn_saved(site: Site) -> tuple[Saved, ...]:
    """x, when its own gradient or the scale's is needed (the bias's needs only gy)."""
    return (keep_input(0),) if site.need[0] or (len(site.need) > 1 and site.need[1]) else ()


def gn_workspace(k: Kernels, site: Site) -> Workspace:
    return {"stats": ((2, site.ins[0][0] * _groups(site)), F32)}


def gn_fwd(k: Kernels, b: Bound, training: bool) -> None:
    s, st = b.site, b.ws["stats"]
    x, cm, groups = _planes3(b.x[0]), s.cm_in(0), _groups(s)
    k.norm.groupnorm_stats(x, cm, groups, _eps(b), st)
    scale, bias = _flat(opt(b.x, 1)), _flat(opt(b.x, 2))
    k.norm.groupnorm_fwd(x, cm, groups, scale, bias, st, _planes3(b.y[0]))


def gn_bwd(k: Kernels, b: Bound) -> None:
    s, st = b.site, b.ws["stats"]
    gy, cm, groups = _planes3(b.gy), s.cm_in(0), _groups(s)
    gscale, gbias = _flat(opt(b.gx, 1)), _flat(opt(b.gx, 2))
    if gscale is None and b.gx[0] is None:
        k.norm.groupnorm_bwd_params(gy, gy, cm, groups, st, None, gbias)  # gbias needs no x
        return
    x = _planes3(b.input(0))
    k.norm.groupnorm_stats(x, cm, groups, _eps(b), st)
    k.norm.groupnorm_bwd_params(gy, x, cm, groups, st, gscale, gbias)
    if b.gx[0] is not None:
        scale = _flat(opt(b.x, 1))
        k.norm.groupnorm_bwd_input(gy, x, cm, groups, scale, st, _planes3(b.gx[0]))
