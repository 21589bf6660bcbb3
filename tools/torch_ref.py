"""PyTorch reference of an exported model: model.onnx run with torch.nn.functional, the
manifest's trainable initializers as leaf tensors that require grad and every other
initializer frozen. It is the oracle of the runtime's gradient tests and the PyTorch side
of tools/bench_runtime.py ("PyTorch training the same factorized model").

    ref = TorchReference.load("model.facto")
    loss = F.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()            # ref.grads() -> {name: ndarray}
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

Fn = Callable[[dict, list], torch.Tensor]


def _pair_pads(a: dict) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """(symmetric padding, or None and the explicit F.pad of asymmetric pads)."""
    t, l, b, r = a.get("pads", (0, 0, 0, 0))
    if (t, l) == (b, r):
        return (t, l), None
    return (0, 0), (l, r, t, b)


def _one_d(fn2d: Fn) -> Fn:
    """A 2-D op applied to an (N, C, L) input as its twin over H=1, as the runtime does."""

    def fn(a: dict, x: list) -> torch.Tensor:
        if x[0].dim() != 3:
            return fn2d(a, x)
        a2 = {
            k: v for k, v in a.items() if k not in ("kernel_shape", "strides", "dilations", "pads")
        }
        for key in ("kernel_shape", "strides", "dilations"):
            if key in a:
                a2[key] = (1, *a[key])
        if "pads" in a:
            a2["pads"] = (0, a["pads"][0], 0, a["pads"][1])
        w = [x[1].unsqueeze(2)] if len(x) > 1 and x[1].dim() == 3 else x[1:2]
        return fn2d(a2, [x[0].unsqueeze(2), *w, *x[2:]]).squeeze(2)

    return fn


def _conv(a: dict, x: list) -> torch.Tensor:
    padding, explicit = _pair_pads(a)
    inp = F.pad(x[0], explicit) if explicit else x[0]
    bias = x[2] if len(x) > 2 else None
    return F.conv2d(
        inp, x[1], bias, a.get("strides", (1, 1)), padding, a.get("dilations", (1, 1)),
        a.get("group", 1),
    )  # fmt: skip


def _gemm(a: dict, x: list) -> torch.Tensor:
    left = x[0].T if a.get("transA") else x[0]
    right = x[1].T if a.get("transB") else x[1]
    y = a.get("alpha", 1.0) * (left @ right)
    return y + a.get("beta", 1.0) * x[2] if len(x) > 2 else y


def _clip(a: dict, x: list) -> torch.Tensor:
    """Clip with nn.ReLU6's (F.hardtanh's) gradient, as the runtime and ONNX Runtime
    have it: none at the bounds themselves (torch.clamp would pass one there, and a
    ReLU6 after a depthwise conv of an all-zero window meets its lower bound exactly)."""
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    inside = torch.ones_like(x[0], dtype=torch.bool)
    if lo is not None:
        inside &= x[0] > lo
    if hi is not None:
        inside &= x[0] < hi
    return torch.where(inside, x[0], torch.clamp(x[0], lo, hi).detach())


def _prelu(a: dict, x: list) -> torch.Tensor:
    return torch.where(x[0] > 0, x[0], x[0] * x[1])


def _maxpool(a: dict, x: list) -> torch.Tensor:
    padding, explicit = _pair_pads(a)
    inp = F.pad(x[0], explicit, value=-float("inf")) if explicit else x[0]
    return F.max_pool2d(
        inp, a["kernel_shape"], a.get("strides", (1, 1)), padding, a.get("dilations", (1, 1)),
        ceil_mode=bool(a.get("ceil_mode", 0)),
    )  # fmt: skip


def _avgpool(a: dict, x: list) -> torch.Tensor:
    padding, explicit = _pair_pads(a)
    assert explicit is None, "asymmetric average-pool pads"
    return F.avg_pool2d(
        x[0], a["kernel_shape"], a.get("strides", (1, 1)), padding,
        ceil_mode=bool(a.get("ceil_mode", 0)),
        count_include_pad=bool(a.get("count_include_pad", 0)),
    )  # fmt: skip


def _batchnorm(a: dict, x: list) -> torch.Tensor:
    training = bool(a.get("training_mode", 0))
    mean, var = (None, None) if training else (x[3], x[4])
    return F.batch_norm(x[0], mean, var, x[1], x[2], training, eps=a.get("epsilon", 1e-5))


def _pad(a: dict, x: list) -> torch.Tensor:
    """ONNX Pad: pads (all begins, then all ends) over the axes, F.pad's order reversed."""
    assert a.get("mode", b"constant") == b"constant", "non-constant Pad"
    pads = [int(v) for v in x[1].tolist()]
    axes = x[3].tolist() if len(x) > 3 and x[3] is not None else range(len(pads) // 2)
    axes = [ax % x[0].dim() for ax in axes]
    value = float(x[2]) if len(x) > 2 and x[2] is not None else 0.0
    begin = dict(zip(axes, pads[: len(axes)], strict=True))
    end = dict(zip(axes, pads[len(axes) :], strict=True))
    flat = [v for d in reversed(range(x[0].dim())) for v in (begin.get(d, 0), end.get(d, 0))]
    return F.pad(x[0], flat, value=value)


def _reshape(a: dict, x: list) -> torch.Tensor:
    shape = [x[0].shape[i] if v == 0 else int(v) for i, v in enumerate(x[1].tolist())]
    return x[0].reshape(shape)


def _slice(a: dict, x: list) -> torch.Tensor:
    out = x[0]
    axes = x[3].tolist() if len(x) > 3 else range(len(x[1]))
    steps = x[4].tolist() if len(x) > 4 else [1] * len(x[1])
    for s, e, ax, st in zip(x[1].tolist(), x[2].tolist(), axes, steps, strict=True):
        assert st > 0, "negative Slice steps"
        index = [slice(None)] * out.dim()
        index[ax] = slice(s, e, st)
        out = out[tuple(index)]
    return out


def _axes(a: dict, x: list) -> list[int] | None:
    axes = x[1].tolist() if len(x) > 1 else a.get("axes")
    return None if axes is None else list(axes)


def _reduce_mean(a: dict, x: list) -> torch.Tensor:
    axes = _axes(a, x) or list(range(x[0].dim()))
    return x[0].mean(axes, keepdim=bool(a.get("keepdims", 1)))


def _unsqueeze(a: dict, x: list) -> torch.Tensor:
    out = x[0]
    rank = out.dim() + len(_axes(a, x))
    for ax in sorted(v % rank for v in _axes(a, x)):
        out = out.unsqueeze(ax)
    return out


def _layernorm(a: dict, x: list) -> torch.Tensor:
    shape = x[0].shape[a.get("axis", -1) % x[0].dim() :]
    bias = x[2].reshape(shape) if len(x) > 2 and x[2] is not None else None
    return F.layer_norm(x[0], shape, x[1].reshape(shape), bias, a.get("epsilon", 1e-5))


def _groupnorm(a: dict, x: list) -> torch.Tensor:
    """GroupNormalization as opset 21 defines it (one scale and bias value per channel)."""
    channels = x[0].shape[1]
    scale = x[1].reshape(channels) if len(x) > 1 and x[1] is not None else None
    bias = x[2].reshape(channels) if len(x) > 2 and x[2] is not None else None
    return F.group_norm(x[0], a["num_groups"], scale, bias, a.get("epsilon", 1e-5))


def _instancenorm(a: dict, x: list) -> torch.Tensor:
    return F.instance_norm(x[0], weight=x[1], bias=x[2], eps=a.get("epsilon", 1e-5))


OPS: dict[str, Fn] = {
    "Conv": _one_d(_conv),
    "Gemm": _gemm,
    "MatMul": lambda a, x: x[0] @ x[1],
    "Add": lambda a, x: x[0] + x[1],
    "Mul": lambda a, x: x[0] * x[1],
    "Sub": lambda a, x: x[0] - x[1],
    "Div": lambda a, x: x[0] / x[1],
    "Relu": lambda a, x: F.relu(x[0]),
    "Sigmoid": lambda a, x: torch.sigmoid(x[0]),
    "Tanh": lambda a, x: torch.tanh(x[0]),
    "HardSigmoid": lambda a, x: (a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5)).clamp(0, 1),
    "HardSwish": lambda a, x: F.hardswish(x[0]),
    "LeakyRelu": lambda a, x: F.leaky_relu(x[0], a.get("alpha", 0.01)),
    "Elu": lambda a, x: F.elu(x[0], a.get("alpha", 1.0)),
    "Gelu": lambda a, x: F.gelu(x[0], approximate=a.get("approximate", b"none").decode()),
    "Erf": lambda a, x: torch.erf(x[0]),
    "PRelu": _prelu,
    "Clip": _clip,
    "MaxPool": _one_d(_maxpool),
    "AveragePool": _one_d(_avgpool),
    "GlobalAveragePool": lambda a, x: x[0].mean(tuple(range(2, x[0].dim())), keepdim=True),
    "Flatten": lambda a, x: x[0].flatten(a.get("axis", 1)) if a.get("axis", 1) else x[0],
    "Reshape": _reshape,
    "Pad": _pad,
    "Identity": lambda a, x: x[0],
    "Dropout": lambda a, x: x[0],
    "Concat": lambda a, x: torch.cat(x, a["axis"]),
    "BatchNormalization": _batchnorm,
    "Slice": _slice,
    "Transpose": lambda a, x: x[0].permute(*a.get("perm", range(x[0].dim() - 1, -1, -1))),
    "ReduceMean": _reduce_mean,
    "Squeeze": lambda a, x: x[0].squeeze(_axes(a, x)) if _axes(a, x) else x[0].squeeze(),
    "Unsqueeze": _unsqueeze,
    "LayerNormalization": _layernorm,
    "GroupNormalization": _groupnorm,
    "InstanceNormalization": _instancenorm,
    "Softmax": lambda a, x: x[0].softmax(a.get("axis", -1)),
}


class TorchReference:
    """model.onnx as a torch function of its input; trainable initializers require grad."""

    def __init__(
        self, proto: onnx.ModelProto, trainable: list[str], batch_stats: list[str] | None = None
    ) -> None:
        """`batch_stats`: the BatchNormalization scales whose node uses batch statistics
        (default: the trainable ones; the export's whole trainable set when only some
        layers train, as in the runtime)."""
        self.graph = proto.graph
        self.tensors: dict[str, torch.Tensor] = {}
        for t in proto.graph.initializer:
            arr = numpy_helper.to_array(t).copy()
            self.tensors[t.name] = torch.from_numpy(arr).requires_grad_(t.name in trainable)
        for n in proto.graph.node:
            if n.op_type == "Constant":
                self.tensors[n.output[0]] = torch.from_numpy(
                    numpy_helper.to_array(n.attribute[0].t).copy()
                )
        self.trainable = list(trainable)
        self.batch_stats = set(trainable if batch_stats is None else batch_stats)
        self.training = True  # trainable BatchNormalization: batch statistics
        self.program = [
            (OPS[n.op_type], self._attrs(n), list(n.input), n.output[0])
            for n in proto.graph.node
            if n.op_type != "Constant"
        ]

    def _attrs(self, n: onnx.NodeProto) -> dict:
        """A node's attributes; a BatchNormalization whose scale trains uses batch
        statistics, as the runtime and the ORT training graph do."""
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "BatchNormalization" and n.input[1] in self.batch_stats:
            attrs["training_mode"] = 1
        return attrs

    @classmethod
    def load(cls, model_dir: str | Path, train_layers: list[str] | None = None) -> TorchReference:
        """The reference of a `*.facto` directory; with `train_layers`, only those layers'
        tensors train (runtime/graph.restrict_trainable)."""
        from facto_edge.runtime.graph import restrict_trainable
        from facto_edge.runtime.manifest import Manifest

        d = Path(model_dir)
        manifest = Manifest.load(d)
        trainable = list(restrict_trainable(manifest, train_layers))
        return cls(onnx.load(str(d / "model.onnx")), trainable, manifest.trainable)

    def parameters(self) -> list[torch.Tensor]:
        """The trainable tensors, in manifest order."""
        return [self.tensors[name] for name in self.trainable]

    def train(self) -> TorchReference:
        """Training mode (the default): a BatchNormalization whose scale trains normalizes
        with the batch's statistics and moves its running statistics, as the runtime does."""
        self.training = True
        return self

    def eval(self) -> TorchReference:
        """Inference mode: every BatchNormalization uses its running statistics."""
        self.training = False
        return self

    def _batch_stats_bn(self, attrs: dict, x: list) -> torch.Tensor:
        """Training-form BN; running statistics follow ONNX (momentum on the old value,
        biased batch variance), updated in place without gradient."""
        if not self.training:
            return F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, eps=attrs.get("epsilon", 1e-5))
        momentum = attrs.get("momentum", 0.9)
        with torch.no_grad():
            dims = [0, *range(2, x[0].dim())]
            x[3].mul_(momentum).add_(x[0].mean(dims), alpha=1 - momentum)
            x[4].mul_(momentum).add_(x[0].var(dims, unbiased=False), alpha=1 - momentum)
        return _batchnorm(attrs, x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        env = dict(self.tensors)
        env[self.graph.input[0].name] = x
        for fn, attrs, inputs, output in self.program:
            args = [env[v] if v else None for v in inputs]
            if fn is _batchnorm and attrs.get("training_mode"):
                env[output] = self._batch_stats_bn(attrs, args)
            else:
                env[output] = fn(attrs, args)
        return env[self.graph.output[0].name]

    def grads(self) -> dict[str, np.ndarray]:
        """The gradient of every trainable tensor after backward()."""
        return {name: self.tensors[name].grad.numpy().copy() for name in self.trainable}
