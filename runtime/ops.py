"""The op registry: one literal table (`OPS`), ONNX op type -> `OpDef`.

An OpDef says how to infer output shapes (`infer`), how to run forward and backward on
bound buffers (`forward(b, training)`, `backward(b)`), what backward keeps (`saved`) and
which scratch buffers the op needs (`workspace`). `saved` lists, per node, either an input
kept through the session's codec (`keep_input(i)`: the input of a trainable factor, the
operand of a product) or raw bytes the op writes itself (a ReLU/Clip mask of 1 bit per
element, a max-pool argmax, batch statistics). Add, frozen convolutions, average pools,
Flatten and Reshape keep nothing. ONNX `Constant` nodes are folded into initializers when
the graph loads, so they need no entry.

Backward overwrites every gradient it is given (`b.gx[i]`, None where not needed); the
executor sums the gradients of tensors used more than once.

Layout: a rank-4 activation (and its gradient) is stored channel-major, [C, N, H, W],
the NCHW tensor with its first two axes swapped, so that convolutions see the whole
batch as one matrix (see kernels/conv.py). Initializers keep their ONNX layout. Shapes
in a `Site` are the logical (ONNX) ones; `Bound.x`, `y`, `gx`, `gy` hold the stored
arrays, and `logical()` gives the ONNX view of one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import shapes
from .codecs import (
    argmax_decode,
    argmax_encode,
    argmax_nbytes,
    mask_apply,
    mask_encode,
    mask_nbytes,
)
from .graph import Node
from .kernels import bn as bnk
from .kernels.conv import channel_sum, conv2d_bwd_input, conv2d_bwd_weight, conv2d_fwd
from .kernels.elementwise import reduce_to
from .kernels.gemm import gemm_bwd, gemm_fwd, matmul_bwd_operand
from .kernels.loss import softmax_xent_bwd, softmax_xent_fwd
from .kernels.pool import (
    avgpool_bwd,
    avgpool_fwd,
    global_avgpool_bwd,
    global_avgpool_fwd,
    maxpool_bwd,
    maxpool_fwd,
)
from .shapes import Shape, geometry

F32, U8 = np.dtype(np.float32), np.dtype(np.uint8)


@dataclass(frozen=True)
class Saved:
    """One thing backward keeps: input `source` through the codec (key ``in{source}``),
    or `nbytes` raw bytes that the op writes itself."""

    key: str
    source: int | None = None
    nbytes: int = 0


def keep_input(i: int) -> Saved:
    """Keep input i for backward, through the codec."""
    return Saved(f"in{i}", source=i)


def channel_major(shape: Shape | None, persistent: bool = False) -> bool:
    """Whether a tensor of this logical shape is stored [C, N, H, W]: rank-4 activations."""
    return shape is not None and len(shape) == 4 and not persistent


def stored_shape(shape: Shape, persistent: bool = False) -> Shape:
    """The shape a tensor of this logical shape is stored with."""
    return (shape[1], shape[0], *shape[2:]) if channel_major(shape, persistent) else shape


def logical(a: np.ndarray, stored_channel_major: bool) -> np.ndarray:
    """The ONNX (NCHW) view of a stored array."""
    return a.swapaxes(0, 1) if stored_channel_major else a


def _as_channel_major(a: np.ndarray, stored_channel_major: bool) -> np.ndarray:
    """A view of `a` to combine elementwise with rank-4 channel-major arrays: lower ranks
    are broadcast up to 4 (numpy rules) and their first two axes swapped."""
    if stored_channel_major:
        return a
    return a.reshape((1,) * (4 - a.ndim) + a.shape).swapaxes(0, 1)


@dataclass(frozen=True, eq=False)
class Site:
    """A node with its input/output shapes (None for absent inputs), the values of its
    initializer inputs (None elsewhere) and which inputs need a gradient."""

    node: Node
    ins: tuple[Shape | None, ...]
    outs: tuple[Shape, ...]
    consts: tuple[np.ndarray | None, ...]
    need: tuple[bool, ...]

    def cm_in(self, i: int) -> bool:
        """Whether input i is stored channel-major."""
        return channel_major(self.ins[i], i in self.node.persistent)

    def cm_out(self, i: int = 0) -> bool:
        """Whether output i is stored channel-major."""
        return channel_major(self.outs[i])


@dataclass(eq=False)
class Bound:
    """A node bound to its buffers: inputs x, outputs y, gradient targets gx (None where
    not needed), output gradient gy, saved tensors and workspace, by key."""

    site: Site
    x: list[np.ndarray | None]
    y: list[np.ndarray | None]
    gx: list[np.ndarray | None] = field(default_factory=list)
    gy: np.ndarray | None = None
    saved: dict[str, np.ndarray] = field(default_factory=dict)
    ws: dict[str, np.ndarray] = field(default_factory=dict)

    def input(self, i: int) -> np.ndarray | None:
        """Input i as forward saw it: its decoded copy when backward kept one."""
        return self.saved.get(f"in{i}", _opt(self.x, i))

    def lx(self, i: int) -> np.ndarray:
        """Logical (ONNX) view of input i."""
        return logical(self.x[i], self.site.cm_in(i))

    def ly(self, i: int = 0) -> np.ndarray:
        """Logical view of output i."""
        return logical(self.y[i], self.site.cm_out(i))

    def lgx(self, i: int) -> np.ndarray:
        """Logical view of the gradient of input i."""
        return logical(self.gx[i], self.site.cm_in(i))

    def lgy(self) -> np.ndarray:
        """Logical view of the gradient of output 0."""
        return logical(self.gy, self.site.cm_out(0))

    def like_output(self, i: int, a: np.ndarray) -> np.ndarray:
        """`a`, input i or its gradient, viewed to combine elementwise with output 0."""
        if len(self.site.outs[0]) != 4:
            return a
        return _as_channel_major(a, self.site.cm_in(i))


Workspace = dict[str, tuple[Shape, np.dtype]]


def _nothing(site: Site) -> tuple[Saved, ...]:
    return ()


def _no_workspace(site: Site) -> Workspace:
    return {}


@dataclass(frozen=True)
class OpDef:
    """How one ONNX op type infers shapes, runs forward and backward, and what it keeps."""

    infer: Callable[[Node, list, list], list[Shape]]
    forward: Callable[[Bound, bool], None]
    backward: Callable[[Bound], None]
    saved: Callable[[Site], tuple[Saved, ...]] = _nothing
    workspace: Callable[[Site], Workspace] = _no_workspace


def _opt(seq: list, i: int):
    return seq[i] if i < len(seq) else None


def _keep_operands(site: Site) -> tuple[Saved, ...]:
    """Inputs 0 and 1 each keep what the other's gradient needs, unless an initializer."""
    return tuple(
        keep_input(i)
        for i, other in ((0, 1), (1, 0))
        if site.need[other] and i not in site.node.persistent
    )


def _keep_mask(site: Site) -> tuple[Saved, ...]:
    return (Saved("mask", nbytes=mask_nbytes(site.ins[0])),)


# Conv ------------------------------------------------------------------------------------


def _conv_geom(site: Site):
    return geometry(site.node, site.ins[0], site.ins[1][2:])


def _conv_ws(site: Site) -> Workspace:
    x = site.ins[0]
    g = _conv_geom(site)
    if g.depthwise(x[1]) or (g.pointwise and g.groups == 1):
        return {}
    n, _, ho, wo = site.outs[0]
    return {"cols": ((x[1] * g.kh * g.kw, n * ho * wo), F32)}


def _conv_fwd(b: Bound, training: bool) -> None:
    conv2d_fwd(b.x[0], b.x[1], _opt(b.x, 2), b.y[0], b.ws.get("cols"), _conv_geom(b.site))


def _conv_bwd(b: Bound) -> None:
    g, gb = _conv_geom(b.site), _opt(b.gx, 2)
    if b.gx[1] is not None or gb is not None:
        conv2d_bwd_weight(b.gy, b.input(0), b.gx[1], gb, b.ws.get("cols"), g)
    if b.gx[0] is not None:
        conv2d_bwd_input(b.gy, b.input(1), b.gx[0], b.ws.get("cols"), g)


# Gemm, MatMul ----------------------------------------------------------------------------


def _gemm_args(node: Node) -> tuple[float, float, bool, bool]:
    a = node.attrs
    return a.get("alpha", 1.0), a.get("beta", 1.0), bool(a.get("transA")), bool(a.get("transB"))


def _gemm_fwd(b: Bound, training: bool) -> None:
    gemm_fwd(b.x[0], b.x[1], _opt(b.x, 2), b.y[0], *_gemm_args(b.site.node))


def _gemm_bwd(b: Bound) -> None:
    args = _gemm_args(b.site.node)
    gemm_bwd(b.gy, b.input(0), b.input(1), b.gx[0], b.gx[1], _opt(b.gx, 2), *args)


def _matmul_ws(site: Site) -> Workspace:
    out = site.outs[0]
    ws: Workspace = {}
    for i, x in enumerate(site.ins[:2]):
        full = (*out[:-2], *x[-2:])
        if site.need[i] and x != full:
            ws[f"tmp{i}"] = (full, F32)
    return ws


def _matmul_fwd(b: Bound, training: bool) -> None:
    np.matmul(b.lx(0), b.lx(1), out=b.ly())


def _matmul_bwd(b: Bound) -> None:
    s = b.site
    for i, left in ((0, True), (1, False)):
        if b.gx[i] is not None:
            other = logical(b.input(1 - i), s.cm_in(1 - i))
            tmp = b.ws.get(f"tmp{i}")
            matmul_bwd_operand(b.lgy(), other, b.lgx(i), tmp, left=left)


# Add, Mul, Relu, Clip --------------------------------------------------------------------


def _add_fwd(b: Bound, training: bool) -> None:
    np.add(b.like_output(0, b.x[0]), b.like_output(1, b.x[1]), out=b.y[0])


def _add_bwd(b: Bound) -> None:
    for i, g in enumerate(b.gx):
        if g is not None:
            reduce_to(b.gy, b.like_output(i, g))


def _mul_ws(site: Site) -> Workspace:
    broadcast = any(n and x != site.outs[0] for n, x in zip(site.need, site.ins, strict=True))
    return {"prod": (stored_shape(site.outs[0]), F32)} if broadcast else {}


def _mul_fwd(b: Bound, training: bool) -> None:
    np.multiply(b.like_output(0, b.x[0]), b.like_output(1, b.x[1]), out=b.y[0])


def _mul_bwd(b: Bound) -> None:
    for i, other in ((0, 1), (1, 0)):
        if b.gx[i] is None:
            continue
        g = b.like_output(i, b.gx[i])
        prod = g if g.shape == b.gy.shape else b.ws["prod"]
        np.multiply(b.gy, b.like_output(other, b.input(other)), out=prod)
        if prod is not g:
            reduce_to(prod, g)


def _relu_fwd(b: Bound, training: bool) -> None:
    np.maximum(b.x[0], np.float32(0.0), out=b.y[0])
    if training and "mask" in b.saved:
        mask_encode(b.x[0], b.saved["mask"])


def _clip_bounds(site: Site) -> tuple[float, float]:
    lo = shapes.const(site.node, site.consts, 1, "min")
    hi = shapes.const(site.node, site.consts, 2, "max")
    return (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))


def _clip_fwd(b: Bound, training: bool) -> None:
    lo, hi = _clip_bounds(b.site)
    np.clip(b.x[0], np.float32(lo), np.float32(hi), out=b.y[0])
    if training and "mask" in b.saved:
        mask_encode(b.x[0], b.saved["mask"], lo, hi)


def _mask_bwd(b: Bound) -> None:
    mask_apply(b.saved["mask"], b.gy, b.gx[0])


# Pooling ---------------------------------------------------------------------------------


def _pool_geom(site: Site):
    return geometry(site.node, site.ins[0], (1, 1))


def _maxpool_saved(site: Site) -> tuple[Saved, ...]:
    g = _pool_geom(site)
    return (Saved("argmax", nbytes=argmax_nbytes(site.outs[0], (g.kh, g.kw))),)


def _maxpool_ws(site: Site) -> Workspace:
    return {"arg": (stored_shape(site.outs[0]), U8)}


def _maxpool_fwd(b: Bound, training: bool) -> None:
    g, arg = _pool_geom(b.site), b.ws["arg"]
    maxpool_fwd(b.x[0], b.y[0], arg, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw)
    if training and "argmax" in b.saved:
        argmax_encode(arg, b.saved["argmax"], (g.kh, g.kw))


def _maxpool_bwd(b: Bound) -> None:
    g, arg = _pool_geom(b.site), b.ws["arg"]
    argmax_decode(b.saved["argmax"], arg, (g.kh, g.kw))
    maxpool_bwd(b.gy, arg, b.gx[0], g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw)


def _avgpool_args(site: Site) -> tuple:
    g = _pool_geom(site)
    include = bool(site.node.attrs.get("count_include_pad", 0))
    return g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.pb, g.pr, include


def _avgpool_fwd(b: Bound, training: bool) -> None:
    avgpool_fwd(b.x[0], b.y[0], *_avgpool_args(b.site))


def _avgpool_bwd(b: Bound) -> None:
    avgpool_bwd(b.gy, b.gx[0], *_avgpool_args(b.site))


def _gap_fwd(b: Bound, training: bool) -> None:
    global_avgpool_fwd(b.x[0], b.y[0])


def _gap_bwd(b: Bound) -> None:
    global_avgpool_bwd(b.gy, b.gx[0])


# Data movement: Flatten, Reshape, Identity, Dropout, Pad, Slice, Concat ------------------


def _copy_reshaped(dst: np.ndarray, src: np.ndarray) -> None:
    """dst = src reshaped (logical views), reshaping whichever side is contiguous."""
    if dst.shape == src.shape:
        np.copyto(dst, src)
    elif dst.flags.c_contiguous:
        np.copyto(dst.reshape(src.shape), src)
    else:
        np.copyto(dst, src.reshape(dst.shape))


def _copy_fwd(b: Bound, training: bool) -> None:
    _copy_reshaped(b.ly(), b.lx(0))


def _copy_bwd(b: Bound) -> None:
    _copy_reshaped(b.lgx(0), b.lgy())


def _pad_fwd(b: Bound, training: bool) -> None:
    _, src, dst = shapes.pad_slices(b.site.node, b.site.ins[0], b.site.consts)
    value = shapes.const(b.site.node, b.site.consts, 2, "constant_value")
    b.y[0].fill(0.0 if value is None else float(value))
    np.copyto(b.ly()[dst], b.lx(0)[src])


def _pad_bwd(b: Bound) -> None:
    _, src, dst = shapes.pad_slices(b.site.node, b.site.ins[0], b.site.consts)
    b.gx[0].fill(0.0)
    np.copyto(b.lgx(0)[src], b.lgy()[dst])


def _slice_fwd(b: Bound, training: bool) -> None:
    _, index = shapes.slice_index(b.site.node, b.site.ins[0], b.site.consts)
    np.copyto(b.ly(), b.lx(0)[index])


def _slice_bwd(b: Bound) -> None:
    _, index = shapes.slice_index(b.site.node, b.site.ins[0], b.site.consts)
    b.gx[0].fill(0.0)
    np.copyto(b.lgx(0)[index], b.lgy())


def _concat_parts(b: Bound):
    axis = b.site.node.attrs["axis"] % len(b.site.outs[0])
    start = 0
    for i, shape in enumerate(b.site.ins):
        yield i, (slice(None),) * axis + (slice(start, start + shape[axis]),)
        start += shape[axis]


def _concat_fwd(b: Bound, training: bool) -> None:
    for i, index in _concat_parts(b):
        np.copyto(b.ly()[index], b.lx(i))


def _concat_bwd(b: Bound) -> None:
    for i, index in _concat_parts(b):
        if b.gx[i] is not None:
            np.copyto(b.lgx(i), b.lgy()[index])


# BatchNormalization ----------------------------------------------------------------------


def _bn_batch(site: Site) -> bool:
    return bool(site.node.attrs.get("training_mode", 0))


def _bn_saved(site: Site) -> tuple[Saved, ...]:
    if _bn_batch(site):
        return keep_input(0), Saved("stats", nbytes=8 * site.ins[0][1])
    return (keep_input(0),) if site.need[1] else ()


def _bn_ws(site: Site) -> Workspace:
    return {"stats": ((2, site.ins[0][1]), F32), "bgrads": ((2, site.ins[0][1]), F32)}


def _channels(a: np.ndarray, stored_channel_major: bool) -> np.ndarray:
    """[A, C, B] view of a stored tensor whose channels are logical axis 1."""
    if stored_channel_major:
        return a.reshape(1, a.shape[0], -1)
    return a.reshape(a.shape[0], a.shape[1], -1)


def _running_stats(b: Bound) -> np.ndarray:
    """(mean, 1/sqrt(var + eps)) of the node's mean and variance inputs, in workspace."""
    st = b.ws["stats"]
    np.copyto(st[0], b.x[3])
    bnk.invstd_of(b.x[4], b.site.node.attrs.get("epsilon", 1e-5), st[1])
    return st


def _bn_fwd(b: Bound, training: bool) -> None:
    a = b.site.node.attrs
    cm = b.site.cm_in(0)
    x3, y3 = _channels(b.x[0], cm), _channels(b.y[0], cm)
    if not (training and _bn_batch(b.site)):
        st = _running_stats(b)
        bnk.bn_fwd(x3, b.x[1], b.x[2], st[0], st[1], y3)
        return
    st = b.saved["stats"].view(np.float32).reshape(2, -1) if "stats" in b.saved else b.ws["stats"]
    eps = a.get("epsilon", 1e-5)
    bnk.batch_stats(x3, eps, st)
    bnk.bn_fwd(x3, b.x[1], b.x[2], st[0], st[1], y3)
    if len(b.y) == 3 and b.y[1] is not None and b.y[2] is not None:
        bnk.running_update(st, eps, a.get("momentum", 0.9), b.x[3], b.x[4], b.y[1], b.y[2])


def _bn_bwd(b: Bound) -> None:
    batch = _bn_batch(b.site)
    st = b.saved["stats"].view(np.float32).reshape(2, -1) if batch else _running_stats(b)
    cm = b.site.cm_in(0)
    gy3 = _channels(b.gy, cm)
    spare = b.ws["bgrads"]
    gscale = _opt(b.gx, 1) if _opt(b.gx, 1) is not None else spare[0]
    gbias = _opt(b.gx, 2) if _opt(b.gx, 2) is not None else spare[1]
    gx3 = _channels(b.gx[0], cm) if b.gx[0] is not None else gy3  # gy3: never written then
    need = tuple(_opt(b.gx, i) is not None for i in range(3))
    if batch or need[1]:
        x3 = _channels(b.input(0), cm)
        bnk.bn_bwd(gy3, x3, b.x[1], st[0], st[1], batch, gx3, gscale, gbias, need)
        return
    if need[2]:
        channel_sum(gy3, gbias)
    if need[0]:
        bnk.channel_scale(gy3, b.x[1], st[1], gx3)


# Loss ------------------------------------------------------------------------------------


def _xent_saved(site: Site) -> tuple[Saved, ...]:
    return (Saved("logp", nbytes=4 * math.prod(site.ins[0])),)


def _xent_ws(site: Site) -> Workspace:
    return {"logp": (site.ins[0], F32), "losses": (site.ins[0][:1], F32)}


def _logp(b: Bound) -> np.ndarray:
    if "logp" in b.saved:
        return b.saved["logp"].view(np.float32).reshape(b.site.ins[0])
    return b.ws["logp"]


def _xent_scale(b: Bound) -> float:
    mean = b.site.node.attrs.get("reduction", "mean") == "mean"
    return 1.0 / b.site.ins[0][0] if mean else 1.0


def _xent_fwd(b: Bound, training: bool) -> None:
    losses = b.ws["losses"]
    smoothing = float(b.site.node.attrs.get("label_smoothing", 0.0))
    softmax_xent_fwd(b.x[0], b.x[1], smoothing, _logp(b), losses)
    b.y[0][...] = np.add.reduce(losses, dtype=np.float64) * _xent_scale(b)


def _xent_bwd(b: Bound) -> None:
    smoothing = float(b.site.node.attrs.get("label_smoothing", 0.0))
    scale = float(b.gy) * _xent_scale(b)
    softmax_xent_bwd(_logp(b), b.x[1], smoothing, scale, b.gx[0])


# The table -------------------------------------------------------------------------------

OPS: dict[str, OpDef] = {
    "Conv": OpDef(shapes.conv, _conv_fwd, _conv_bwd, _keep_operands, _conv_ws),
    "Gemm": OpDef(shapes.gemm, _gemm_fwd, _gemm_bwd, _keep_operands),
    "MatMul": OpDef(shapes.matmul, _matmul_fwd, _matmul_bwd, _keep_operands, _matmul_ws),
    "Add": OpDef(shapes.broadcast, _add_fwd, _add_bwd),
    "Mul": OpDef(shapes.broadcast, _mul_fwd, _mul_bwd, _keep_operands, _mul_ws),
    "Relu": OpDef(shapes.same, _relu_fwd, _mask_bwd, _keep_mask),
    "Clip": OpDef(shapes.same, _clip_fwd, _mask_bwd, _keep_mask),
    "MaxPool": OpDef(shapes.pool, _maxpool_fwd, _maxpool_bwd, _maxpool_saved, _maxpool_ws),
    "AveragePool": OpDef(shapes.pool, _avgpool_fwd, _avgpool_bwd),
    "GlobalAveragePool": OpDef(shapes.global_pool, _gap_fwd, _gap_bwd),
    "Flatten": OpDef(shapes.flatten, _copy_fwd, _copy_bwd),
    "Reshape": OpDef(shapes.reshape, _copy_fwd, _copy_bwd),
    "Identity": OpDef(shapes.same, _copy_fwd, _copy_bwd),
    "Dropout": OpDef(shapes.same, _copy_fwd, _copy_bwd),
    "Pad": OpDef(shapes.pad, _pad_fwd, _pad_bwd),
    "Slice": OpDef(shapes.slice_, _slice_fwd, _slice_bwd),
    "Concat": OpDef(shapes.concat, _concat_fwd, _concat_bwd),
    "BatchNormalization": OpDef(shapes.batchnorm, _bn_fwd, _bn_bwd, _bn_saved, _bn_ws),
    "SoftmaxCrossEntropyLoss": OpDef(shapes.xent, _xent_fwd, _xent_bwd, _xent_saved, _xent_ws),
}


def lookup(node: Node) -> OpDef:
    """The OpDef of `node`, or UnsupportedOpError naming its op type and name."""
    op = OPS.get(node.op_type)
    if op is None:
        raise shapes.unsupported(
            node, f"op type {node.op_type} is not supported; supported: {', '.join(OPS)}"
        )
    return op
