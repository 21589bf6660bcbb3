"""One arena per training session: buffer lifetimes from the schedule, a greedy plan, views.

A session binds its buffers twice (DESIGN.md, "Memory: one arena, planned ahead"):

1. A dry run binds through a `Recorder`. Each request gets a private anonymous mapping:
   zero pages that cost no resident memory until written, so a dry run of any batch size
   is cheap. The recorder keeps every buffer's name, size and kind.
2. `plan_memory` walks the bound executors' steps (`Executor.step_arrays`) and gives each
   buffer a lifetime [first, last] in steps: forward nodes 0..F-1, backward nodes
   F..F+B-1, then the optimizer step F+B.
     - weights, parameter gradients and optimizer state live for the whole step (and
       carry over to the next);
     - every other buffer lives from the first step that touches it to the last: an
       activation from its producer to its last forward reader (backward reads
       activations only through saved buffers), a saved buffer from the forward node
       that encodes it to the backward node that decodes it, an activation gradient
       across the backward nodes that write and read it, a node's forward or backward
       workspace for that one step;
     - what the caller touches around a step (graph inputs, values no node reads such as
       the loss and running statistics, the root gradient) lives for the whole step.
   GreedyPlanner places them; `MemoryPlan` holds the offsets and the figures.
3. The real binding goes through `ArenaAllocator(plan)`: the same names get views of one
   `Arena` at their planned offsets.

Lanes (see session.py) run side by side in threads, so they must never share bytes: lane
0 and the persistent buffers form one region, each further lane's transient buffers a
region of their own after it. A request the plan does not know (a new name, or more bytes
than planned) gets a heap buffer of its own, reported as `unplanned`.
"""

from __future__ import annotations

import bisect
import math
import mmap
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .arena import Arena
from .device import resolve_device
from .planner import GreedyPlanner, LinearPlanner, align_up

KINDS = ("weights", "grads", "optimizer", "activations", "saved", "workspace")
PERSISTENT = frozenset({"weights", "grads", "optimizer"})
Shape = tuple[int, ...]


def _nbytes(shape: Shape, dtype: np.dtype) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def _typed(raw: np.ndarray, shape: Shape, dtype: np.dtype) -> np.ndarray:
    return raw[: _nbytes(shape, dtype)].view(dtype).reshape(shape)


class Recorder:
    """The allocator of a dry run: zeroed buffers that cost no memory until written, and
    a record of every request (name -> bytes, kind). A later request for a known name
    reuses its buffer (it must fit), as the session's allocator promises."""

    def __init__(self) -> None:
        self.requests: dict[str, tuple[int, str]] = {}
        self._raw: dict[str, np.ndarray] = {}
        self._starts: list[tuple[int, int, str]] | None = None

    def alloc(self, name: str, shape: Shape, dtype: np.dtype, kind: str) -> np.ndarray:
        """A zeroed `shape` array of `dtype` for buffer `name` of `kind`."""
        nbytes = _nbytes(shape, dtype)
        if name not in self._raw:
            self._raw[name] = np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), np.uint8)
            self.requests[name] = (nbytes, kind)
            self._starts = None
        have, was = self.requests[name]
        assert was == kind and nbytes <= self._raw[name].size, (name, kind, was, nbytes, have)
        self.requests[name] = (max(have, nbytes), kind)
        return _typed(self._raw[name], shape, dtype)

    def owner(self, a: np.ndarray) -> str:
        """The name of the buffer array `a` lies in."""
        if self._starts is None:
            self._starts = sorted((raw.ctypes.data, raw.size, n) for n, raw in self._raw.items())
        ptr = a.ctypes.data
        i = bisect.bisect_right(self._starts, (ptr, math.inf)) - 1
        assert i >= 0 and ptr < self._starts[i][0] + self._starts[i][1], "array outside alloc"
        return self._starts[i][2]


@dataclass(frozen=True)
class Buffer:
    """One planned buffer: `nbytes` at `offset` in the arena, live in steps [first, last]
    (inclusive) and used by `lane`."""

    name: str
    nbytes: int
    kind: str
    lane: int
    first: int
    last: int
    offset: int


@dataclass
class MemoryPlan:
    """Where every buffer of a bound session lives, and the figures of the plan."""

    buffers: dict[str, Buffer]
    steps: tuple[str, ...]
    arena_bytes: int
    lower_bound: int
    linear_bytes: int
    _planners: list[tuple[GreedyPlanner, list[str]]] = field(repr=False, default_factory=list)

    def kind_bytes(self) -> dict[str, int]:
        """Bytes requested per kind (each buffer once, whatever it shares)."""
        out = dict.fromkeys(KINDS, 0)
        for b in self.buffers.values():
            out[b.kind] = out.get(b.kind, 0) + b.nbytes
        return out

    def live_bytes(self) -> dict[str, np.ndarray]:
        """Per kind, the bytes live at each step (all lanes together)."""
        out = {kind: np.zeros(len(self.steps), np.int64) for kind in KINDS}
        for b in self.buffers.values():
            out.setdefault(b.kind, np.zeros(len(self.steps), np.int64))
            out[b.kind][b.first : b.last + 1] += b.nbytes
        return out

    def peak_live(self, kind: str) -> int:
        """The most bytes of `kind` live at one step."""
        return int(self.live_bytes()[kind].max(initial=0))

    def saved_by_node(self) -> dict[str, int]:
        """Saved bytes per node (all lanes), in schedule order of first use."""
        out: dict[str, int] = {}
        for b in sorted(self.buffers.values(), key=lambda b: (b.first, b.name)):
            if b.kind == "saved":
                node = b.name.split("saved:", 1)[1].rsplit(":", 1)[0]
                out[node] = out.get(node, 0) + b.nbytes
        return out

    def overlaps(self) -> list[tuple[str, str]]:
        """Pairs of buffers live at a common step whose bytes intersect (empty if sound)."""
        return [(names[i], names[j]) for p, names in self._planners for i, j in p.overlaps()]

    def render(self, width: int = 80) -> str:
        """ASCII picture of each region's plan (see GreedyPlanner.render)."""
        return "\n".join(p.render(width) for p, _ in self._planners)


def _spans(recorder: Recorder, lanes: Sequence) -> tuple[dict[str, list[int]], int]:
    """Per touched buffer [first, last, lane] over the lanes' executors, and the steps."""
    spans: dict[str, list[int]] = {}
    total = 0
    for lane, ex in enumerate(lanes):
        steps, io = ex.step_arrays()
        total = max(total, len(steps) + 1)  # + the optimizer step
        for t, arrays in enumerate(steps):
            for a in arrays:
                if a.size:
                    s = spans.setdefault(recorder.owner(a), [t, t, lane])
                    s[0], s[1] = min(s[0], t), max(s[1], t)
        for a in io:
            spans[recorder.owner(a)] = [0, math.inf, lane]
    return spans, total


def plan_memory(recorder: Recorder, lanes: Sequence, steps: Sequence[str]) -> MemoryPlan:
    """Plan the buffers `recorder` saw, bound by the executors `lanes` (lane k at index k)
    whose steps are labelled `steps` (forward then backward; the optimizer step is added)."""
    spans, total = _spans(recorder, lanes)
    labels = (*steps, "optimizer")
    assert len(labels) >= total, (len(labels), total)
    groups: list[list[tuple[str, int, int]]] = [[] for _ in lanes]
    for name, (_, kind) in recorder.requests.items():
        first, last, lane = spans.get(name, (0, math.inf, 0))
        if kind in PERSISTENT or last == math.inf:
            first, last, lane = 0, len(labels) - 1, 0 if kind in PERSISTENT else lane
        groups[lane].append((name, first, last))
    buffers: dict[str, Buffer] = {}
    planners, base, bound = [], 0, 0
    for lane, group in enumerate(groups):
        planner = GreedyPlanner()
        for name, first, last in group:
            planner.add_buffer(recorder.requests[name][0], first, last)
        for i, (name, first, last) in enumerate(group):
            nbytes, kind = recorder.requests[name]
            buffers[name] = Buffer(name, nbytes, kind, lane, first, last, base + planner.offset(i))
        planners.append((planner, [name for name, _, _ in group]))
        base, bound = base + align_up(planner.arena_size()), bound + planner.lower_bound()
    linear = LinearPlanner()
    for b in buffers.values():
        linear.add_buffer(b.nbytes, b.first, b.last)
    return MemoryPlan(buffers, labels, base, bound, linear.arena_size(), planners)


class ArenaAllocator:
    """The allocator of the real binding: views of one arena at the planned offsets.

    The arena starts zeroed, so the first binding sees zeroed buffers; a later request
    for a planned name (an executor bound for fewer samples) reuses the bytes as they
    are, as a heap allocator reusing the buffer would.
    """

    def __init__(self, plan: MemoryPlan, device: str = "cpu") -> None:
        self.plan = plan
        self.arena = Arena(plan.arena_bytes, device)
        self._zeros = resolve_device(device).zeros  # unplanned buffers, on the same device
        self.buffers: dict[str, tuple[np.ndarray, str]] = {}
        self.unplanned: dict[str, int] = {}

    def alloc(self, name: str, shape: Shape, dtype: np.dtype, kind: str) -> np.ndarray:
        """A `shape` array of `dtype` for buffer `name` of `kind`, inside the arena when
        the plan has room for it."""
        nbytes = _nbytes(shape, dtype)
        if name not in self.buffers:
            self.buffers[name] = (self._raw(name, nbytes, kind), kind)
        raw, have = self.buffers[name]
        assert have == kind, (name, kind, have)
        if nbytes > raw.size:
            raw = self._zeros(nbytes)
            self.buffers[name] = (raw, kind)
            self.unplanned[name] = nbytes
        return _typed(raw, shape, dtype)

    def _raw(self, name: str, nbytes: int, kind: str) -> np.ndarray:
        b = self.plan.buffers.get(name)
        if b is None or b.kind != kind or b.nbytes < nbytes:
            self.unplanned[name] = nbytes
            return self._zeros(nbytes)
        return self.arena.view(b.offset, (b.nbytes,), np.uint8)
