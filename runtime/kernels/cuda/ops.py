"""The CUDA op table: ONNX op type -> OpDef whose forward and backward run the kernels of
this package on device arrays. Shape inference, what backward keeps and (but for Conv
and Mul) the workspace are the CPU table's (runtime/ops.py), so the planner sizes both
backends alike. Stored arrays travel with their channel-major flags (`Site.cm_in`,
`cm_out`) where the CPU ops take numpy logical views."""

from __future__ import annotations

import math
from dataclasses import replace

from ... import ops as host
from ... import shapes
from ...bound import F32, Bound, Site, Workspace, opt
from ...graph import Node
from ...ops import OPS, OpDef
from . import ops_batchnorm as bn
from . import ops_movement as mv
from .codecs import argmax_decode, argmax_encode, mask_apply
from .conv import conv2d_bwd_input, conv2d_bwd_weight, conv2d_fwd, conv_workspace
from .elementwise import broadcast_op, clip, clip_mask_fwd, reduce_to
from .gemm import gemm_bwd, gemm_fwd, matmul_bwd_operand, matmul_fwd
from .loss import loss_total, softmax_xent_bwd, softmax_xent_fwd
from .pool import (
    avgpool_bwd,
    avgpool_fwd,
    global_avgpool_bwd,
    global_avgpool_fwd,
    maxpool_bwd,
    maxpool_fwd,
)

# Conv ------------------------------------------------------------------------------------


def _conv_ws(site: Site) -> Workspace:
    shapes_ = conv_workspace(host._conv_geom(site), site.ins[0], site.outs[0])
    return {key: (shape, F32) for key, shape in shapes_.items()}


def _conv_fwd(b: Bound, training: bool) -> None:
    conv2d_fwd(b.x[0], b.x[1], opt(b.x, 2), b.y[0], b.ws, host._conv_geom(b.site))


def _conv_bwd(b: Bound) -> None:
    g, gb = host._conv_geom(b.site), opt(b.gx, 2)
    if b.gx[1] is not None or gb is not None:
        conv2d_bwd_weight(b.gy, b.input(0), b.gx[1], gb, b.ws, g)
    if b.gx[0] is not None:
        conv2d_bwd_input(b.gy, b.input(1), b.gx[0], b.ws, g)


# Gemm, MatMul ----------------------------------------------------------------------------


def _gemm_fwd(b: Bound, training: bool) -> None:
    gemm_fwd(b.x[0], b.x[1], opt(b.x, 2), b.y[0], *host._gemm_args(b.site.node))


def _gemm_bwd(b: Bound) -> None:
    args = host._gemm_args(b.site.node)
    gemm_bwd(b.gy, b.input(0), b.input(1), b.gx[0], b.gx[1], opt(b.gx, 2), *args)


def _matmul_fwd(b: Bound, training: bool) -> None:
    s = b.site
    matmul_fwd(b.x[0], s.cm_in(0), b.x[1], s.cm_in(1), b.y[0], s.cm_out(0))


def _matmul_bwd(b: Bound) -> None:
    s = b.site
    for i, left in ((0, True), (1, False)):
        if b.gx[i] is not None:
            other, tmp = b.input(1 - i), b.ws.get(f"tmp{i}")
            args = (b.gy, s.cm_out(0), other, s.cm_in(1 - i), b.gx[i], s.cm_in(i), tmp)
            matmul_bwd_operand(*args, left=left)


# Add, Mul, Relu, Clip --------------------------------------------------------------------


def _binary_fwd(b: Bound, mul: bool) -> None:
    s = b.site
    broadcast_op(b.x[0], s.cm_in(0), b.x[1], s.cm_in(1), b.y[0], s.cm_out(0), mul)


def _add_fwd(b: Bound, training: bool) -> None:
    _binary_fwd(b, mul=False)


def _mul_fwd(b: Bound, training: bool) -> None:
    _binary_fwd(b, mul=True)


def _add_bwd(b: Bound) -> None:
    for i, g in enumerate(b.gx):
        if g is not None and g is not b.gy:  # gy itself: the executor shared the buffer
            reduce_to(b.gy, g, b.site.cm_out(0), b.site.cm_in(i))


def _mul_bwd(b: Bound) -> None:
    s = b.site
    for i, other in ((0, 1), (1, 0)):
        if b.gx[i] is not None:
            o = b.input(other)
            reduce_to(b.gy, b.gx[i], s.cm_out(0), s.cm_in(i), other=o, o_swap=s.cm_in(other))


def _clip_fwd(b: Bound, training: bool) -> None:
    s = b.site
    lo, hi = (0.0, math.inf) if s.node.op_type == "Relu" else shapes.clip_bounds(s.node, s.consts)
    x, y = b.x[0].reshape(-1), b.y[0].reshape(-1)
    if training and "mask" in b.saved:
        clip_mask_fwd(x, y, b.saved["mask"], lo, hi)
    else:
        clip(x, y, lo, hi)


def _mask_bwd(b: Bound) -> None:
    mask_apply(b.saved["mask"], b.gy, b.gx[0])


# Pooling ---------------------------------------------------------------------------------


def _maxpool_fwd(b: Bound, training: bool) -> None:
    g, arg = host._pool_geom(b.site), b.ws["arg"]
    maxpool_fwd(b.x[0], b.y[0], arg, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw)
    if training and "argmax" in b.saved:
        argmax_encode(arg, b.saved["argmax"], (g.kh, g.kw))


def _maxpool_bwd(b: Bound) -> None:
    g, arg = host._pool_geom(b.site), b.ws["arg"]
    argmax_decode(b.saved["argmax"], arg, (g.kh, g.kw))
    maxpool_bwd(b.gy, arg, b.gx[0], g.kw, g.sh, g.sw, g.pt, g.pl, g.dh, g.dw, kh=g.kh)


def _avgpool_fwd(b: Bound, training: bool) -> None:
    avgpool_fwd(b.x[0], b.y[0], *host._avgpool_args(b.site))


def _avgpool_bwd(b: Bound) -> None:
    avgpool_bwd(b.gy, b.gx[0], *host._avgpool_args(b.site))


def _gap_fwd(b: Bound, training: bool) -> None:
    global_avgpool_fwd(b.x[0], b.y[0])


def _gap_bwd(b: Bound) -> None:
    global_avgpool_bwd(b.gy, b.gx[0])


# Loss ------------------------------------------------------------------------------------


def _smoothing(b: Bound) -> float:
    return float(b.site.node.attrs.get("label_smoothing", 0.0))


def _xent_fwd(b: Bound, training: bool) -> None:
    losses = b.ws["losses"]
    softmax_xent_fwd(b.x[0], b.x[1], _smoothing(b), host._logp(b), losses)
    loss_total(losses, host._xent_scale(b), b.y[0])


def _xent_bwd(b: Bound) -> None:
    scale = host._xent_scale(b)
    softmax_xent_bwd(host._logp(b), b.x[1], _smoothing(b), scale, b.gx[0], gy=b.gy)


# The table -------------------------------------------------------------------------------


def _none(site: Site) -> Workspace:
    return {}


def _on_cuda(op_type: str, forward, backward, workspace=None) -> OpDef:
    """The CPU OpDef of op_type with CUDA forward and backward (and workspace)."""
    cpu = OPS[op_type]
    return replace(cpu, forward=forward, backward=backward, workspace=workspace or cpu.workspace)


CUDA_OPS: dict[str, OpDef] = {
    "Conv": _on_cuda("Conv", _conv_fwd, _conv_bwd, _conv_ws),
    "Gemm": _on_cuda("Gemm", _gemm_fwd, _gemm_bwd),
    "MatMul": _on_cuda("MatMul", _matmul_fwd, _matmul_bwd),
    "Add": _on_cuda("Add", _add_fwd, _add_bwd),
    "Mul": _on_cuda("Mul", _mul_fwd, _mul_bwd, _none),
    "Relu": _on_cuda("Relu", _clip_fwd, _mask_bwd),
    "Clip": _on_cuda("Clip", _clip_fwd, _mask_bwd),
    "MaxPool": _on_cuda("MaxPool", _maxpool_fwd, _maxpool_bwd),
    "AveragePool": _on_cuda("AveragePool", _avgpool_fwd, _avgpool_bwd),
    "GlobalAveragePool": _on_cuda("GlobalAveragePool", _gap_fwd, _gap_bwd),
    "Flatten": _on_cuda("Flatten", mv.copy_fwd, mv.copy_bwd),
    "Reshape": _on_cuda("Reshape", mv.copy_fwd, mv.copy_bwd),
    "Identity": _on_cuda("Identity", mv.copy_fwd, mv.copy_bwd),
    "Dropout": _on_cuda("Dropout", mv.copy_fwd, mv.copy_bwd),
    "Pad": _on_cuda("Pad", mv.pad_fwd, mv.pad_bwd),
    "Slice": _on_cuda("Slice", mv.slice_fwd, mv.slice_bwd),
    "Concat": _on_cuda("Concat", mv.concat_fwd, mv.concat_bwd),
    "BatchNormalization": _on_cuda("BatchNormalization", bn.fwd, bn.bwd),
    "SoftmaxCrossEntropyLoss": _on_cuda("SoftmaxCrossEntropyLoss", _xent_fwd, _xent_bwd),
}


def lookup(node: Node) -> OpDef:
    """The CUDA OpDef of `node`, or UnsupportedOpError naming its op type and name."""
    op = CUDA_OPS.get(node.op_type)
    if op is None:
        raise shapes.unsupported(
            node, f"op type {node.op_type} has no CUDA kernels; supported: {', '.join(CUDA_OPS)}"
        )
    return op
