"""Optimizers that update parameter arrays in place, with state allocated once.

`make_optimizer(name, params, lr=...)` returns an `Optimizer` for "sgd" or "adamw";
`lr_scales` ({name: multiplier}, default 1) gives tensors a learning rate of their own,
multiplier * lr, rounded to the parameters' dtype as lr is (runtime/param_groups.py). Every
state array (momentum buffer, Adam moments) is allocated at construction through
`alloc(name, shape, dtype)` (default: the backend's own), so that a memory arena can own
it; `step()` runs kernels that write into the parameters and that state and allocates
nothing. Arithmetic happens in the parameters' dtype (float32 or float64), with every
hyperparameter rounded to that dtype first, as ONNX Runtime does.

The rules, their checks and the state are written here once, for every backend: a backend
supplies its kernels (`kernels=`), a module with the names of
runtime/kernels/optimizer_kernels.py (the CPU's, the default): one update kernel per rule
over flat arrays of its device, and its array handling (allocation, fill, host copies).
runtime/kernels/cuda/optimizers.py is the CUDA one; state_dict() holds host arrays on
every backend, so a checkpoint written on one loads on the other.

The rules are those of ONNX Runtime training 1.19.2 (`SGDOptimizerV2` and
`AdamWOptimizer` in orttraining/training_ops/cpu/optimizer), so that a run here follows a
run of the `ort/` artifacts step for step. With t = step_count + 1 (ORT feeds step + 1):

SGD, PyTorch's torch.optim.SGD convention (dampening 0), g the gradient:
    g <- g + weight_decay * p                       (if weight_decay != 0)
    buf <- momentum * buf + g                       (if momentum != 0; buf starts at 0)
    g <- g + momentum * buf if nesterov else buf    (if momentum != 0)
    p <- p - lr * g
With momentum=0 and weight_decay=0 this is ORT's `SGDOptimizerV2`, which has neither:
`p <- p + (-lr * g)`. Note that our default momentum is 0.9: pass momentum=0.0 to match
ORT's OptimType.SGD.

AdamW, ORT's `AdamWOptimizer` with adam_mode=1 ("Hugging Face" AdamW) and
correct_bias=1, which is what OptimType.AdamW generates (b1, b2 = betas):
    m <- b1 * m + (1 - b1) * g
    v <- b2 * v + ((1 - b2) * g) * g
    bc1 = 1 - float(b1 ** t),  bc2 = 1 - float(b2 ** t)   (power in double, then rounded)
    lr_t = lr * (sqrt(bc2) / bc1)
    p <- p - (lr_t * m) / (sqrt(v) + eps)
    p <- p - (lr * weight_decay) * p                (decay after the update, plain lr)
ORT's x86 CPU kernel evaluates sqrt(v) with Eigen's fast-math packet sqrt (rsqrtps plus one
Newton step, 1-2 ulp off and CPU-dependent); we round sqrt exactly, so AdamW agrees with
ORT to ~1e-7 relative per step rather than bit for bit. SGD agrees bit for bit.
It differs from torch.optim.AdamW (adam_mode=0) in two places: torch decays before the
update (p <- p * (1 - lr * wd)) and adds eps to sqrt(v / bc2) rather than to sqrt(v);
per step they differ by about lr**2 * wd + lr * eps / sqrt(bc2 * v).

Defaults of ORT's generate_artifacts(..., optimizer=OptimType.AdamW) (onnxblock.optim.AdamW):
betas=(0.9, 0.999), eps=1e-6 (ours is 1e-8: pass eps=1e-6 to match), weight_decay=0.0,
bias correction on, adam_mode=1. Other values need an `onnxblock.optim.AdamW(...)` block
passed as `optimizer=`. Neither artifact stores a learning rate: ORT's training Optimizer
starts at lr=0.001 (GroupOptimizerState.initial_lr) and is changed with
`onnxruntime.training.api.Optimizer.set_learning_rate(lr)` (read back with
`get_learning_rate()`) before each `step()`, or by its `LinearLRScheduler`. ORT's step
counter starts at 0 and grows by one per successful `step()`, as `step_count` does here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import ModuleType

import numpy as np

from .errors import CheckpointError, FactoEdgeError
from .kernels import optimizer_kernels as cpu_kernels

Alloc = Callable[[str, tuple[int, ...], np.dtype], np.ndarray]
StateValue = np.ndarray | int | float

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _fail(what: str, expected: str, found: object) -> FactoEdgeError:
    return FactoEdgeError(f"{what}: expected {expected}, got {found!r}")


def _check_params(params: Mapping[str, np.ndarray], k: ModuleType) -> None:
    if not params:
        raise _fail("optimizer parameters", "at least one array", params)
    for name, p in params.items():
        if not k.is_array(p) or np.dtype(p.dtype) not in _DTYPES:
            raise _fail(f"parameter {name!r}", f"a float32 or float64 {k.ARRAY}", type(p))
        if not (p.flags["C_CONTIGUOUS"] and k.writeable(p)):
            raise _fail(f"parameter {name!r}", "a writeable C-contiguous array", p.flags)


def _check_nonneg(what: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise _fail(what, "a finite number >= 0", value)


class Optimizer(ABC):
    """Updates `params` in place from gradients with the kernels `kernels`; owns its
    state arrays.

    `lr` may be changed between steps (a schedule sets it); parameter `name` steps with
    `lr * lr_scales.get(name, 1)`. `step_count` counts the steps taken.
    `state_dict()` / `load_state_dict()` round-trip exactly, so that a run
    resumed from them continues bit for bit.
    """

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float,
        alloc: Alloc | None,
        kernels: ModuleType,
        lr_scales: Mapping[str, float] | None = None,
    ):
        _check_params(params, kernels)
        _check_nonneg("learning rate", lr)
        self.params = dict(params)
        self.lr = float(lr)
        self.lr_scales = {name: 1.0 for name in self.params}
        for name, scale in (lr_scales or {}).items():
            if name not in self.params:
                raise _fail("lr_scales", f"names of parameters {sorted(self.params)}", name)
            _check_nonneg(f"learning-rate multiplier of {name!r}", scale)
            self.lr_scales[name] = float(scale)
        self.step_count = 0
        self._kernels = kernels
        self._alloc = alloc
        self._state: dict[str, np.ndarray] = {}
        self._flat_state: dict[str, np.ndarray] = {}
        self._flat_params = {k: p.reshape(-1) for k, p in self.params.items()}

    def _new_state(self, param: str, kind: str) -> np.ndarray:
        """Allocates the zeroed state array `param.kind`, shaped like the parameter."""
        p, key = self.params[param], f"{param}.{kind}"
        a = (
            self._alloc(key, p.shape, p.dtype)
            if self._alloc
            else self._kernels.empty(p.shape, p.dtype)
        )
        if a.shape != p.shape or a.dtype != p.dtype or not a.flags["C_CONTIGUOUS"]:
            raise ValueError(
                f"alloc({key!r}): expected a C-contiguous {p.dtype} {p.shape}, got {a!r}"
            )
        self._kernels.fill(a, 0)
        self._state[key] = a
        self._flat_state[key] = a.reshape(-1)
        return a

    def _lr(self, name: str, dtype: np.dtype) -> np.floating:
        """The learning rate of parameter `name` in `dtype` (exactly lr at multiplier 1)."""
        return dtype.type(self.lr * self.lr_scales[name])

    def _flat_grads(self, grads: Mapping[str, np.ndarray]):
        """Yields (name, flat param, flat grad); a caller's mismatch is a ValueError."""
        if grads.keys() != self.params.keys():
            raise ValueError(
                f"gradients: expected one per parameter {sorted(self.params)}, got {sorted(grads)}"
            )
        for name, p in self.params.items():
            g = grads[name]
            if g.shape != p.shape or g.dtype != p.dtype or not g.flags["C_CONTIGUOUS"]:
                raise ValueError(
                    f"gradient of {name!r}: expected C-contiguous {p.dtype} "
                    f"{p.shape}, got {g.dtype} {g.shape}"
                )
            yield name, self._flat_params[name], g.reshape(-1)

    @abstractmethod
    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """Applies one update to every parameter from `grads` (same names and shapes)."""

    def state_bytes(self) -> int:
        """Bytes held by the optimizer state (not counting the parameters)."""
        return sum(a.size * a.dtype.itemsize for a in self._state.values())

    def state_dict(self) -> dict[str, StateValue]:
        """A host copy of the state: `step_count`, `lr` and every state array by name."""
        d: dict[str, StateValue] = {"step_count": self.step_count, "lr": self.lr}
        d.update({k: self._kernels.to_host(a) for k, a in self._state.items()})
        return d

    def load_state_dict(self, d: Mapping[str, StateValue]) -> None:
        """Restores a `state_dict()` into the existing state arrays (no reallocation)."""
        check_state_keys(d, self._state)
        for key, a in self._state.items():
            src = np.asarray(d[key])
            if src.shape != a.shape or src.dtype != a.dtype:
                raise CheckpointError(
                    f"optimizer state {key!r}: expected {a.dtype} {a.shape}, "
                    f"got {src.dtype} {src.shape}"
                )
        for key, a in self._state.items():
            self._kernels.from_host(a, np.ascontiguousarray(d[key]))
        self.step_count = int(d["step_count"])
        self.lr = float(d["lr"])


class SGD(Optimizer):
    """SGD with optional momentum, Nesterov momentum and L2 weight decay (torch rule)."""

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        *,
        lr: float,
        momentum: float,
        nesterov: bool,
        weight_decay: float,
        alloc: Alloc | None = None,
        kernels: ModuleType = cpu_kernels,
        lr_scales: Mapping[str, float] | None = None,
    ):
        super().__init__(params, lr, alloc, kernels, lr_scales)
        if not (math.isfinite(momentum) and 0 <= momentum < 1):
            raise _fail("momentum", "a number in [0, 1)", momentum)
        _check_nonneg("weight decay", weight_decay)
        if nesterov and momentum == 0:
            raise _fail("nesterov=True", "momentum > 0", momentum)
        self.momentum, self.nesterov, self.weight_decay = momentum, bool(nesterov), weight_decay
        if momentum != 0:
            for name in self.params:
                self._new_state(name, "momentum")

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        k = self._kernels
        for name, p, g in self._flat_grads(grads):
            f = p.dtype.type
            lr, wd = self._lr(name, p.dtype), f(self.weight_decay)
            if self.momentum == 0:
                k.sgd(p, g, lr, wd)
            else:
                buf, mu = self._flat_state[f"{name}.momentum"], f(self.momentum)
                k.sgd_momentum(p, g, buf, lr, wd, mu, self.nesterov)
        self.step_count += 1


class AdamW(Optimizer):
    """AdamW as ONNX Runtime's AdamWOptimizer, adam_mode=1, with bias correction."""

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        alloc: Alloc | None = None,
        kernels: ModuleType = cpu_kernels,
        lr_scales: Mapping[str, float] | None = None,
    ):
        super().__init__(params, lr, alloc, kernels, lr_scales)
        b1, b2 = betas
        for what, b in (("beta1", b1), ("beta2", b2)):
            if not 0 <= b < 1:
                raise _fail(what, "a number in [0, 1)", b)
        _check_nonneg("eps", eps)
        _check_nonneg("weight decay", weight_decay)
        self.betas, self.eps, self.weight_decay = (float(b1), float(b2)), eps, weight_decay
        for name in self.params:
            self._new_state(name, "m")
            self._new_state(name, "v")

    def _scalars(self, name: str, dtype: np.dtype) -> tuple:
        """The kernel's scalars for parameter `name` in `dtype`, rounded as ORT's float
        kernel rounds them."""
        f = dtype.type
        b1, b2, lr = f(self.betas[0]), f(self.betas[1]), self._lr(name, dtype)
        t = self.step_count + 1
        bc1 = f(1) - f(float(b1) ** t)
        bc2 = f(1) - f(float(b2) ** t)
        lr_t = lr * (np.sqrt(bc2) / bc1)
        return lr, lr_t, b1, f(1) - b1, b2, f(1) - b2, f(self.eps), f(self.weight_decay)

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        k = self._kernels
        for name, p, g in self._flat_grads(grads):
            m, v = self._flat_state[f"{name}.m"], self._flat_state[f"{name}.v"]
            k.adamw(p, g, m, v, *self._scalars(name, p.dtype))
        self.step_count += 1


def check_state_keys(d: Mapping[str, StateValue], state: Mapping[str, object]) -> None:
    """Raise CheckpointError unless `d` holds exactly step_count, lr and the state arrays."""
    expected = {"step_count", "lr", *state}
    if set(d) != expected:
        raise CheckpointError(
            f"optimizer state: expected keys {sorted(expected)}, got {sorted(d)}; "
            "was it saved by another optimizer or model?"
        )


def make_optimizer(
    name: str,
    params: dict[str, np.ndarray],
    *,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    alloc: Alloc | None = None,
    kernels: ModuleType = cpu_kernels,
    lr_scales: Mapping[str, float] | None = None,
) -> Optimizer:
    """Builds the optimizer `name` ("sgd" or "adamw") over `params`, updated in place.

    `momentum` and `nesterov` apply to "sgd" only, `betas` and `eps` to "adamw" only;
    `weight_decay` is L2 (added to the gradient) for "sgd" and decoupled for "adamw".
    State arrays come from `alloc(name, shape, dtype)` (default: the backend's own), once. `kernels`
    is the backend's (default the CPU's, runtime/kernels/optimizer_kernels.py).
    `lr_scales` multiplies the learning rate of the parameters it names.
    """
    backend = {"alloc": alloc, "kernels": kernels, "lr_scales": lr_scales}
    if name == "sgd":
        return SGD(
            params,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            **backend,
        )
    if name == "adamw":
        return AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **backend)
    raise _fail("optimizer name", "one of 'sgd', 'adamw'", name)
