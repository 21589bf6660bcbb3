"""TrainingSession: train an exported model's trainable factors on the CPU.

    from facto_edge.runtime import TrainingSession
    s = TrainingSession("model.facto", batch_size=32, lr=0.01)
    loss = s.train_step(x, y)          # x float32 [n, C, H, W], y int64 [n], n <= batch_size
    logits = s.predict(x)

Every buffer (weights, gradients, optimizer state, activations, saved tensors, workspace)
is allocated once, through `TrainingSession._alloc`, when the session binds its schedule
for a batch size; steps reuse them. The loss is softmax cross-entropy averaged over the
batch (ONNX SoftmaxCrossEntropyLoss, reduction mean) with optional label smoothing.
"""

from __future__ import annotations

import math
from collections import Counter

import numba
import numpy as np

from facto_edge.errors import DataError, DeviceError, FactoEdgeError

from .bound import F32
from .codecs import get_codec
from .executor import Executor
from .graph import ModelSource, Node, build_schedule, load_graph
from .kernels.elementwise import count_nonfinite
from .optimizers import make_optimizer

LABELS, LOSS = "facto:labels", "facto:loss"
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
        codec: str = "fp32",
        label_smoothing: float = 0.0,
        seed: int = 0,
        threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        _check_options(batch_size, label_smoothing, threads, device)
        numba.set_num_threads(threads or numba.config.NUMBA_NUM_THREADS)
        self.batch_size = batch_size
        self._graph = load_graph(model_dir)
        self._codec = get_codec(codec)
        self._seed, self._step = seed, 0
        self._buffers: dict[str, tuple[np.ndarray, str]] = {}
        self._params = {
            name: self._place(name, value) for name, value in self._graph.initializers.items()
        }
        loss = Node(
            "SoftmaxCrossEntropyLoss",
            LOSS,
            (self._graph.output_name, LABELS),
            (LOSS,),
            {"reduction": "mean", "label_smoothing": float(label_smoothing)},
        )
        self._schedule = build_schedule([*self._graph.nodes, loss], self._graph.trainable, LOSS)
        self._executors: dict[int, Executor] = {}
        self._feedback: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        full = self._executor(batch_size)
        self._grads = {t: self._grad(full, t) for t in self._graph.trainable}
        self._optimizer = make_optimizer(
            optimizer,
            self.parameters(),
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            alloc=lambda name, shape, dtype: self._alloc(f"opt:{name}", shape, dtype, "optimizer"),
        )

    # Public API ------------------------------------------------------------------------

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimizer step on the batch (x, y); returns the mean loss before the step."""
        ex = self._run(x, y)
        self._optimizer.step(self._grads)
        for new, current in self._feedback[x.shape[0]]:
            np.copyto(current, new)
        self._step += 1
        return float(ex.values[LOSS])

    def compute_gradients(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[float, dict[str, np.ndarray]]:
        """The mean loss on (x, y) and a copy of the gradient of every trainable
        initializer, without updating anything."""
        ex = self._run(x, y)
        return float(ex.values[LOSS]), {name: g.copy() for name, g in self._grads.items()}

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits [n, classes] of x (any n; run in chunks of batch_size), eval mode."""
        self._check_x(x, limit=None)
        out = np.empty((x.shape[0], self._graph.num_classes), np.float32)
        for start in range(0, x.shape[0], self.batch_size):
            chunk = x[start : start + self.batch_size]
            ex = self._executor(chunk.shape[0])
            self._feed_x(ex, chunk)
            ex.forward(training=False, until=self._graph.output_name)
            logits = ex.logical(self._graph.output_name)
            out[start : start + chunk.shape[0]] = logits.reshape(chunk.shape[0], -1)
        return out

    def parameters(self) -> dict[str, np.ndarray]:
        """The trainable initializers by name: live arrays the optimizer updates in place."""
        return {name: self._params[name] for name in self._graph.trainable}

    @property
    def lr(self) -> float:
        """The optimizer's learning rate (settable)."""
        return self._optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._optimizer.lr = value

    def memory_report(self) -> dict:
        """Bytes held per kind of buffer (`<kind>_bytes`), and in all (`arena_bytes`)."""
        by_kind = Counter({kind: 0 for kind in REPORT_KEYS})
        for buf, kind in self._buffers.values():
            by_kind[kind] += buf.nbytes
        report = {key: by_kind[kind] for kind, key in REPORT_KEYS.items()}
        report["arena_bytes"] = sum(by_kind.values())
        return report | {"batch_size": self.batch_size, "codec": self._codec.name}

    # Binding ---------------------------------------------------------------------------

    def _alloc(self, name: str, shape: tuple[int, ...], dtype: np.dtype, kind: str) -> np.ndarray:
        """The one place buffers come from: a zeroed `shape` view named `name` of `kind`.
        A later request for the same name reuses that buffer (it must fit)."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if name not in self._buffers:
            self._buffers[name] = (np.zeros(max(nbytes, 1), np.uint8), kind)
        buf, have = self._buffers[name]
        assert have == kind and nbytes <= buf.size, (name, kind, have, nbytes, buf.size)
        return buf[:nbytes].view(dtype).reshape(shape)

    def _place(self, name: str, value: np.ndarray) -> np.ndarray:
        arr = self._alloc(f"param:{name}", value.shape, value.dtype, "weights")
        np.copyto(arr, value)
        return arr

    def _executor(self, n: int) -> Executor:
        if n not in self._executors:
            feeds = {
                self._graph.input_name: ((n, *self._graph.input_shape), F32),
                LABELS: ((n,), np.dtype(np.int64)),
            }
            ex = Executor(self._schedule, self._params, feeds, LOSS, self._codec, self._alloc)
            ex.grads[LOSS][...] = 1.0
            self._executors[n] = ex
            self._feedback[n] = self._running_stats(ex)
        return self._executors[n]

    def _grad(self, ex: Executor, name: str) -> np.ndarray:
        """The gradient buffer of a trainable initializer (zero if it cannot reach the loss)."""
        if name in ex.grads:
            return ex.grads[name]
        return self._alloc(f"grad:{name}", self._params[name].shape, F32, "grads")

    def _running_stats(self, ex: Executor) -> list[tuple[np.ndarray, np.ndarray]]:
        """(new, current) running mean/var of each training-mode BatchNormalization."""
        pairs = []
        for node in self._graph.nodes:
            if node.op_type != "BatchNormalization" or len(node.outputs) < 3:
                continue
            for out, inp in zip(node.outputs[1:3], node.inputs[3:5], strict=True):
                if out and inp in self._params:
                    pairs.append((ex.values[out], self._params[inp]))
        return pairs

    # Steps -----------------------------------------------------------------------------

    def _run(self, x: np.ndarray, y: np.ndarray) -> Executor:
        self._check_x(x, limit=self.batch_size)
        self._check_y(y, x.shape[0])
        ex = self._executor(x.shape[0])
        self._feed_x(ex, x)
        np.copyto(ex.values[LABELS], y, casting="unsafe")
        ex.forward(training=True, seed=(self._seed << 32) + (self._step << 12))
        ex.backward()
        return ex

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
        np.copyto(ex.logical(self._graph.input_name), x)
        bad = count_nonfinite(ex.values[self._graph.input_name].reshape(-1))
        if bad:
            raise DataError(f"x holds {bad} NaN/Inf value(s); clean or re-normalize the data")

    def _check_y(self, y: np.ndarray, n: int) -> None:
        if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu":
            got = y.dtype if isinstance(y, np.ndarray) else type(y).__name__
            raise DataError(f"y must be an int64 numpy array of {n} labels, found {got}")
        if y.shape != (n,):
            raise DataError(f"y must have shape [{n}] to match x, found {list(y.shape)}")
        k = self._graph.num_classes
        if y.min() < 0 or y.max() >= k:
            raise DataError(f"labels must lie in [0, {k}), found [{y.min()}, {y.max()}]")


def _dims(shape: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in shape)


def _check_options(batch_size: int, smoothing: float, threads: int | None, device: str) -> None:
    if device != "cpu":
        raise DeviceError(f"device {device!r} is not available; this runtime runs on 'cpu'")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise FactoEdgeError(f"batch_size must be a positive int, found {batch_size!r}")
    if not 0.0 <= smoothing < 1.0:
        raise FactoEdgeError(f"label_smoothing must lie in [0, 1), found {smoothing}")
    limit = numba.config.NUMBA_NUM_THREADS
    if threads is not None and not (isinstance(threads, int) and 1 <= threads <= limit):
        raise FactoEdgeError(f"threads must be an int in [1, {limit}], found {threads!r}")
