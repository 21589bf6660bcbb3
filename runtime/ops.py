"""The op registry: one literal table (`OPS`), ONNX op type -> `OpDef`, for every backend.

An OpDef says how to infer output shapes (`infer`), how to run forward and backward on
bound buffers (`forward(k, b, training)`, `backward(k, b)`), what backward keeps (`saved`)
and which scratch buffers the op needs (`workspace(k, site)`). `k` is the backend's
kernel table (kernels.Kernels: `k.conv.conv2d_fwd(...)`), so this glue is written once
and runs the kernels of whichever device the session bound (runtime/device.py); a
backend's kernel modules have the same functions with the same signatures, and arrays
travel as stored with their channel-major flags (`Site.cm_in`, `cm_out`). `saved` lists,
per node, either an input kept through the session's codec (`keep_input(i)`: the input
of a trainable factor, the operand of a product) or raw bytes the op writes itself (a
ReLU/Clip mask of 1 bit per element, a max-pool argmax, batch statistics). Add, frozen
convolutions, average pools, Flatten, Reshape, Transpose, Split, Squeeze/Unsqueeze and
ReduceMean keep nothing; LayerNormalization, GroupNormalization, InstanceNormalization and
Softmax keep their input and recompute statistics and output from it. 1-D (N, C, L)
Conv/pool nodes run as their 2-D twins over H=1: pools and BatchNormalization on views,
Conv on channel-major copies in its workspace (rank-3 tensors are stored as they are,
rank-4 channel-major). ONNX `Constant` nodes are folded into initializers when the graph
loads, so they need no entry.

Backward overwrites every gradient it is given (`b.gx[i]`, None where not needed); the
executor sums the gradients of tensors used more than once. Buffers and their layout are
described in bound.py; data movement lives in ops_movement.py, BatchNormalization in
ops_batchnorm.py, the fused delta convolution in ops_delta.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from . import ops_batchnorm as bn
from . import ops_delta as delta
from . import ops_movement as mv
from . import ops_norm as norm
from . import shapes
from .bound import F32, U8, Bound, Saved, Site, Workspace, keep_input, opt, stored_shape
from .codecs import argmax_nbytes, mask_nbytes
from .graph import Node
from .kernels import Kernels
from .kernels import activation_math as act
from .kernels.elementwise import ADD, DIV, MUL, SUB
from .shapes import Shape, geometry


def _nothing(site: Site) -> tuple[Saved, ...]:
    return ()


def _no_workspace(k: Kernels, site: Site) -> Workspace:
    return {}


@dataclass(frozen=True)
class OpDef:
    """How one ONNX op type infers shapes, runs forward and backward, and what it keeps."""

    infer: Callable[[Node, list, list], list[Shape]]
    forward: Callable[[Kernels, Bound, bool], None]
    backward: Callable[[Kernels, Bound], None]
    saved: Callable[[Site], tuple[Saved, ...]] = _nothing
    workspace: Callable[[Kernels, Site], Workspace] = _no_workspace
    passthrough: tuple[int, ...] = ()  # inputs whose gradient is gy when shapes match


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


def _planes(shape: Shape) -> Shape:
    """The stored shape of an [N, C, L] tensor's 2-D twin [N, C, 1, L], channel-major."""
    return (shape[1], shape[0], 1, shape[2])


def _conv_ws(k: Kernels, site: Site) -> Workspace:
    x, y = site.ins[0], site.outs[0]
    if len(x) == 3:  # 1-D: the 2-D convolution over H=1 of channel-major copies
        planes = {"x4": (_planes(x), F32), "y4": (_planes(y), F32)}
        x, y = (x[0], x[1], 1, x[2]), (y[0], y[1], 1, y[2])
    else:
        planes = {}
    shapes_ = k.conv.conv_workspace(_conv_geom(site), x, y)
    return {**{key: (shape, F32) for key, shape in shapes_.items()}, **planes}


def _to_planes(k: Kernels, a, planes) -> None:
    """planes ([C, N, 1, L]) = a ([N, C, L]) in the channel-major layout of its twin."""
    k.movement.permute_copy(
        a, False, planes.reshape(planes.shape[0], -1, a.shape[2]), False, (1, 0, 2)
    )


def _from_planes(k: Kernels, planes, a) -> None:
    k.movement.permute_copy(
        planes.reshape(planes.shape[0], -1, a.shape[2]), False, a, False, (1, 0, 2)
    )


def _w4(w):
    """A conv weight as its 2-D twin's: [M, C, k] -> [M, C, 1, k]."""
    return None if w is None or w.ndim == 4 else w.reshape(w.shape[0], w.shape[1], 1, w.shape[2])


def _conv_fwd(k: Kernels, b: Bound, training: bool) -> None:
    g, bias = _conv_geom(b.site), opt(b.x, 2)
    if b.x[0].ndim == 4:
        k.conv.conv2d_fwd(b.x[0], b.x[1], bias, b.y[0], b.ws, g)
        return
    x4, y4 = b.ws["x4"], b.ws["y4"]
    _to_planes(k, b.x[0], x4)
    k.conv.conv2d_fwd(x4, _w4(b.x[1]), bias, y4, b.ws, g)
    _from_planes(k, y4, b.y[0])


def _conv_bwd(k: Kernels, b: Bound) -> None:
    g, gb, gw, gx = _conv_geom(b.site), opt(b.gx, 2), b.gx[1], b.gx[0]
    one_d = b.gy.ndim == 3
    gy = b.gy
    if one_d:
        gy, gw = b.ws["y4"], _w4(gw)
        _to_planes(k, b.gy, gy)
    if gw is not None or gb is not None:
        x = b.input(0)
        if one_d:
            _to_planes(k, x, b.ws["x4"])
            x = b.ws["x4"]
        k.conv.conv2d_bwd_weight(gy, x, gw, gb, b.ws, g)
    if gx is not None:
        w = _w4(b.input(1)) if one_d else b.input(1)
        k.conv.conv2d_bwd_input(gy, w, b.ws["x4"] if one_d else gx, b.ws, g)
        if one_d:
            _from_planes(k, b.ws["x4"], gx)


# Gemm, MatMul ----------------------------------------------------------------------------


def _gemm_args(node: Node) -> tuple[float, float, bool, bool]:
    a = node.attrs
    return a.get("alpha", 1.0), a.get("beta", 1.0), bool(a.get("transA")), bool(a.get("transB"))


def _gemm_fwd(k: Kernels, b: Bound, training: bool) -> None:
    k.gemm.gemm_fwd(b.x[0], b.x[1], opt(b.x, 2), b.y[0], *_gemm_args(b.site.node))


def _gemm_bwd(k: Kernels, b: Bound) -> None:
    args = _gemm_args(b.site.node)
    k.gemm.gemm_bwd(b.gy, b.input(0), b.input(1), b.gx[0], b.gx[1], opt(b.gx, 2), *args)


def _matmul_ws(k: Kernels, site: Site) -> Workspace:
    out = site.outs[0]
    ws: Workspace = {}
    for i, x in enumerate(site.ins[:2]):
        full = (*out[:-2], *x[-2:])
        if site.need[i] and x != full:
            ws[f"tmp{i}"] = (full, F32)
    return ws


def _matmul_fwd(k: Kernels, b: Bound, training: bool) -> None:
    s = b.site
    k.gemm.matmul_fwd(b.x[0], s.cm_in(0), b.x[1], s.cm_in(1), b.y[0], s.cm_out(0))


def _matmul_bwd(k: Kernels, b: Bound) -> None:
    s = b.site
    for i, left in ((0, True), (1, False)):
        if b.gx[i] is not None:
            other, tmp = b.input(1 - i), b.ws.get(f"tmp{i}")
            args = (b.gy, s.cm_out(0), other, s.cm_in(1 - i), b.gx[i], s.cm_in(i), tmp)
            k.gemm.matmul_bwd_operand(*args, left)


# Add, Sub, Mul, Div, Relu, Clip ----------------------------------------------------------


def _binary(op: int) -> Callable[[Kernels, Bound, bool], None]:
    def fwd(k: Kernels, b: Bound, training: bool) -> None:
        s = b.site
        k.elementwise.broadcast_op(b.x[0], s.cm_in(0), b.x[1], s.cm_in(1), b.y[0], s.cm_out(0), op)

    return fwd


def _add_bwd(k: Kernels, b: Bound) -> None:
    for i, g in enumerate(b.gx):
        if g is not None and g is not b.gy:  # gy itself: the executor shared the buffer
            k.elementwise.reduce_to(b.gy, g, b.site.cm_out(0), b.site.cm_in(i))
        if g is not None and i == 1 and b.site.node.op_type == "Sub":
            k.elementwise.scale(g, -1.0)


def _div_saved(site: Site) -> tuple[Saved, ...]:
    """a / b: both gradients need b, b's needs a too (initializers are not kept)."""
    keep = (site.need[1], site.need[0] or site.need[1])
    return tuple(keep_input(i) for i in (0, 1) if keep[i] and i not in site.node.persistent)


def _div_ws(k: Kernels, site: Site) -> Workspace:
    if site.need[1] or (site.need[0] and site.ins[0] != site.outs[0]):
        return {"q": (stored_shape(site.outs[0]), F32), **_mul_ws(k, site)}
    return {}


def _div_bwd(k: Kernels, b: Bound) -> None:
    """ga = sum(gy / b), gb = -sum(gy / b / b * a), over the broadcast axes."""
    s, e = b.site, k.elementwise
    den, sd, so = b.input(1), s.cm_in(1), s.cm_out(0)
    q = b.ws.get("q", b.gx[0])
    e.broadcast_op(b.gy, so, den, sd, q, so, DIV)
    if b.gx[0] is not None and q is not b.gx[0]:
        e.reduce_to(q, b.gx[0], so, s.cm_in(0))
    if b.gx[1] is not None:
        e.broadcast_op(q, so, den, sd, q, so, DIV)
        e.reduce_to(q, b.gx[1], so, sd, b.input(0), s.cm_in(0), b.ws)
        e.scale(b.gx[1], -1.0)


def _mul_ws(k: Kernels, site: Site) -> Workspace:
    broadcast = any(n and x != site.outs[0] for n, x in zip(site.need, site.ins, strict=True))
    if not broadcast:
        return {}
    scratch = k.elementwise.product_workspace(stored_shape(site.outs[0]))
    return {key: (shape, F32) for key, shape in scratch.items()}


def _mul_bwd(k: Kernels, b: Bound) -> None:
    s = b.site
    for i, other in ((0, 1), (1, 0)):
        if b.gx[i] is not None:
            o, o_swap = b.input(other), s.cm_in(other)
            k.elementwise.reduce_to(b.gy, b.gx[i], s.cm_out(0), s.cm_in(i), o, o_swap, b.ws)


def _clip_fwd(k: Kernels, b: Bound, training: bool) -> None:
    """Relu, and Clip with bounds from constant inputs or (opset < 11) attributes."""
    s = b.site
    lo, hi = (0.0, math.inf) if s.node.op_type == "Relu" else shapes.clip_bounds(s.node, s.consts)
    x, y = b.x[0].reshape(-1), b.y[0].reshape(-1)
    if training and "mask" in b.saved:
        k.elementwise.clip_mask_fwd(x, y, b.saved["mask"], lo, hi)
    else:
        k.elementwise.clip(x, y, lo, hi)


def _mask_bwd(k: Kernels, b: Bound) -> None:
    k.elementwise.mask_bwd(b.saved["mask"], b.gy.reshape(-1), b.gx[0].reshape(-1))


# Pointwise activations ---------------------------------------------------------------------

# op type -> (activation_math kind, default alpha, default beta)
_ACTIVATIONS = {
    "Sigmoid": (act.SIGMOID, 0.0, 0.0),
    "Tanh": (act.TANH, 0.0, 0.0),
    "HardSigmoid": (act.HARD_SIGMOID, 0.2, 0.5),
    "HardSwish": (act.HARD_SWISH, 0.0, 0.0),
    "LeakyRelu": (act.LEAKY_RELU, 0.01, 0.0),
    "Elu": (act.ELU, 1.0, 0.0),
    "Gelu": (act.GELU, 0.0, 0.0),
    "Swish": (act.SWISH, 1.0, 0.0),
    "Erf": (act.ERF, 0.0, 0.0),
}


def _act_args(node: Node) -> tuple[int, float, float]:
    kind, alpha, beta = _ACTIVATIONS[node.op_type]
    if kind == act.GELU and node.attrs.get("approximate", "none") == "tanh":
        kind = act.GELU_TANH
    return kind, float(node.attrs.get("alpha", alpha)), float(node.attrs.get("beta", beta))


def _act_fwd(k: Kernels, b: Bound, training: bool) -> None:
    x, y = b.x[0].reshape(-1), b.y[0].reshape(-1)
    if training and "mask" in b.saved:
        k.activation.activation_mask_fwd(x, y, b.saved["mask"], *_act_args(b.site.node))
    else:
        k.activation.activation_fwd(x, y, *_act_args(b.site.node))


def _act_bwd(k: Kernels, b: Bound) -> None:
    x, gy, gx = b.input(0).reshape(-1), b.gy.reshape(-1), b.gx[0].reshape(-1)
    k.activation.activation_bwd(x, gy, gx, *_act_args(b.site.node))


def _slopes_bwd(k: Kernels, b: Bound) -> None:
    """The piecewise-linear ones from their mask: slope alpha inside for HardSigmoid (0
    outside), 1 inside for LeakyRelu (alpha outside)."""
    _, alpha, _ = _act_args(b.site.node)
    on, off = (alpha, 0.0) if b.site.node.op_type == "HardSigmoid" else (1.0, alpha)
    k.activation.mask_select_bwd(b.saved["mask"], b.gy.reshape(-1), b.gx[0].reshape(-1), on, off)


def _keep_x(site: Site) -> tuple[Saved, ...]:
    return (keep_input(0),)


def _prelu_inner(site: Site) -> int:
    """Elements per channel run of the stored input (channel-major: all of N, H, W)."""
    x = site.ins[0]
    return math.prod(x) // x[1] if site.cm_in(0) else math.prod(x[2:])


def _prelu_fwd(k: Kernels, b: Bound, training: bool) -> None:
    x, y = b.x[0].reshape(-1), b.y[0].reshape(-1)
    k.activation.prelu_fwd(x, b.x[1], y, _prelu_inner(b.site))


def _prelu_bwd(k: Kernels, b: Bound) -> None:
    gx = None if b.gx[0] is None else b.gx[0].reshape(-1)
    args = (b.input(0).reshape(-1), b.x[1], b.gy.reshape(-1), gx, b.gx[1])
    k.activation.prelu_bwd(*args, _prelu_inner(b.site))


# Pooling ---------------------------------------------------------------------------------


def _pool_geom(site: Site):
    return geometry(site.node, site.ins[0], (1, 1))


def _maxpool_saved(site: Site) -> tuple[Saved, ...]:
    g = _pool_geom(site)
    return (Saved("argmax", nbytes=argmax_nbytes(site.outs[0], (g.kh, g.kw))),)


def _maxpool_ws(k: Kernels, site: Site) -> Workspace:
    return {"arg": (stored_shape(site.outs[0]), U8)}


def _as4(a):
    """A pooled tensor as planes [A, B, H, W]: an [N, C, L] one as [N, C, 1, L] (a view)."""
    return a if a is None or a.ndim == 4 else a.reshape(a.shape[0], a.shape[1], 1, a.shape[2])


def _maxpool_fwd(k: Kernels, b: Bound, training: bool) -> None:
    g, arg = _pool_geom(b.site), _as4(b.ws["arg"])
    k.pool.maxpool_fwd(
        _as4(b.x[0]), _as4(b.y[0]), arg, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw
    )
    if training and "argmax" in b.saved:
        k.codecs.argmax_encode(arg, b.saved["argmax"], (g.kh, g.kw))


def _maxpool_bwd(k: Kernels, b: Bound) -> None:
    g, arg = _pool_geom(b.site), _as4(b.ws["arg"])
    k.codecs.argmax_decode(b.saved["argmax"], arg, (g.kh, g.kw))
    k.pool.maxpool_bwd(
        _as4(b.gy), arg, _as4(b.gx[0]), g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw
    )


def _avgpool_args(site: Site) -> tuple:
    g = _pool_geom(site)
    include = bool(site.node.attrs.get("count_include_pad", 0))
    return g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.pb, g.pr, include


def _avgpool_fwd(k: Kernels, b: Bound, training: bool) -> None:
    k.pool.avgpool_fwd(_as4(b.x[0]), _as4(b.y[0]), *_avgpool_args(b.site))


def _avgpool_bwd(k: Kernels, b: Bound) -> None:
    k.pool.avgpool_bwd(_as4(b.gy), _as4(b.gx[0]), *_avgpool_args(b.site))


def _gap_fwd(k: Kernels, b: Bound, training: bool) -> None:
    k.pool.global_avgpool_fwd(b.x[0], b.y[0])


def _gap_bwd(k: Kernels, b: Bound) -> None:
    k.pool.global_avgpool_bwd(b.gy, b.gx[0])


# Loss ------------------------------------------------------------------------------------


def _xent_saved(site: Site) -> tuple[Saved, ...]:
    return (Saved("logp", nbytes=4 * math.prod(site.ins[0])),)


def _xent_ws(k: Kernels, site: Site) -> Workspace:
    return {"logp": (site.ins[0], F32), "losses": (site.ins[0][:1], F32)}


def _logp(b: Bound):
    if "logp" in b.saved:
        return b.saved["logp"].view(np.float32).reshape(b.site.ins[0])
    return b.ws["logp"]


def _xent_scale(b: Bound) -> float:
    mean = b.site.node.attrs.get("reduction", "mean") == "mean"
    return 1.0 / b.site.ins[0][0] if mean else 1.0


def _smoothing(b: Bound) -> float:
    return float(b.site.node.attrs.get("label_smoothing", 0.0))


def _xent_fwd(k: Kernels, b: Bound, training: bool) -> None:
    losses = b.ws["losses"]
    k.loss.softmax_xent_fwd(b.x[0], b.x[1], _smoothing(b), _logp(b), losses)
    k.loss.loss_total(losses, _xent_scale(b), b.y[0])


def _xent_bwd(k: Kernels, b: Bound) -> None:
    k.loss.softmax_xent_bwd(_logp(b), b.x[1], _smoothing(b), _xent_scale(b), b.gx[0], b.gy)


# The table -------------------------------------------------------------------------------

OPS: dict[str, OpDef] = {
    "Conv": OpDef(shapes.conv, _conv_fwd, _conv_bwd, _keep_operands, _conv_ws),
    "DeltaConv": OpDef(delta.infer, delta.fwd, delta.bwd, delta.saved, delta.workspace),
    "Gemm": OpDef(shapes.gemm, _gemm_fwd, _gemm_bwd, _keep_operands),
    "MatMul": OpDef(shapes.matmul, _matmul_fwd, _matmul_bwd, _keep_operands, _matmul_ws),
    "Add": OpDef(shapes.broadcast, _binary(ADD), _add_bwd, passthrough=(0, 1)),
    "Sub": OpDef(shapes.broadcast, _binary(SUB), _add_bwd, passthrough=(0,)),
    "Mul": OpDef(shapes.broadcast, _binary(MUL), _mul_bwd, _keep_operands, _mul_ws),
    "Div": OpDef(shapes.broadcast, _binary(DIV), _div_bwd, _div_saved, _div_ws),
    "Relu": OpDef(shapes.same, _clip_fwd, _mask_bwd, _keep_mask),
    "Clip": OpDef(shapes.clip, _clip_fwd, _mask_bwd, _keep_mask),
    "LeakyRelu": OpDef(shapes.same, _act_fwd, _slopes_bwd, _keep_mask),
    "HardSigmoid": OpDef(shapes.same, _act_fwd, _slopes_bwd, _keep_mask),
    "Sigmoid": OpDef(shapes.same, _act_fwd, _act_bwd, _keep_x),
    "Tanh": OpDef(shapes.same, _act_fwd, _act_bwd, _keep_x),
    "HardSwish": OpDef(shapes.same, _act_fwd, _act_bwd, _keep_x),
    "Elu": OpDef(shapes.same, _act_fwd, _act_bwd, _keep_x),
    "Gelu": OpDef(shapes.same, _act_fwd, _act_bwd, _keep_x),
    "Swish": OpDef(shapes.same, _act_fwd, _act_bwd, _keep_x),
    "Erf": OpDef(shapes.same, _act_fwd, _act_bwd, _keep_x),
    "PRelu": OpDef(shapes.prelu, _prelu_fwd, _prelu_bwd, _keep_x),
    "MaxPool": OpDef(shapes.pool, _maxpool_fwd, _maxpool_bwd, _maxpool_saved, _maxpool_ws),
    "AveragePool": OpDef(shapes.pool, _avgpool_fwd, _avgpool_bwd),
    "GlobalAveragePool": OpDef(shapes.global_pool, _gap_fwd, _gap_bwd),
    "Flatten": OpDef(shapes.flatten, mv.copy_fwd, mv.copy_bwd),
    "Reshape": OpDef(shapes.reshape, mv.copy_fwd, mv.copy_bwd),
    "Squeeze": OpDef(shapes.squeeze, mv.copy_fwd, mv.copy_bwd),
    "Unsqueeze": OpDef(shapes.unsqueeze, mv.copy_fwd, mv.copy_bwd),
    "Transpose": OpDef(shapes.transpose, mv.transpose_fwd, mv.transpose_bwd),
    "Split": OpDef(shapes.split, mv.split_fwd, mv.split_bwd),
    "ReduceMean": OpDef(shapes.reduce_mean, mv.mean_fwd, mv.mean_bwd),
    "Identity": OpDef(shapes.same, mv.copy_fwd, mv.copy_bwd, passthrough=(0,)),
    "Dropout": OpDef(shapes.same, mv.copy_fwd, mv.copy_bwd, passthrough=(0,)),
    "Pad": OpDef(shapes.pad, mv.pad_fwd, mv.pad_bwd),
    "Slice": OpDef(shapes.slice_, mv.slice_fwd, mv.slice_bwd),
    "Concat": OpDef(shapes.concat, mv.concat_fwd, mv.concat_bwd),
    "BatchNormalization": OpDef(shapes.batchnorm, bn.fwd, bn.bwd, bn.saved, bn.workspace),
    "LayerNormalization": OpDef(
        shapes.layernorm, norm.ln_fwd, norm.ln_bwd, norm.ln_saved, norm.ln_workspace
    ),
    "GroupNormalization": OpDef(
        shapes.groupnorm, norm.gn_fwd, norm.gn_bwd, norm.gn_saved, norm.gn_workspace
    ),
    "InstanceNormalization": OpDef(
        shapes.groupnorm, norm.gn_fwd, norm.gn_bwd, norm.gn_saved, norm.gn_workspace
    ),
    "Softmax": OpDef(
        shapes.softmax,
        norm.softmax_fwd,
        norm.softmax_bwd,
        norm.softmax_saved,
        norm.softmax_workspace,
    ),
    "SoftmaxCrossEntropyLoss": OpDef(shapes.xent, _xent_fwd, _xent_bwd, _xent_saved, _xent_ws),
}


def lookup(node: Node, lacks: Collection[str] = (), device: str = "cpu") -> OpDef:
    """The OpDef of `node`, or UnsupportedOpError naming its op type and name; `lacks`
    lists the op types that `device`'s kernels cannot run."""
    op = OPS.get(node.op_type)
    if op is None or node.op_type in lacks:
        where = f" on device {device!r}" if node.op_type in OPS else ""
        supported = ", ".join(t for t in OPS if t not in lacks)
        raise shapes.unsupported(
            node, f"op type {node.op_type} is not supported{where}; supported: {supported}"
        )
    return op
