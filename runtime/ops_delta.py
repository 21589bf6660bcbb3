"""Forward and backward of DeltaConv, the fused `--train delta` convolution (fusion.py):
inputs (z, last, bias, x, W, chain), output Conv(x, W + last . chain) + bias, which is
Conv(z, last, bias) + Conv(x, W) for z = chain(x). Forward composes the weight (one
small gemm) and runs one convolution; backward takes last's and the bias's gradient
from z (kept through the codec, as `last` keeps it) and x's through the composed weight,
recomposed in the backward workspace, so nothing beyond z is kept. z gets no gradient."""

from __future__ import annotations

from .bound import F32, Bound, Saved, Site, Workspace, keep_input, opt
from .graph import Node
from .kernels import Kernels
from .shapes import ConvGeom, Shape, conv, geometry

_POINTWISE = ConvGeom(1, 1)


def _geom(site: Site):
    return geometry(site.node, site.ins[3], site.ins[4][2:])


def infer(node: Node, ins: list, consts: list) -> list[Shape]:
    view = Node("Conv", node.name, node.inputs[3:5], node.outputs, node.attrs, frozenset({1}))
    return conv(view, ins[3:5], consts[3:5])


def saved(site: Site) -> tuple[Saved, ...]:
    return (keep_input(0),) if site.need[1] else ()


def workspace(k: Kernels, site: Site) -> Workspace:
    """The composed weight, and the workspaces of the dense geometry (x -> y: forward and
    x's gradient) and of last's (z -> y: its weight gradient), by prefix."""
    y = site.outs[0]
    ws: Workspace = {"w": (site.ins[4], F32)}
    for prefix, geom, x in (
        ("dense.", _geom(site), site.ins[3]),
        ("last.", _POINTWISE, site.ins[0]),
    ):
        ws.update(
            {prefix + key: (shape, F32) for key, shape in k.conv.conv_workspace(geom, x, y).items()}
        )
    return ws


def _sub(ws: dict, prefix: str) -> dict:
    return {key[len(prefix) :]: a for key, a in ws.items() if key.startswith(prefix)}


def _compose(k: Kernels, b: Bound):
    """ws["w"] = W + last . chain, as [C_out, C_in * kh * kw] matrices."""
    w, last, chain, out = b.x[4], b.x[1], b.x[5], b.ws["w"]
    m = w.shape[0]
    args = (last.reshape(m, last.shape[1]), chain.reshape(chain.shape[0], -1), w.reshape(m, -1))
    k.gemm.gemm_fwd(*args, out.reshape(m, -1), 1.0, 1.0, False, False)
    return out


def fwd(k: Kernels, b: Bound, training: bool) -> None:
    w = _compose(k, b)
    k.conv.conv2d_fwd(b.x[3], w, opt(b.x, 2), b.y[0], _sub(b.ws, "dense."), _geom(b.site))


def bwd(k: Kernels, b: Bound) -> None:
    gw, gb, gx = b.gx[1], opt(b.gx, 2), b.gx[3]
    if gw is not None or gb is not None:
        k.conv.conv2d_bwd_weight(b.gy, b.input(0), gw, gb, _sub(b.ws, "last."), _POINTWISE)
    if gx is not None:
        w = _compose(k, b)
        k.conv.conv2d_bwd_input(b.gy, w, gx, _sub(b.ws, "dense."), _geom(b.site))
