"""The optimizers on CUDA, mirroring runtime/optimizers.py: the same update rules (SGD with
momentum, Nesterov and L2 weight decay; AdamW as ONNX Runtime's adam_mode=1 with bias
correction), arithmetic in the parameters' dtype with every hyperparameter rounded to it
first, and state allocated once through `alloc(name, shape, dtype)` (device arrays).

`step(grads)` launches one kernel per parameter and copies nothing between host and
device; `state_dict()` / `load_state_dict()` copy the state to and from host arrays, so
a checkpoint written on one backend loads on the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
from numba import cuda

from ...errors import CheckpointError
from ...optimizers import AdamW as HostAdamW
from ...optimizers import StateValue, _check_nonneg, _fail, check_state_keys
from .elementwise import fill
from .launch import THREADS, blocks

Alloc = Callable[[str, tuple[int, ...], np.dtype], object]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@cuda.jit(cache=True)
def _sgd(p, g, lr, wd):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        d = g[i] + wd * p[i] if wd != 0 else g[i]
        p[i] = p[i] + -(lr * d)


@cuda.jit(cache=True)
def _sgd_momentum(p, g, buf, lr, wd, mu, nesterov):  # pragma: no cover - compiled
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        d = g[i] + wd * p[i] if wd != 0 else g[i]
        buf[i] = mu * buf[i] + d
        d = d + mu * buf[i] if nesterov else buf[i]
        p[i] = p[i] + -(lr * d)


@cuda.jit(cache=True)
def _adamw(p, g, m, v, lr, lr_t, b1, c1, b2, c2, eps, wd):  # pragma: no cover - compiled
    decay = lr * wd
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        m[i] = b1 * m[i] + c1 * g[i]
        v[i] = b2 * v[i] + c2 * g[i] * g[i]
        p[i] = p[i] - lr_t * m[i] / (math.sqrt(v[i]) + eps)
        p[i] = p[i] - decay * p[i]


def _check_params(params: Mapping) -> None:
    if not params:
        raise _fail("optimizer parameters", "at least one device array", params)
    for name, p in params.items():
        if not hasattr(p, "copy_to_host") or np.dtype(p.dtype) not in _DTYPES:
            raise _fail(f"parameter {name!r}", "a float32 or float64 device array", type(p))
        if not p.is_c_contiguous():
            raise _fail(f"parameter {name!r}", "a C-contiguous device array", p.shape)


class CudaOptimizer:
    """Updates device `params` in place from device gradients; owns its state arrays.
    The public API is that of runtime.optimizers.Optimizer."""

    def __init__(self, params: Mapping, lr: float, alloc: Alloc | None) -> None:
        _check_params(params)
        _check_nonneg("learning rate", lr)
        self.params = dict(params)
        self.lr = float(lr)
        self.step_count = 0
        self._alloc = alloc
        self._state: dict = {}
        self._flat_params = {k: p.reshape(-1) for k, p in self.params.items()}

    def _new_state(self, param: str, kind: str):
        """Allocates the zeroed state array `param.kind`, shaped like the parameter."""
        p, key = self.params[param], f"{param}.{kind}"
        a = self._alloc(key, p.shape, p.dtype) if self._alloc else cuda.device_array_like(p)
        if a.shape != p.shape or a.dtype != p.dtype or not a.is_c_contiguous():
            raise ValueError(f"alloc({key!r}): expected a C-contiguous {p.dtype} {p.shape}")
        fill(a, 0)
        self._state[key] = a.reshape(-1)
        return a

    def _flat_grads(self, grads: Mapping):
        """Yields (name, flat param, flat grad); a caller's mismatch is a ValueError."""
        if grads.keys() != self.params.keys():
            raise ValueError(
                f"gradients: expected one per parameter {sorted(self.params)}, got {sorted(grads)}"
            )
        for name, p in self.params.items():
            g = grads[name]
            if g.shape != p.shape or g.dtype != p.dtype or not g.is_c_contiguous():
                raise ValueError(
                    f"gradient of {name!r}: expected C-contiguous {p.dtype} "
                    f"{p.shape}, got {g.dtype} {g.shape}"
                )
            yield name, self._flat_params[name], g.reshape(-1)

    def state_bytes(self) -> int:
        """Bytes held by the optimizer state (not counting the parameters)."""
        return sum(a.size * a.dtype.itemsize for a in self._state.values())

    def state_dict(self) -> dict[str, StateValue]:
        """A host copy of the state: `step_count`, `lr` and every state array by name,
        each shaped like its parameter."""
        d: dict[str, StateValue] = {"step_count": self.step_count, "lr": self.lr}
        for key, a in self._state.items():
            d[key] = a.copy_to_host().reshape(self.params[key.rsplit(".", 1)[0]].shape)
        return d

    def load_state_dict(self, d: Mapping[str, StateValue]) -> None:
        """Restores a `state_dict()` into the existing device state arrays."""
        check_state_keys(d, self._state)
        for key, a in self._state.items():
            src = np.asarray(d[key])
            if src.size != a.size or src.dtype != a.dtype:
                raise CheckpointError(
                    f"optimizer state {key!r}: expected {a.dtype} of {a.size} values, "
                    f"got {src.dtype} {src.shape}"
                )
        for key, a in self._state.items():
            a.copy_to_device(np.ascontiguousarray(d[key]).reshape(-1))
        self.step_count = int(d["step_count"])
        self.lr = float(d["lr"])


class SGD(CudaOptimizer):
    """SGD with optional momentum, Nesterov momentum and L2 weight decay (torch rule)."""

    def __init__(self, params, *, lr, momentum, nesterov, weight_decay, alloc=None):
        super().__init__(params, lr, alloc)
        _check_nonneg("momentum", momentum)
        _check_nonneg("weight decay", weight_decay)
        if nesterov and momentum == 0:
            raise _fail("nesterov=True", "momentum > 0", momentum)
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        if momentum != 0:
            for name in self.params:
                self._new_state(name, "momentum")

    def step(self, grads: Mapping) -> None:
        """Applies one update to every parameter from `grads` (same names and shapes)."""
        for name, p, g in self._flat_grads(grads):
            f = np.dtype(p.dtype).type
            lr, wd = f(self.lr), f(self.weight_decay)
            if self.momentum == 0:
                _sgd[blocks(p.size), THREADS](p, g, lr, wd)
            else:
                buf = self._state[f"{name}.momentum"]
                args = (p, g, buf, lr, wd, f(self.momentum), bool(self.nesterov))
                _sgd_momentum[blocks(p.size), THREADS](*args)
        self.step_count += 1


class AdamW(CudaOptimizer):
    """AdamW as ONNX Runtime's AdamWOptimizer, adam_mode=1, with bias correction."""

    _scalars = HostAdamW._scalars  # the host rule's scalars, rounded to the dtype

    def __init__(self, params, *, lr, betas, eps, weight_decay, alloc=None):
        super().__init__(params, lr, alloc)
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

    def step(self, grads: Mapping) -> None:
        """Applies one update to every parameter from `grads` (same names and shapes)."""
        for name, p, g in self._flat_grads(grads):
            m, v = self._state[f"{name}.m"], self._state[f"{name}.v"]
            scalars = self._scalars(np.dtype(p.dtype))
            _adamw[blocks(p.size), THREADS](p, g, m, v, *scalars)
        self.step_count += 1


def make_optimizer(
    name: str,
    params: dict,
    *,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    alloc: Alloc | None = None,
) -> CudaOptimizer:
    """Builds the optimizer `name` ("sgd" or "adamw") over device `params`, updated in
    place; the arguments are those of runtime.optimizers.make_optimizer."""
    if name == "sgd":
        return SGD(
            params,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            alloc=alloc,
        )
    if name == "adamw":
        return AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, alloc=alloc)
    raise _fail("optimizer name", "one of 'sgd', 'adamw'", name)
