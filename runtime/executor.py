"""Binds a schedule to buffers once, then runs its forward and backward passes over them.

Every buffer comes from `alloc(name, shape, dtype, kind)` (kind: activations, grads,
saved or workspace), called while binding and never while running, so a step allocates
nothing. Names are stable across batch sizes: binding the same schedule for a smaller
batch asks for the same names with smaller shapes. Each node has its own workspace for
its forward run and another for its backward run (`ws:<node>:fwd:<slot>`, `...:bwd:...`),
each live for that one step only, so the planner lays them over dead activations
instead of keeping one buffer per slot alive across the whole schedule.

Forward encodes each input a node keeps (`ops.keep_input`) through the codec into its
saved buffer; backward decodes it into workspace just before the node runs. A tensor used
by several nodes gets its gradient summed: the first backward node to reach it writes the
gradient buffer, later ones write scratch that is then added in. The input of a
pass-through op (Add, Identity, Dropout) whose gradient has no other writer shares the
output's gradient buffer, so that op backward copies nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .bound import F32, U8, Bound, Site, logical, stored_shape
from .device import Backend, resolve_device
from .graph import Schedule
from .kernels import Kernels
from .ops import OpDef
from .shapes import Shape

Alloc = Callable[[str, Shape, np.dtype, str], np.ndarray]
Pairs = list[tuple[np.ndarray, np.ndarray]]


@dataclass(eq=False)
class _Step:
    op: OpDef
    b: Bound
    encode: Pairs = field(default_factory=list)  # (input, saved buffer)
    decode: Pairs = field(default_factory=list)  # (saved buffer, decoded input)
    accumulate: Pairs = field(default_factory=list)  # (scratch, gradient buffer)
    ws_fwd: dict = field(default_factory=dict)  # workspace of the forward run
    ws_bwd: dict = field(default_factory=dict)  # workspace of the backward run


class Executor:
    """A schedule bound to buffers for fixed input shapes.

    `params` are the initializers (bound as they are), `feeds` the shapes and dtypes of
    the graph inputs, `root` the value whose gradient `backward` starts from; the caller
    fills `values[feed]` before `forward` and `grads[root]` before `backward`. Rank-4
    activations are stored channel-major (see bound.py); `logical()` gives ONNX views.
    `backend` (runtime/device.py, default cpu) supplies the kernels the ops run on and
    the array primitives; `alloc` must hand out arrays of its device.
    """

    def __init__(
        self,
        schedule: Schedule,
        params: dict[str, np.ndarray],
        feeds: dict[str, tuple[Shape, np.dtype]],
        root: str,
        codec,
        alloc: Alloc,
        backend: Backend | None = None,
    ) -> None:
        backend = backend or resolve_device("cpu")
        self._lookup, self._accumulate = backend.lookup, backend.accumulate
        self._k = k = backend.kernels
        self._codec = codec
        self.values: dict[str, np.ndarray] = dict(params)
        self._params = params
        for name, (shape, dtype) in feeds.items():
            self.values[name] = alloc(f"value:{name}", stored_shape(shape), dtype, "activations")
        sites = self._infer(schedule, params, alloc)
        self.grads = self._grad_buffers(schedule, sites, params, root, alloc)
        self._steps = {
            n.name: _Step(self._lookup(n), self._bind(sites[n.name])) for n in schedule.forward
        }
        self._forward = [self._steps[n.name] for n in schedule.forward]
        self._backward = [self._steps[n.name] for n in schedule.backward]
        shared = _shared_grads(schedule, sites)
        for name, st in self._steps.items():
            st.ws_fwd = _workspace(name, "fwd", st.op.workspace(k, sites[name]), alloc)
            st.b.ws = st.ws_fwd
        for node in schedule.backward:
            st = self._steps[node.name]
            req = _requests(k, st.op, sites[node.name], shared)
            st.ws_bwd = st.b.ws = _workspace(node.name, "bwd", req, alloc)
            self._bind_backward(st, shared.get(node.name, ()), alloc)
        self._producer = {v: i for i, n in enumerate(schedule.forward) for v in n.outputs}

    def _infer(self, schedule: Schedule, params: dict, alloc: Alloc) -> dict[str, Site]:
        shapes = {name: self._logical_shape(name) for name in self.values}
        sites = {}
        for node in schedule.forward:
            op = self._lookup(node)
            ins = [shapes[v] if v else None for v in node.inputs]
            consts = [
                params[v] if i in node.persistent else None for i, v in enumerate(node.inputs)
            ]
            outs = [tuple(int(d) for d in s) for s in op.infer(node, ins, consts)]
            for v, shape in zip(node.outputs, outs, strict=False):
                if v:
                    shapes[v] = shape
                    self.values[v] = alloc(f"value:{v}", stored_shape(shape), F32, "activations")
            need = schedule.need.get(node.name, (False,) * len(node.inputs))
            sites[node.name] = Site(node, tuple(ins), tuple(outs), tuple(consts), need)
        return sites

    def _grad_buffers(self, schedule, sites, params, root: str, alloc: Alloc) -> dict:
        """A gradient buffer per tensor that needs one. The input of a pass-through op
        (OpDef.passthrough) with no other gradient contributor shares its output's."""
        writers = Counter(v for _, _, v in _needed(schedule, sites))
        grads = {root: alloc(f"grad:{root}", self.values[root].shape, F32, "activations")}
        for node, i, v in _needed(schedule, sites):
            out = node.outputs[0]
            if v in grads:
                continue
            if self._can_alias(self._lookup(node), i, v, out, writers, params):
                grads[v] = grads[out]
                continue
            kind = "grads" if v in params else "activations"
            grads[v] = alloc(f"grad:{v}", self.values[v].shape, F32, kind)
        return grads

    def _can_alias(self, op: OpDef, i: int, v: str, out: str, writers, params) -> bool:
        same = self.values[v].shape == self.values[out].shape
        return i in op.passthrough and writers[v] == 1 and v not in params and same

    def logical(self, name: str) -> np.ndarray:
        """The ONNX view of value `name`."""
        return logical(self.values[name], self._channel_major(name))

    def logical_grad(self, name: str) -> np.ndarray:
        """The ONNX view of the gradient of `name`."""
        return logical(self.grads[name], self._channel_major(name))

    def _channel_major(self, name: str) -> bool:
        return self.values[name].ndim == 4 and name not in self._params

    def _logical_shape(self, name: str) -> Shape:
        shape = tuple(self.values[name].shape)
        return (shape[1], shape[0], *shape[2:]) if self._channel_major(name) else shape

    def _bind(self, site: Site) -> Bound:
        x = [self.values[v] if v else None for v in site.node.inputs]
        y = [self.values[v] if v else None for v in site.node.outputs]
        return Bound(site, x, y)

    def _bind_backward(self, st: _Step, shared: tuple[int, ...], alloc: Alloc) -> None:
        """Bind gradients, scratch for shared gradients, and saved buffers of one node."""
        b, node = st.b, st.b.site.node
        b.gy = self.grads[node.outputs[0]]
        b.gx = [self.grads[v] if f else None for v, f in zip(node.inputs, b.site.need, strict=True)]
        for i in shared:
            st.accumulate.append((b.ws[f"acc{i}"], b.gx[i]))
            b.gx[i] = b.ws[f"acc{i}"]
        for s in st.op.saved(b.site):
            name = f"saved:{node.name}:{s.key}"
            if s.source is None:
                b.saved[s.key] = alloc(name, (s.nbytes,), U8, "saved")
                continue
            buf = alloc(name, (self._codec.nbytes(b.x[s.source].shape),), U8, "saved")
            st.encode.append((b.x[s.source], buf))
            st.decode.append((buf, b.ws[f"decode{s.source}"]))
            b.saved[s.key] = b.ws[f"decode{s.source}"]

    def forward(self, training: bool, seed: int = 0, until: str | None = None) -> None:
        """Run forward (up to the node producing `until`); when training, keep what
        backward needs, encoding with codec seeds seed, seed + 1, ..."""
        end = len(self._forward) if until is None else self._producer[until] + 1
        codec, k = self._codec, self._k
        for i, st in enumerate(self._forward[:end]):
            st.b.ws = st.ws_fwd
            st.op.forward(k, st.b, training)
            if training:
                for x, buf in st.encode:
                    codec.encode(x, buf, seed + i)

    def backward(self) -> None:
        """Run backward from grads[root], writing every gradient buffer."""
        codec, accumulate, k = self._codec, self._accumulate, self._k
        for st in self._backward:
            st.b.ws = st.ws_bwd
            for buf, out in st.decode:
                codec.decode(buf, out)
            st.op.backward(k, st.b)
            for scratch, g in st.accumulate:
                accumulate(g, scratch)

    def step_arrays(self) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
        """For the memory planner (memory.py): the arrays each step touches, forward
        steps then backward steps in run order, and the arrays the caller touches around
        a step (graph inputs, values no node reads, the root gradient). Backward reads
        activations only through saved buffers, so its inputs' values are not listed."""
        fwd = [_touched(st, forward=True) for st in self._forward]
        bwd = [_touched(st, forward=False) for st in self._backward]
        read = {v for st in self._forward for v in st.b.site.node.inputs}
        io = [
            a
            for v, a in self.values.items()
            if v not in self._params and (v not in self._producer or v not in read)
        ]
        return fwd + bwd, io + [st.b.gy for st in self._backward[:1]]


def _touched(st: _Step, forward: bool) -> list[np.ndarray]:
    """The arrays one step may read or write in its forward or backward run."""
    b = st.b
    out = [*(st.ws_fwd if forward else st.ws_bwd).values(), *b.saved.values()]
    if forward:
        out += [a for a in (*b.x, *b.y) if a is not None] + [buf for _, buf in st.encode]
    elif b.gy is not None:
        out += [b.gy, *(g for g in b.gx if g is not None)]
        out += [a for pair in (*st.decode, *st.accumulate) for a in pair]
    return out


def _needed(schedule: Schedule, sites: dict[str, Site]):
    """(node, input position, value) of every gradient backward writes, in order."""
    for node in schedule.backward:
        for i, (v, f) in enumerate(zip(node.inputs, sites[node.name].need, strict=True)):
            if f:
                yield node, i, v


def _shared_grads(schedule: Schedule, sites: dict[str, Site]) -> dict[str, tuple[int, ...]]:
    """Per backward node, the inputs whose gradient an earlier backward node wrote."""
    written: set[str] = set()
    shared: dict[str, tuple[int, ...]] = {}
    for node, i, v in _needed(schedule, sites):
        if v in written:
            shared[node.name] = (*shared.get(node.name, ()), i)
        written.add(v)
    return shared


def _requests(k: Kernels, op: OpDef, site: Site, shared: dict) -> dict[str, tuple[Shape, np.dtype]]:
    """The workspace of one node: its op's on kernels k, plus scratch for shared gradients
    and the decode targets of inputs kept through the codec."""
    req = dict(op.workspace(k, site))
    for i in shared.get(site.node.name, ()):
        req[f"acc{i}"] = (_stored_input(site, i), F32)
    if any(site.need):
        for s in op.saved(site):
            if s.source is not None:
                req[f"decode{s.source}"] = (_stored_input(site, s.source), F32)
    return req


def _stored_input(site: Site, i: int) -> Shape:
    return stored_shape(site.ins[i], i in site.node.persistent)


def _workspace(node: str, phase: str, req: dict, alloc: Alloc) -> dict[str, np.ndarray]:
    """The workspace arrays of one node's forward or backward run, its own buffers."""
    return {
        slot: alloc(f"ws:{node}:{phase}:{slot}", shape, dtype, "workspace")
        for slot, (shape, dtype) in req.items()
    }
