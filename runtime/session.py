"""TrainingSession: train an exported model's trainable factors on the CPU or a CUDA GPU.

    from facto_edge.runtime import TrainingSession
    s = TrainingSession("model.facto", batch_size=32, lr=0.01)
    loss = s.train_step(x, y)          # x float32 [n, C, H, W], y int64 [n], n <= batch_size
    logits = s.predict(x)

Every buffer (weights, gradients, optimizer state, activations, saved tensors, workspace)
comes from `TrainingSession._alloc` when the session binds its schedule, and lives in one
arena planned ahead (runtime/memory.py): a dry run records every buffer and its lifetime,
the planner places them, and the real binding hands out views of the arena; steps reuse
them and allocate nothing. The loss is softmax cross-entropy averaged over the batch (ONNX
SoftmaxCrossEntropyLoss, reduction mean) with optional label smoothing.

Devices: `device="cuda"` runs the CUDA op table (runtime/kernels/cuda/) over one device
arena; the device is resolved once, at construction (runtime/device.py), and DeviceError
names what is missing. A step copies only the batch in and the loss (and the codecs'
count of bad values) out. The dry run that plans the arena binds host buffers; the
budget then counts device memory, the arena, and `memory_report()` gives the host's
peak resident memory apart. One lane; parameters(), buffers() and gradients live on the
device.

Kernels: a budgeted CPU session loads its kernels from numba's cache and compiles none
(runtime/prepare.py): if the machine was not prepared for the model (`facto-edge compile`),
it raises BudgetError naming the command, unless `compile="prepare"` (prepare now, in child
processes) or `compile="allow"` (compile here; memory_report()'s
`kernels_compiled_in_process` then counts what the budget did not plan). The default is
$FACTO_EDGE_COMPILE, else "refuse".

Budget and micro-batches: with `budget` (the process's peak resident memory, e.g.
"512MB") the session binds for the fewest micro-batches per step whose arena fits what the
budget leaves after the runtime's measured fixed cost and a safety margin
(facto_edge/budget.py), and raises BudgetError, naming the smallest budget that fits, when
even one sample per micro-batch does not. `accumulate=k` asks for k micro-batches per step
outright. The micro-batches' gradients add up to those of the mean loss over the whole
batch, as one big batch gives (batch-statistics BatchNormalization excepted: it sees each
micro-batch alone, as in PyTorch).

Threads: the batch is cut into slices ("lanes"), one per thread, trained side by side
with serial kernels and single-threaded BLAS (kernels/blas.py sets OpenBLAS's thread count
to 1 for the span of a step, or OPENBLAS_NUM_THREADS=1 says so): a step then has one
barrier instead of one per kernel, which measured 20-40% faster on a busy 2-core machine.
Where BLAS's threads cannot be set, every kernel is split across the cores instead (numba
threads, and BLAS's own); a single lane runs BLAS on `threads` threads where they can be
set. Lane k has its own buffers (names prefixed `lane<k>:`); its loss gradient is seeded
with n_k / n, so the lanes' parameter gradients, added into lane 0's, are those of the
mean loss over the batch. Graphs with batch-statistics BatchNormalization need the whole
batch: one lane.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from . import session_io
from .bound import F32
from .budget import Allowance, allowance, parse_size
from .device import resolve_device
from .errors import DataError, FactoEdgeError
from .executor import Executor
from .graph import ModelSource, Node, build_schedule, load_graph
from .kernels import blas
from .kernels.dispatch import serial_in_this_thread
from .kernels.elementwise import count_nonfinite
from .memory import ArenaAllocator, MemoryPlan, Recorder, largest_fitting, plan_memory
from .preload import load_both_builds, release_compiler_pages, releasing_while_loading
from .prepare import compiled_in_process, ensure_kernels
from .rss import peak_rss_bytes

LABELS, LOSS = "facto:labels", "facto:loss"
LANE_MIN = 4  # samples per lane at full batch
REPORT_KEYS = {
    "weights": "weights_bytes",
    "grads": "grads_bytes",
    "optimizer": "optimizer_bytes",
    "activations": "activation_bytes",
    "saved": "saved_bytes",
    "workspace": "workspace_bytes",
}


class TrainingSession:
    """Forward, backward and optimizer steps of an exported model (`*.facto` directory, or
    an (onnx.ModelProto, manifest dict) pair), updating its trainable initializers."""

    def __init__(
        self,
        model_dir: ModelSource,
        *,
        batch_size: int,
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        codec: str = "fp32",
        label_smoothing: float = 0.0,
        seed: int = 0,
        threads: int | None = None,
        device: str = "cpu",
        budget: int | str | None = None,
        accumulate: int | None = None,
        compile: str | None = None,
    ) -> None:
        _check_options(batch_size, label_smoothing, threads)
        self._backend = self._io = resolve_device(device)  # _io: the dry run's is the host
        if accumulate is not None and not (isinstance(accumulate, int) and accumulate >= 1):
            raise FactoEdgeError(f"accumulate must be a positive int, found {accumulate!r}")
        self._threads = threads or numba.config.NUMBA_NUM_THREADS
        numba.set_num_threads(self._threads)
        self.batch_size = batch_size
        self._graph = load_graph(model_dir)
        self._source, self._callbacks = model_dir, []
        self._codec = self._backend.get_codec(codec)
        self._kernels = None  # with a budget: load kernels only (runtime/prepare.py)
        if budget is not None and self._backend.name == "cpu":
            self._kernels = ensure_kernels(self._graph, model_dir, codec, optimizer, compile)
        self._seed, self._step, self._closed = seed, 0, False
        options = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                   "betas": betas, "eps": eps}  # fmt: skip
        self._optimizer_args = (optimizer, options)
        loss = Node(
            "SoftmaxCrossEntropyLoss",
            LOSS,
            (self._graph.output_name, LABELS),
            (LOSS,),
            {"reduction": "mean", "label_smoothing": float(label_smoothing)},
        )
        self._schedule = build_schedule([*self._graph.nodes, loss], self._graph.trainable, LOSS)
        self._running_names = self._running_stat_names()
        self._plans: dict[tuple[int, int], MemoryPlan] = {}
        with releasing_while_loading():  # the kernels binding and the warm run load
            self._micro, self._accumulate = self._fit(batch_size, budget, accumulate)
            self._load_kernels()
        self._memory = ArenaAllocator(self._plan(self._micro, self._accumulate), device)
        self._bind(self._micro, self._accumulate)
        self._graph.initializers = dict(self._params)  # frees the loaded copies
        self._buffers = self._memory.buffers
        self._pool = None
        if self._lanes > 1:
            self._pool = ThreadPoolExecutor(
                self._lanes - 1, initializer=serial_in_this_thread, initargs=(True,)
            )

    # Public API ------------------------------------------------------------------------

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimizer step on the batch (x, y); returns the mean loss before the step."""
        loss = self._run(x, y, update_stats=True)
        self._optimizer.step(self._grads)
        self._step += 1
        for fn in self._callbacks:
            fn({"step": self._step, "loss": loss, "lr": self.lr})
        return loss

    def compute_gradients(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[float, dict[str, np.ndarray]]:
        """The mean loss on (x, y) and a copy of the gradient of every trainable
        initializer, without updating anything."""
        loss = self._run(x, y)
        return loss, {name: self._io.get(g) for name, g in self._grads.items()}

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits [n, classes] of x (any n; run in chunks of batch_size), eval mode."""
        self._require_open()
        self._check_x(x, limit=None)
        out = np.empty((x.shape[0], self._graph.num_classes), np.float32)
        chunk_size = -(-self._micro // self._lanes)  # what lane 0 holds
        for start in range(0, x.shape[0], chunk_size):
            chunk = x[start : start + chunk_size]
            ex = self._executor(chunk.shape[0])
            self._feed_x(ex, chunk)
            ex.forward(training=False, until=self._graph.output_name)
            logits = self._io.get(ex.values[self._graph.output_name])
            out[start : start + chunk.shape[0]] = _logical(logits).reshape(chunk.shape[0], -1)
        return out

    def parameters(self) -> dict[str, np.ndarray]:
        """The trainable initializers by name: live arrays the optimizer updates in place
        (device arrays on cuda)."""
        self._require_open()
        return {name: self._params[name] for name in self._graph.trainable}

    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trainable state that training updates, by name: the running mean and
        variance of training-mode BatchNormalizations (live arrays, on the device)."""
        self._require_open()
        return {name: self._params[name] for _, name in self._running_names}

    @property
    def optimizer(self):
        """The optimizer (runtime/optimizers.py): its state_dict() goes into checkpoints."""
        return self._optimizer

    @property
    def step(self) -> int:
        """Optimizer steps taken; it seeds stochastic codec rounding (settable, to resume)."""
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        self._step = int(value)

    @property
    def lr(self) -> float:
        """The optimizer's learning rate (settable)."""
        return self._optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._optimizer.lr = value

    @property
    def memory_plan(self) -> MemoryPlan:
        """The arena plan the session's buffers live in (runtime/memory.py)."""
        self._require_open()
        return self._memory.plan

    def memory_report(self) -> dict:
        """The arena's figures: bytes requested per kind of buffer (`<kind>_bytes`), the
        planned arena (`arena_bytes`), its `lower_bound` (most bytes live at one step) and
        `linear_bytes` (every buffer apart), the most activation bytes live at once
        (`peak_activation_bytes`), bytes that had to live outside the arena
        (`unplanned_bytes`, 0 unless a batch needed more than planned), the `device`, the
        arena's bytes on it (`device_arena_bytes`, 0 on cpu, where the arena is host
        memory), the process's peak resident memory on the host so far
        (`host_peak_rss_bytes`) and, for a budgeted CPU session, the runtime kernels
        this process compiled since the session began (`kernels_compiled_in_process`:
        0 when everything loaded from the cache) and whether it runs the kernels'
        parallel builds (`parallel_builds`); both None without a budget."""
        plan = self.memory_plan
        by_kind = plan.kind_bytes()
        report = {key: by_kind[kind] for kind, key in REPORT_KEYS.items()}
        return report | {
            "arena_bytes": plan.arena_bytes,
            "lower_bound": plan.lower_bound,
            "linear_bytes": plan.linear_bytes,
            "peak_activation_bytes": plan.peak_live("activations"),
            "peak_workspace_bytes": plan.peak_live("workspace"),
            "unplanned_bytes": sum(self._memory.unplanned.values()),
            "batch_size": self.batch_size,
            "micro_batch": self._micro,
            "accumulate": self._accumulate,
            "codec": self._codec.name,
            "device": self._backend.name,
            "device_arena_bytes": plan.arena_bytes if self._backend.name != "cpu" else 0,
            "host_peak_rss_bytes": peak_rss_bytes(),
            "kernels_compiled_in_process": (
                compiled_in_process(self._kernels) if self._kernels else None
            ),
            "parallel_builds": self._kernels.parallel if self._kernels else None,
        }

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int | None = None) -> dict:
        """Mean cross-entropy and accuracy on (x, y) in eval mode.

        Parameters
        ----------
        x : numpy.ndarray
            float32 ``[n, *input_shape]``, any n (run in chunks).
        y : numpy.ndarray
            int labels ``[n]``.
        batch_size : int, optional
            Samples per chunk (default: the session's batch_size).

        Returns
        -------
        dict
            ``loss`` (float), ``accuracy`` (float in [0, 1]) and ``samples`` (int).
        """
        self._check_y(y, x.shape[0])
        return session_io.evaluate(self, x, y, batch_size)

    def save_checkpoint(self, directory: str | os.PathLike) -> str:
        """Write ``directory/checkpoint.npz`` atomically: trained tensors, running
        statistics, optimizer state and step (facto_edge/checkpoint.py format).

        Parameters
        ----------
        directory : str or os.PathLike
            Folder to write into (created if missing).

        Returns
        -------
        str
            Path of the checkpoint file.
        """
        return str(session_io.save(self, directory))

    def load_checkpoint(self, directory: str | os.PathLike) -> None:
        """Restore a checkpoint written by `save_checkpoint` to continue exactly.

        Parameters
        ----------
        directory : str or os.PathLike
            Folder holding ``checkpoint.npz``.

        Raises
        ------
        CheckpointError
            If it is missing, corrupt or from another model (nothing is changed).
        """
        session_io.load(self, directory)

    def export_onnx(self, path: str | os.PathLike, merge: bool = False) -> str:
        """Write the current weights as an inference ONNX model.

        Parameters
        ----------
        path : str or os.PathLike
            The ``.onnx`` file to write (atomically).
        merge : bool
            Rebuild each factorized layer into the dense layer it replaced.

        Returns
        -------
        str
            The path written.
        """
        return str(session_io.export(self, self._source, path, merge))

    def add_callback(self, fn: Callable[[dict], None]) -> None:
        """Call ``fn({"step": int, "loss": float, "lr": float})`` after every train_step.

        Parameters
        ----------
        fn : callable
            Receives the metrics of the step just taken; keep it cheap.
        """
        self._callbacks.append(fn)

    def close(self) -> None:
        """Free the arena and the lanes' threads. The session cannot train, predict or
        save afterwards (FactoEdgeError); checkpoint or export first. Also the end of a
        ``with TrainingSession(...) as s:`` block."""
        if self._pool is not None:
            self._pool.shutdown()
        self._pool = self._memory = self._executors = self._optimizer = None
        self._params = self._buffers = self._grads = self._lane_grads = self._feedback = None
        self._graph.initializers = {}
        self._closed = True

    def __enter__(self) -> TrainingSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._closed:
            raise FactoEdgeError("this TrainingSession was closed; create a new one")

    # Binding ---------------------------------------------------------------------------

    def _alloc(self, name: str, shape: tuple[int, ...], dtype: np.dtype, kind: str) -> np.ndarray:
        """The one place buffers come from: a zeroed `shape` view named `name` of `kind`,
        from the dry run's recorder or the planned arena (runtime/memory.py). A later
        request for the same name reuses that buffer (it must fit)."""
        return self._memory.alloc(name, tuple(shape), np.dtype(dtype), kind)

    def _bind(self, micro: int, accumulate: int) -> list[Executor]:
        """Bind every buffer, through self._memory, for micro-batches of `micro` samples
        (`accumulate` of them per step); returns the lanes' executors."""
        self._lanes = 1
        if self._backend.name == "cpu":
            self._lanes = _lane_count(self._threads, micro, self._graph.nodes)
        self._params = {
            name: self._place(name, value) for name, value in self._graph.initializers.items()
        }
        self._executors: dict[tuple[int, int], Executor] = {}
        self._feedback: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        lanes = [self._executor(b - a, k) for k, a, b in self._slices(micro)]
        self._lane_grads = {t: self._grad(lanes[0], t) for t in self._graph.trainable}
        self._grads = self._lane_grads
        if accumulate > 1:  # micro-batches add up their gradients here
            self._grads = {
                t: self._alloc(f"acc:{t}", g.shape, F32, "grads")
                for t, g in self._lane_grads.items()
            }
        name, options = self._optimizer_args
        self._optimizer = self._io.make_optimizer(
            name,
            self.parameters(),
            **options,
            alloc=lambda name, shape, dtype: self._alloc(f"opt:{name}", shape, dtype, "optimizer"),
        )
        return lanes

    def _plan(self, micro: int, accumulate: int) -> MemoryPlan:
        """The arena plan of binding for micro-batches of `micro` (a dry run, cached)."""
        if (micro, accumulate) not in self._plans:
            self._memory, self._io = Recorder(), resolve_device("cpu")  # host buffers
            lanes = self._bind(micro, accumulate)
            steps = [f"fwd {n.name}" for n in self._schedule.forward]
            steps += [f"bwd {n.name}" for n in self._schedule.backward]
            self._plans[micro, accumulate] = plan_memory(self._memory, lanes, steps)
            self._io = self._backend
        return self._plans[micro, accumulate]

    def _fit(self, batch: int, budget: int | str | None, accumulate: int | None) -> tuple[int, int]:
        """(micro-batch size, micro-batches per step): `accumulate` as given (default 1)
        or, with a budget, the fewest micro-batches whose arena fits what the budget
        leaves after the runtime's fixed cost and a safety margin; BudgetError if none."""
        if budget is None or accumulate is not None:
            micro, k = _split(batch, accumulate or 1)
            if budget is None:
                return micro, k
        room = allowance(budget)
        if self._backend.name != "cpu":  # the budget is device memory, which the arena is
            room = Allowance(parse_size(budget), fixed=0, margin=0)

        def arena(micro: int) -> int:
            return self._plan(*_split(batch, -(-batch // micro))).arena_bytes

        if accumulate is None:
            micro = largest_fitting(arena, room.arena, batch) or 1
        if room.peak(arena(micro)) > room.budget:
            what = f"at micro-batches of {micro}, codec {self._codec.name}"
            raise room.too_small(arena(micro), what)
        return _split(batch, -(-batch // micro))

    def _load_kernels(self) -> None:
        """Before the arena exists, run a step (training, evaluation, optimizer) of one
        zero sample in a throwaway arena so that every kernel a step calls is loaded,
        then give the compiler's pages back (runtime/preload.py): the process then peaks
        at its start-up or at its steady state with the arena, not at their sum."""
        if self._backend.name != "cpu":
            return
        self._memory = ArenaAllocator(self._plan(1, 1))
        ex = self._bind(1, 1)[0]
        x = np.zeros((1, *self._graph.input_shape), np.float32)
        self._run_micro(x, np.zeros(1, np.int64), 1, 0)
        self._backend.check_codec(self._codec)
        ex.forward(training=False, until=self._graph.output_name)
        self._optimizer.step(self._lane_grads)
        load_both_builds()
        self._memory = self._executors = self._optimizer = self._params = None
        self._grads = self._lane_grads = self._feedback = None
        release_compiler_pages()

    def _place(self, name: str, value: np.ndarray) -> np.ndarray:
        arr = self._alloc(f"param:{name}", value.shape, value.dtype, "weights")
        self._io.put(arr, value)
        return arr

    def _executor(self, n: int, lane: int = 0) -> Executor:
        """Lane `lane`'s executor for a slice of n samples, bound on first use."""
        if (lane, n) not in self._executors:
            feeds = {
                self._graph.input_name: ((n, *self._graph.input_shape), F32),
                LABELS: ((n,), np.dtype(np.int64)),
            }
            alloc = self._alloc
            if lane:
                prefix = f"lane{lane}:"
                alloc = lambda name, *args: self._alloc(prefix + name, *args)  # noqa: E731
            ex = Executor(
                self._schedule, self._params, feeds, LOSS, self._codec, alloc, self._backend
            )
            self._executors[lane, n] = ex
            if self._lanes == 1:
                pairs = [(ex.values[o], self._params[i]) for o, i in self._running_names]
                self._feedback[n] = pairs
        return self._executors[lane, n]

    def _slices(self, n: int) -> list[tuple[int, int, int]]:
        """(lane, start, stop) of each non-empty lane's slice of a batch of n."""
        q, r = divmod(n, self._lanes)
        out, start = [], 0
        for lane in range(self._lanes):
            size = q + (lane < r)
            if size:
                out.append((lane, start, start + size))
            start += size
        return out

    def _grad(self, ex: Executor, name: str) -> np.ndarray:
        """The gradient buffer of a trainable initializer (zero if it cannot reach the loss)."""
        if name in ex.grads:
            return ex.grads[name]
        return self._alloc(f"grad:{name}", self._params[name].shape, F32, "grads")

    def _running_stat_names(self) -> list[tuple[str, str]]:
        """(output, initializer) of the running mean/var of each training-mode
        BatchNormalization: after a step, the output's value replaces the initializer."""
        pairs = []
        for node in self._graph.nodes:
            if node.op_type == "BatchNormalization" and len(node.outputs) >= 3:
                for out, inp in zip(node.outputs[1:3], node.inputs[3:5], strict=True):
                    if out and inp in self._graph.initializers:
                        pairs.append((out, inp))
        return pairs

    # Steps -----------------------------------------------------------------------------

    def _run(self, x: np.ndarray, y: np.ndarray, update_stats: bool = False) -> float:
        """Forward and backward of (x, y), in micro-batches of self._micro: the mean loss,
        with the parameter gradients of the mean loss in self._grads. `update_stats`
        moves the running statistics of training-mode BatchNormalizations forward."""
        self._require_open()
        self._check_x(x, limit=self.batch_size)
        self._check_y(y, x.shape[0])
        n, loss = x.shape[0], 0.0
        for part, start in enumerate(range(0, n, self._micro)):
            stop = start + self._micro
            loss += self._run_micro(x[start:stop], y[start:stop], n, part)
            if update_stats:
                for new, current in self._feedback.get(min(stop, n) - start, ()):
                    self._io.copy(new, current)
            if self._grads is not self._lane_grads:
                for name, acc in self._grads.items():
                    if part:
                        self._io.accumulate(acc, self._lane_grads[name])
                    else:
                        self._io.copy(self._lane_grads[name], acc)
        self._backend.check_codec(self._codec)
        return loss

    def _run_micro(self, x: np.ndarray, y: np.ndarray, n: int, part: int) -> float:
        """Forward and backward of micro-batch `part` (x, y) of a batch of n over the
        lanes: its share of the mean loss, with its gradients in lane 0's buffers."""
        jobs, weights = [], []
        for lane, a, b in self._slices(x.shape[0]):
            ex = self._executor(b - a, lane)
            self._feed_x(ex, x[a:b])
            self._io.put(ex.values[LABELS], y[a:b])
            weights.append((b - a) / n)
            self._io.fill(ex.grads[LOSS], weights[-1])
            seed = hash((self._seed, self._step, lane + part * self._lanes)) & (2**62 - 1)
            jobs.append((ex, seed))
        with blas.threads(1 if len(jobs) > 1 else self._threads):
            others = [self._pool.submit(_forward_backward, *job) for job in jobs[1:]]
            serial_in_this_thread(len(jobs) > 1)
            try:
                _forward_backward(*jobs[0])
            finally:
                serial_in_this_thread(False)
                for f in others:
                    f.result()
        for ex, _ in jobs[1:]:
            for name, g in self._lane_grads.items():
                if name in ex.grads:
                    np.add(g, ex.grads[name], out=g)
        losses = [self._io.scalar(ex.values[LOSS]) for ex, _ in jobs]
        return sum(loss * float(np.float32(w)) for loss, w in zip(losses, weights, strict=True))

    def _check_x(self, x: np.ndarray, limit: int | None) -> None:
        want = (*self._graph.input_shape,)
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
            raise DataError(f"x must be a float32 numpy array [n, {_dims(want)}], found {got}")
        if x.ndim != 1 + len(want) or x.shape[1:] != want or x.shape[0] < 1:
            raise DataError(f"x must have shape [n, {_dims(want)}], found {list(x.shape)}")
        if limit is not None and x.shape[0] > limit:
            raise DataError(f"batch of {x.shape[0]} exceeds the session's batch_size {limit}")

    def _feed_x(self, ex: Executor, x: np.ndarray) -> None:
        bad = count_nonfinite(np.ascontiguousarray(x).reshape(-1))
        if bad:
            raise DataError(f"x holds {bad} NaN/Inf value(s); clean or re-normalize the data")
        stored = ex.values[self._graph.input_name]
        self._io.put(stored, x, channel_major=stored.ndim == 4)

    def _check_y(self, y: np.ndarray, n: int) -> None:
        if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu":
            got = y.dtype if isinstance(y, np.ndarray) else type(y).__name__
            raise DataError(f"y must be an int64 numpy array of {n} labels, found {got}")
        if y.shape != (n,):
            raise DataError(f"y must have shape [{n}] to match x, found {list(y.shape)}")
        k = self._graph.num_classes
        if y.min() < 0 or y.max() >= k:
            raise DataError(f"labels must lie in [0, {k}), found [{y.min()}, {y.max()}]")


def _split(batch: int, parts: int) -> tuple[int, int]:
    """(micro-batch size, micro-batches) of a batch cut into at most `parts` even parts."""
    micro = -(-batch // parts)
    return micro, -(-batch // micro)


def _logical(a: np.ndarray) -> np.ndarray:
    """The ONNX view of a stored activation (rank 4: channel-major)."""
    return a.swapaxes(0, 1) if a.ndim == 4 else a


def _forward_backward(ex: Executor, seed: int) -> None:
    ex.forward(training=True, seed=seed)
    ex.backward()


def _lane_count(threads: int, batch_size: int, nodes: list[Node]) -> int:
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


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape)


def _check_options(batch_size: int, smoothing: float, threads: int | None) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise FactoEdgeError(f"batch_size must be a positive int, found {batch_size!r}")
    if not 0.0 <= smoothing < 1.0:
        raise FactoEdgeError(f"label_smoothing must lie in [0, 1), found {smoothing}")
    limit = numba.config.NUMBA_NUM_THREADS
    if threads is not None and not (isinstance(threads, int) and 1 <= threads <= limit):
        raise FactoEdgeError(f"threads must be an int in [1, {limit}], found {threads!r}")
