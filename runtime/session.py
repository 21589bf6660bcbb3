"""TrainingSession: train an exported model's trainable factors on the CPU or a CUDA GPU.

    from facto_edge.runtime import TrainingSession
    s = TrainingSession("model.facto", batch_size=32, lr=0.01)
    loss = s.train_step(x, y)          # x float32 [n, C, H, W], y int64 [n], n <= batch_size
    logits = s.predict(x)

Every buffer (weights, gradients, optimizer state, activations, saved tensors, workspace)
comes from a `Binding` (runtime/binding.py) and lives in one arena planned ahead
(runtime/memory.py): a dry run binds into a recorder and notes every buffer and its
lifetime, the planner places them, and a new binding hands out views of the arena; steps
reuse them and allocate nothing. Companions such as the replay buffer take their buffers
from the same allocator through `allocate`. The loss is softmax cross-entropy averaged
over the batch (ONNX SoftmaxCrossEntropyLoss, reduction mean) with optional label
smoothing.

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
(runtime/fitting.py), and raises BudgetError, naming the smallest budget that fits, when
even one sample per micro-batch does not. `accumulate=k` asks for k micro-batches per step
outright. The micro-batches' gradients add up to those of the mean loss over the whole
batch, as one big batch gives (batch-statistics BatchNormalization excepted: it sees each
micro-batch alone, as in PyTorch).

Threads: the batch is cut into lanes, one per thread (runtime/lanes.py).

Codec rounding: `rounding="stochastic"` makes the q8/q4/q2 codecs round unbiased, from a
stream seeded by the session's seed, step and lane (deterministic); default nearest.

Learning rates per group: `lr_groups={"bn": 10, "head": 0.5}` multiplies the learning
rate of the tensors of those groups (`param_groups`: factors, bias, bn, head; the
schedule sets the base `lr` for all), runtime/param_groups.py.

Some layers only: `train_layers=["layers.2.conv1", ...]` (names of the manifest's layers)
trains only those layers' tensors; the rest stay frozen and keep no saved tensors for
themselves (runtime/graph.restrict_trainable). `runtime/importance.select_layers` chooses
them by gradient importance per saved byte.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Callable, Sequence

import numba
import numpy as np

from . import session_io
from .binding import LOSS, Binding, Spec, loss_node, running_stat_names
from .codecs import ROUNDINGS
from .device import resolve_device
from .errors import DataError, FactoEdgeError
from .fitting import Fit, fit_batch, room_for, split
from .graph import ModelSource, build_schedule, load_graph
from .kernels import blas
from .kernels.layout import logical
from .lanes import lane_pool, run_micro
from .memory import ArenaAllocator, MemoryPlan, Recorder, plan_memory
from .param_groups import check_lr_groups, lr_scales, param_groups
from .preload import load_both_builds, release_compiler_pages, releasing_while_loading
from .prepare import compiled_in_process, ensure_kernels
from .rss import peak_rss_bytes

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
        rounding: str = "nearest",
        label_smoothing: float = 0.0,
        seed: int = 0,
        threads: int | None = None,
        device: str = "cpu",
        budget: int | str | None = None,
        accumulate: int | None = None,
        compile: str | None = None,
        lr_groups: dict[str, float] | None = None,
        train_layers: Sequence[str] | None = None,
    ) -> None:
        _check_options(batch_size, label_smoothing, threads)
        _check_rounding(codec, rounding)
        multipliers = check_lr_groups(lr_groups)
        backend = resolve_device(device)
        if accumulate is not None and not (isinstance(accumulate, int) and accumulate >= 1):
            raise FactoEdgeError(f"accumulate must be a positive int, found {accumulate!r}")
        threads = threads or numba.config.NUMBA_NUM_THREADS
        numba.set_num_threads(threads)
        self.batch_size = batch_size
        graph = load_graph(model_dir, train_layers)
        self._source, self._callbacks = model_dir, []
        self._kernels = None  # with a budget: load kernels only (runtime/prepare.py)
        if budget is not None and backend.name == "cpu":
            self._kernels = ensure_kernels(graph, model_dir, codec, optimizer, compile)
        self._seed, self._step, self._closed = seed, 0, False
        self._rounding = rounding
        self._groups = param_groups(graph)
        options = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                   "betas": betas, "eps": eps,
                   "lr_scales": lr_scales(self._groups, multipliers)}  # fmt: skip
        schedule = build_schedule(
            [*graph.nodes, loss_node(graph, label_smoothing)], graph.trainable, LOSS
        )
        self._spec = Spec(
            graph, schedule, backend, backend.get_codec(codec, rounding=rounding), threads,
            (optimizer, options), running_stat_names(graph),
        )  # fmt: skip
        self._plans: dict[tuple[int, int], MemoryPlan] = {}
        with releasing_while_loading():  # the kernels binding and the warm run load
            self._fit, micro, parts = self._fit_budget(batch_size, budget, accumulate)
            self._load_kernels()
        memory = ArenaAllocator(self._plan(micro, parts), device)
        self._binding = Binding(self._spec, memory, backend, micro, parts)
        graph.initializers = dict(self._binding.params)  # frees the loaded copies
        self._pool = lane_pool(self._binding.lanes)

    # Public API ------------------------------------------------------------------------

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimizer step on the batch (x, y); returns the mean loss before the step."""
        loss = self._run(x, y, update_stats=True)
        self._binding.optimizer.step(self._binding.grads)
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
        b = self._binding
        return loss, {name: b.io.get(g) for name, g in b.grads.items()}

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits [n, classes] of x (any n; run in chunks of batch_size), eval mode."""
        self._require_open()
        self._check_x(x, limit=None)
        b, graph = self._binding, self._spec.graph
        out = np.empty((x.shape[0], graph.num_classes), np.float32)
        chunk_size = -(-b.micro // b.lanes)  # what lane 0 holds
        for start in range(0, x.shape[0], chunk_size):
            chunk = x[start : start + chunk_size]
            ex = b.executor(chunk.shape[0])
            b.feed_x(ex, chunk)
            ex.forward(training=False, until=graph.output_name)
            logits = b.io.get(ex.values[graph.output_name])
            rows = logical(logits, logits.ndim == 4).reshape(chunk.shape[0], -1)
            out[start : start + chunk.shape[0]] = rows
        return out

    def parameters(self) -> dict[str, np.ndarray]:
        """The trainable initializers by name: live arrays the optimizer updates in place
        (device arrays on cuda)."""
        self._require_open()
        return self._binding.trainable()

    def buffers(self) -> dict[str, np.ndarray]:
        """Non-trainable state that training updates, by name: the running mean and
        variance of training-mode BatchNormalizations (live arrays, on the device)."""
        self._require_open()
        return self._binding.running()

    @property
    def param_groups(self) -> dict[str, str]:
        """The learning-rate group (factors, bias, bn, head) of every trainable
        initializer (runtime/param_groups.py)."""
        return dict(self._groups)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. (3, 32, 32)."""
        return self._spec.graph.input_shape

    @property
    def num_classes(self) -> int:
        return self._spec.graph.num_classes

    @property
    def classes(self) -> list[str] | None:
        """The class names the model was exported with, if any."""
        return self._spec.graph.manifest.classes

    @property
    def codec_name(self) -> str:
        return self._spec.codec.name

    @property
    def rounding(self) -> str:
        """How the block codecs round: nearest, or stochastic (unbiased, seeded by the
        session's seed, step and lane: runtime/codecs.py)."""
        return self._rounding

    @property
    def threads(self) -> int:
        return self._spec.threads

    @property
    def fit(self) -> Fit | None:
        """How the session fits its budget (None when made without one)."""
        return self._fit

    @property
    def binding(self) -> Binding:
        """The buffers the session trains in (runtime/binding.py), for profilers and tests."""
        self._require_open()
        return self._binding

    def allocate(self, name: str, shape: tuple[int, ...], dtype, kind: str) -> np.ndarray:
        """A zeroed buffer `name` of `kind` for a companion of the session (a replay
        buffer, a stream's staging batch), from the session's allocator: outside the
        planned arena, counted in memory_report()'s `unplanned_bytes`."""
        self._require_open()
        return self._binding.alloc(name, shape, dtype, kind)

    @property
    def optimizer(self):
        """The optimizer (runtime/optimizers.py): its state_dict() goes into checkpoints."""
        return self._binding.optimizer

    @property
    def step(self) -> int:
        """Optimizer steps taken; it seeds stochastic codec rounding (settable, to resume)."""
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        if not (isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 0):
            raise FactoEdgeError(f"step must be an integer >= 0, found {value!r}")
        self._step = int(value)

    @property
    def lr(self) -> float:
        """The optimizer's learning rate (settable: a finite number >= 0)."""
        self._require_open()
        return self._binding.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._require_open()
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not (ok and math.isfinite(value) and value >= 0):
            raise FactoEdgeError(f"lr must be a finite number >= 0, found {value!r}")
        self._binding.optimizer.lr = float(value)

    @property
    def memory_plan(self) -> MemoryPlan:
        """The arena plan the session's buffers live in (runtime/memory.py)."""
        self._require_open()
        return self._binding.memory.plan

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
            "unplanned_bytes": sum(self._binding.memory.unplanned.values()),
            "batch_size": self.batch_size,
            "micro_batch": self._binding.micro,
            "accumulate": self._binding.accumulate,
            "codec": self.codec_name,
            "device": self._spec.backend.name,
            "device_arena_bytes": plan.arena_bytes if self._spec.backend.name != "cpu" else 0,
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
        statistics, optimizer state and step (runtime/checkpoint.py format).

        Parameters
        ----------
        directory : str or os.PathLike
            Folder to write into (created if missing).

        Returns
        -------
        str
            Path of the checkpoint file.
        """
        self._require_open()
        return str(session_io.save(self, directory, self._source))

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
        self._require_open()
        session_io.load(self, directory, self._source)

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
        self._require_open()
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
        self._pool = self._binding = None
        self._spec.graph.initializers = {}
        self._closed = True

    def __enter__(self) -> TrainingSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._closed:
            raise FactoEdgeError("this TrainingSession was closed; create a new one")

    # Planning and fitting --------------------------------------------------------------

    def _plan(self, micro: int, accumulate: int) -> MemoryPlan:
        """The arena plan of binding for micro-batches of `micro` (a dry run on host
        buffers, cached)."""
        if (micro, accumulate) not in self._plans:
            b = Binding(self._spec, Recorder(), resolve_device("cpu"), micro, accumulate)
            self._plans[micro, accumulate] = plan_memory(b.memory, b.first, b.steps())
        return self._plans[micro, accumulate]

    def _fit_budget(
        self, batch: int, budget: int | str | None, accumulate: int | None
    ) -> tuple[Fit | None, int, int]:
        """(fit, micro-batch size, micro-batches per step): `accumulate` as given (default
        1) or, with a budget, the fewest micro-batches that fit (runtime/fitting.py)."""
        if budget is None:
            return None, *split(batch, accumulate or 1)
        room = room_for(budget, self._spec.backend.name, self._spec.codec.name)
        what = f"codec {self._spec.codec.name}"
        fit = fit_batch(batch, room, lambda m, k: self._plan(m, k).arena_bytes, accumulate, what)
        return fit, fit.micro_batch, fit.accumulate

    def _load_kernels(self) -> None:
        """Before the arena exists, run a step (training, evaluation, optimizer) of one
        zero sample in a throwaway arena so that every kernel a step calls is loaded
        (the parallel builds too, with more than one thread), then give the compiler's
        pages back (runtime/preload.py): the process then peaks at its start-up or at
        its steady state with the arena, not at their sum.
        BLAS runs on one thread here: a sample's matmuls are tiny, and handing them to
        threads another process keeps off the cores cost 100x their time."""
        if self._spec.backend.name != "cpu":
            return
        spec = dataclasses.replace(self._spec, threads=1)
        b = Binding(spec, ArenaAllocator(self._plan(1, 1)), spec.backend, 1, 1)
        x = np.zeros((1, *spec.graph.input_shape), np.float32)
        run_micro(b, None, x, np.zeros(1, np.int64), 1, (self._seed, self._step, 0))
        spec.backend.check_codec(spec.codec)
        with blas.threads(1):
            b.first[0].forward(training=False, until=spec.graph.output_name)
        b.optimizer.step(b.lane_grads)
        if self._spec.threads > 1:  # one thread runs serial builds only (kernels/dispatch.py)
            load_both_builds()
        del b
        release_compiler_pages()

    # Steps -----------------------------------------------------------------------------

    def _run(self, x: np.ndarray, y: np.ndarray, update_stats: bool = False) -> float:
        """Forward and backward of (x, y), in micro-batches: the mean loss, with the
        parameter gradients of the mean loss in the binding's `grads`. `update_stats`
        moves the running statistics of training-mode BatchNormalizations forward."""
        self._require_open()
        self._check_x(x, limit=self.batch_size)
        self._check_y(y, x.shape[0])
        b = self._binding
        n, loss = x.shape[0], 0.0
        for part, start in enumerate(range(0, n, b.micro)):
            stop = start + b.micro
            seeds = (self._seed, self._step, part * b.lanes)
            loss += run_micro(b, self._pool, x[start:stop], y[start:stop], n, seeds)
            if update_stats:
                for new, current in b.feedback.get(min(stop, n) - start, ()):
                    b.io.copy(new, current)
            if b.grads is not b.lane_grads:
                for name, acc in b.grads.items():
                    if part:
                        b.io.accumulate(acc, b.lane_grads[name])
                    else:
                        b.io.copy(b.lane_grads[name], acc)
        self._spec.backend.check_codec(self._spec.codec)
        return loss

    def _check_x(self, x: np.ndarray, limit: int | None) -> None:
        want = (*self.input_shape,)
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
            raise DataError(f"x must be a float32 numpy array [n, {_dims(want)}], found {got}")
        if x.ndim != 1 + len(want) or x.shape[1:] != want or x.shape[0] < 1:
            raise DataError(f"x must have shape [n, {_dims(want)}], found {list(x.shape)}")
        if limit is not None and x.shape[0] > limit:
            raise DataError(f"batch of {x.shape[0]} exceeds the session's batch_size {limit}")

    def _check_y(self, y: np.ndarray, n: int) -> None:
        if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu":
            got = y.dtype if isinstance(y, np.ndarray) else type(y).__name__
            raise DataError(f"y must be an int64 numpy array of {n} labels, found {got}")
        if y.shape != (n,):
            raise DataError(f"y must have shape [{n}] to match x, found {list(y.shape)}")
        k = self.num_classes
        if y.min() < 0 or y.max() >= k:
            raise DataError(f"labels must lie in [0, {k}), found [{y.min()}, {y.max()}]")


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape)


def _check_rounding(codec: str, rounding: str) -> None:
    """Stochastic rounding is a choice of the block codecs (q8, q4, q2) only."""
    if rounding not in ROUNDINGS:
        raise FactoEdgeError(f"rounding must be one of {', '.join(ROUNDINGS)}, found {rounding!r}")
    if rounding == "stochastic" and not str(codec).startswith("q"):
        raise FactoEdgeError(
            f"stochastic rounding applies to the q8, q4 and q2 codecs, not {codec!r}; "
            "pick one of them or leave rounding at nearest"
        )


def _check_options(batch_size: int, smoothing: float, threads: int | None) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise FactoEdgeError(f"batch_size must be a positive int, found {batch_size!r}")
    if not 0.0 <= smoothing < 1.0:
        raise FactoEdgeError(f"label_smoothing must lie in [0, 1), found {smoothing}")
    limit = numba.config.NUMBA_NUM_THREADS
    if threads is not None and not (isinstance(threads, int) and 1 <= threads <= limit):
        raise FactoEdgeError(f"threads must be an int in [1, {limit}], found {threads!r}")


release_compiler_pages()  # what importing numba and the kernel modules touched of LLVM
