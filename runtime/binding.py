"""A session's buffers for one plan: parameters, the lanes' executors, gradients and
optimizer state, all from one allocator.

A `Binding` is made anew for each use, never rebound: the dry run that records what a
plan needs binds into a `Recorder` on the host, the kernel warm-up into a throwaway
arena, and training into the planned arena (runtime/memory.py). What does not change
between them (graph, schedule, codec, backend, options) is the `Spec`.

Lane k has its own buffers (names prefixed `lane<k>:`); with `accumulate` > 1 the
micro-batches' gradients add up in `acc:<name>` buffers (`grads`), otherwise `grads` are
lane 0's (`lane_grads`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .bound import F32
from .device import Backend
from .errors import DataError
from .executor import Executor
from .graph import Graph, Node, Schedule
from .kernels import blas
from .kernels.elementwise import count_nonfinite

LABELS, LOSS = "facto:labels", "facto:loss"
LANE_MIN = 4  # samples per lane at full batch


@dataclass(frozen=True)
class Spec:
    """What every binding of a session shares."""

    graph: Graph
    schedule: Schedule
    backend: Backend
    codec: object
    threads: int
    optimizer: tuple[str, dict]  # (name, options)
    running: tuple[tuple[str, str], ...]  # (output, initializer) of running statistics


def loss_node(graph: Graph, label_smoothing: float) -> Node:
    """The softmax cross-entropy (mean over the batch) appended to the graph's logits."""
    return Node(
        "SoftmaxCrossEntropyLoss",
        LOSS,
        (graph.output_name, LABELS),
        (LOSS,),
        {"reduction": "mean", "label_smoothing": float(label_smoothing)},
    )


def running_stat_names(graph: Graph) -> tuple[tuple[str, str], ...]:
    """(output, initializer) of the running mean/var of each training-mode
    BatchNormalization: after a step, the output's value replaces the initializer."""
    pairs = []
    for node in graph.nodes:
        if node.op_type == "BatchNormalization" and len(node.outputs) >= 3:
            for out, inp in zip(node.outputs[1:3], node.inputs[3:5], strict=True):
                if out and inp in graph.initializers:
                    pairs.append((out, inp))
    return tuple(pairs)


class Binding:
    """Every buffer of a session bound from `memory` (an allocator with
    `alloc(name, shape, dtype, kind)`) on the device of `io`, for micro-batches of
    `micro` samples, `accumulate` of them per step."""

    def __init__(self, spec: Spec, memory, io: Backend, micro: int, accumulate: int) -> None:
        self.spec, self.memory, self.io = spec, memory, io
        self.micro, self.accumulate = micro, accumulate
        graph = spec.graph
        self.lanes = 1
        if spec.backend.name == "cpu":
            self.lanes = lane_count(spec.threads, micro, graph.nodes)
        self.params = {name: self._place(name, value) for name, value in graph.initializers.items()}
        self.executors: dict[tuple[int, int], Executor] = {}
        self.feedback: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.first = [self.executor(b - a, k) for k, a, b in self.slices(micro)]
        self.lane_grads = {t: self._grad(self.first[0], t) for t in graph.trainable}
        self.grads = self.lane_grads
        if accumulate > 1:
            self.grads = {
                t: self.alloc(f"acc:{t}", g.shape, F32, "grads") for t, g in self.lane_grads.items()
            }
        name, options = spec.optimizer
        self.optimizer = io.make_optimizer(
            name,
            self.trainable(),
            **options,
            alloc=_allocator(memory, "opt:", "optimizer"),
        )

    def alloc(self, name: str, shape: tuple[int, ...], dtype: np.dtype, kind: str) -> np.ndarray:
        """The one place buffers come from: a zeroed `shape` view named `name` of `kind`.
        A later request for the same name reuses that buffer (it must fit)."""
        return self.memory.alloc(name, tuple(shape), np.dtype(dtype), kind)

    def trainable(self) -> dict[str, np.ndarray]:
        return {name: self.params[name] for name in self.spec.graph.trainable}

    def running(self) -> dict[str, np.ndarray]:
        return {name: self.params[name] for _, name in self.spec.running}

    def executor(self, n: int, lane: int = 0) -> Executor:
        """Lane `lane`'s executor for a slice of n samples, bound on first use."""
        if (lane, n) not in self.executors:
            graph = self.spec.graph
            feeds = {
                graph.input_name: ((n, *graph.input_shape), F32),
                LABELS: ((n,), np.dtype(np.int64)),
            }
            alloc = _allocator(self.memory, f"lane{lane}:" if lane else "")
            spec = self.spec
            ex = Executor(spec.schedule, self.params, feeds, LOSS, spec.codec, alloc, spec.backend)
            self.executors[lane, n] = ex
            if self.lanes == 1:
                self.feedback[n] = [(ex.values[o], self.params[i]) for o, i in spec.running]
        return self.executors[lane, n]

    def slices(self, n: int) -> list[tuple[int, int, int]]:
        """(lane, start, stop) of each non-empty lane's slice of a batch of n."""
        q, r = divmod(n, self.lanes)
        out, start = [], 0
        for lane in range(self.lanes):
            size = q + (lane < r)
            if size:
                out.append((lane, start, start + size))
            start += size
        return out

    def steps(self) -> list[str]:
        """The step names of the plan: forward then backward nodes."""
        schedule = self.spec.schedule
        return [f"fwd {n.name}" for n in schedule.forward] + [
            f"bwd {n.name}" for n in schedule.backward
        ]

    def _place(self, name: str, value: np.ndarray) -> np.ndarray:
        arr = self.alloc(f"param:{name}", value.shape, value.dtype, "weights")
        self.io.put(arr, value)
        return arr

    def _grad(self, ex: Executor, name: str) -> np.ndarray:
        """The gradient buffer of a trainable initializer (zero if it cannot reach the loss)."""
        if name in ex.grads:
            return ex.grads[name]
        return self.alloc(f"grad:{name}", self.params[name].shape, F32, "grads")

    def feed_x(self, ex: Executor, x: np.ndarray) -> None:
        """Copy the batch x into `ex`'s input (channel-major where rank 4), refusing NaN/Inf."""
        bad = count_nonfinite(np.ascontiguousarray(x).reshape(-1))
        if bad:
            raise DataError(f"x holds {bad} NaN/Inf value(s); clean or re-normalize the data")
        stored = ex.values[self.spec.graph.input_name]
        self.io.put(stored, x, channel_major=stored.ndim == 4)


def _allocator(memory, prefix: str = "", kind: str | None = None):
    """`alloc(name, shape, dtype[, kind])` from `memory` with `prefix` on every name (and
    a fixed `kind`). It holds the allocator, not the binding: the executors and the
    optimizer keep it, and a binding must be freed as soon as it is dropped, with no
    cycle for the garbage collector (the warm-up's arena must be gone before the
    session's is touched)."""
    if kind is not None:
        return lambda name, shape, dtype: memory.alloc(
            prefix + name, tuple(shape), np.dtype(dtype), kind
        )
    return lambda name, shape, dtype, kind: memory.alloc(
        prefix + name, tuple(shape), np.dtype(dtype), kind
    )


def lane_count(threads: int, batch_size: int, nodes: list[Node]) -> int:
    """Lanes for a session: one per thread (each with LANE_MIN samples or more) when BLAS
    is single-threaded or its thread count can be set for the step (kernels/blas.py); one
    when BLAS has threads of its own that cannot be set, or when a BatchNormalization uses
    batch statistics (they need the whole batch)."""
    batch_stats = any(
        n.op_type == "BatchNormalization" and n.attrs.get("training_mode", 0) for n in nodes
    )
    if batch_stats or not (_blas_single_threaded() or blas.available()):
        return 1
    return max(1, min(threads, batch_size // LANE_MIN))


def _blas_single_threaded() -> bool:
    """Whether OpenBLAS was told to run one thread (its variables, in its precedence)."""
    for var in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").strip():
            return os.environ[var].strip() == "1"
    return False
