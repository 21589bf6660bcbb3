"""The CUDA backend against the CPU backend: every op's forward and gradients, the
codecs, masks and argmax packing, the optimizers, TrainingSession(device="cuda") (a
5-step run, gradients over micro-batches, predict, the budget) and device selection.

The kernel tests need numba.cuda on a GPU or under the CUDA simulator. The simulator is
chosen when numba.cuda is first imported, so a plain run of this file (no GPU, no
NUMBA_ENABLE_CUDASIM) skips them and `test_kernels_under_simulator` reruns the file in a
subprocess with NUMBA_ENABLE_CUDASIM=1. On a GPU machine (tools/cuda_check.py) they run
on the device, with the `gpu`-marked tests too. Shapes are tiny: the simulator runs one
Python thread per CUDA thread.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import os
import re
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import pytest

from facto_edge.errors import DeviceError
from facto_edge.runtime import codecs as host_codecs
from facto_edge.runtime import device as device_mod
from facto_edge.runtime import optimizers as host_optimizers
from facto_edge.runtime.bound import Bound, Site, stored_shape
from facto_edge.runtime.graph import Node
from facto_edge.runtime.ops import OPS

SIM = bool(numba.config.ENABLE_CUDASIM)


def _cuda_mode() -> str | None:
    """'sim', 'gpu', or None when CUDA kernels cannot run in this process."""
    if SIM:
        return "sim"
    try:
        device_mod.check_cuda()
    except DeviceError:
        return None
    return "gpu"


MODE = _cuda_mode()
needs_cuda = pytest.mark.skipif(
    MODE is None, reason="no CUDA device here; test_kernels_under_simulator runs these"
)
gpu = pytest.mark.gpu


@pytest.fixture(autouse=True, scope="module")
def _simulator():
    """Under the simulator: a short GIL switch interval (its block manager polls its
    threads holding the GIL, so barriers are several times faster), and fixes of two
    thread races of numba 0.68's simulator that made reductions flaky."""
    if not SIM:
        yield
        return
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    with pytest.MonkeyPatch.context() as mp:
        _fix_simulator_races(mp)
        yield
    sys.setswitchinterval(old)


def _fix_simulator_races(mp: pytest.MonkeyPatch) -> None:
    """(1) FakeCUDAShared.array looks up and creates a block's array without a lock, so
    two threads can get different "shared" arrays; (2) swapped_cuda_module, which
    points a device function's module at the fake cuda module, restores the real one
    when any thread leaves, under threads still inside (fixed upstream in numba-cuda,
    NVIDIA/numba-cuda#690): here with a lock and a count per module."""
    from numba.cuda.simulator import kernel, kernelapi
    from numba.np import numpy_support

    lock = threading.RLock()

    def shared_array(self, shape, dtype):
        if isinstance(dtype, numba.types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            if key not in self._allocations:
                self._allocations[key] = np.empty(shape, dtype)
            return self._allocations[key]

    inside: dict[int, tuple[int, dict]] = {}

    @contextlib.contextmanager
    def swapped(fn, fake):
        from numba import cuda

        globs = fn.__globals__
        with lock:
            count, orig = inside.get(id(globs), (0, None))
            if count == 0:
                orig = {k: v for k, v in globs.items() if v is cuda}
                globs.update(dict.fromkeys(orig, fake))
            inside[id(globs)] = (count + 1, orig)
        try:
            yield
        finally:
            with lock:
                count, orig = inside[id(globs)]
                inside[id(globs)] = (count - 1, orig)
                if count == 1:
                    globs.update(orig)

    mp.setattr(kernelapi.FakeCUDAShared, "array", shared_array)
    mp.setattr(kernel, "swapped_cuda_module", swapped)


def test_kernels_under_simulator():
    """Rerun this file under the CUDA simulator (a fresh process: the flag is read when
    numba.cuda is imported)."""
    if SIM:
        pytest.skip("already running under the simulator")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


# Device selection ------------------------------------------------------------------------


def test_unknown_device_is_named():
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        device_mod.resolve_device("tpu")


def test_cpu_backend_table():
    b = device_mod.resolve_device("cpu")
    assert b.name == "cpu" and set(b.kernels) == set(device_mod.FAMILIES)
    assert b.lookup(Node("Conv", "c", ("x", "w"), ("y",))) is OPS["Conv"]


@pytest.mark.skipif(SIM or MODE == "gpu", reason="checks the errors of a machine without CUDA")
def test_missing_numba_cuda_is_named(monkeypatch):
    monkeypatch.setattr(device_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DeviceError, match="numba-cuda package.*facto-edge\\[cuda\\]"):
        device_mod.resolve_device("cuda")


@pytest.mark.skipif(SIM or MODE == "gpu", reason="checks the errors of a machine without CUDA")
def test_missing_driver_is_named(monkeypatch):
    monkeypatch.setattr(device_mod.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(DeviceError, match="needs an NVIDIA driver"):
        device_mod.resolve_device("cuda")


@pytest.mark.skipif(SIM or MODE == "gpu", reason="checks the errors of a machine without CUDA")
def test_missing_gpu_is_named(monkeypatch):
    from numba import cuda

    monkeypatch.setattr(device_mod.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "gpus", [], raising=False)
    with pytest.raises(DeviceError, match="needs an NVIDIA GPU"):
        device_mod.resolve_device("cuda")


@needs_cuda
def test_cuda_backend_covers_the_op_table():
    b = device_mod.resolve_device("cuda")
    assert b.name == "cuda" and b.simulated == SIM
    assert set(b.ops) == set(OPS) and set(b.kernels) == set(device_mod.FAMILIES)
    for op_type, op in b.ops.items():
        assert op is OPS[op_type] and b.lookup(Node(op_type, "n", (), ())) is op, op_type
    cpu = device_mod.resolve_device("cpu").kernels
    assert all(b.kernels[f] is not cpu[f] for f in device_mod.FAMILIES)


def test_lacking_backend_names_the_op_and_device():
    from facto_edge.errors import UnsupportedOpError

    cpu = device_mod.resolve_device("cpu")
    b = device_mod.Backend(**{**vars(cpu), "lacks": frozenset({"Pad"})})
    assert "Pad" not in b.ops and set(b.ops) == set(OPS) - {"Pad"}
    with pytest.raises(UnsupportedOpError, match="op type Pad is not supported on device 'cpu'"):
        b.lookup(Node("Pad", "p", ("x",), ("y",)))
    with pytest.raises(UnsupportedOpError, match="op type Foo is not supported; supported: Conv"):
        b.lookup(Node("Foo", "f", ("x",), ("y",)))


GLUE = [Path(device_mod.__file__).with_name(n) for n in ("ops.py", "ops_movement.py", "ops_batchnorm.py", "ops_norm.py")]  # fmt: skip  # noqa: E501


def _glue_calls() -> set[tuple[str, str]]:
    """(family, function) of every kernel the op glue calls as k.<family>.<function>."""
    return {c for path in GLUE for c in re.findall(r"\bk\.(\w+)\.(\w+)\(", path.read_text())}


def _params(fn) -> list[str]:
    return list(inspect.signature(getattr(fn, "py_func", fn)).parameters)


def test_cuda_kernels_have_every_function_the_glue_calls():
    """The glue calls one name per kernel: the CUDA modules have each function the CPU
    ones have, with the same parameters (imported only: no device needed)."""
    pytest.importorskip("numba.cuda")
    cpu = device_mod.resolve_device("cpu").kernels
    calls = _glue_calls()
    assert {f for f, _ in calls} <= set(device_mod.FAMILIES) and len(calls) > 30
    for family, name in sorted(calls):
        dev = importlib.import_module(f"facto_edge.runtime.kernels.cuda.{family}")
        assert hasattr(cpu[family], name), f"cpu {family}.{name}"
        assert hasattr(dev, name), f"cuda {family}.{name}"
        host_fn, dev_fn = getattr(cpu[family], name), getattr(dev, name)
        assert _params(host_fn) == _params(dev_fn), f"{family}.{name}"


@pytest.mark.parametrize("name", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_backend_primitives(name):
    b = device_mod.resolve_device(name)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    a = b.zeros(4 * x.size).view(np.float32).reshape(3, 2, 2, 2)  # stored channel-major
    np.testing.assert_array_equal(b.get(a), 0)
    b.put(a, x, channel_major=True)
    np.testing.assert_array_equal(b.get(a), x.swapaxes(0, 1))
    c = b.zeros(4 * x.size).view(np.float32).reshape(a.shape)
    b.copy(a, c)
    b.accumulate(c, a)
    b.fill(a, 0.5)
    np.testing.assert_array_equal(b.get(c), 2 * x.swapaxes(0, 1))
    np.testing.assert_array_equal(b.get(a), 0.5)


@gpu
@pytest.mark.skipif(MODE != "gpu", reason="needs a real CUDA GPU")
def test_resolve_device_on_a_gpu():
    from numba import cuda

    b = device_mod.resolve_device("cuda")
    assert not b.simulated and len(cuda.gpus) >= 1
    free_before = cuda.current_context().get_memory_info()[0]
    a = cuda.device_array(64 << 20, np.uint8)
    assert cuda.current_context().get_memory_info()[0] <= free_before - (64 << 20)
    del a


# One op on both backends -----------------------------------------------------------------


@dataclass(frozen=True)
class W:
    """A trainable initializer of this shape (random)."""

    shape: tuple[int, ...]


@dataclass(frozen=True)
class C:
    """A frozen initializer of this shape (random)."""

    shape: tuple[int, ...]


def _inputs(shapes_, rng) -> tuple[list, list, list]:
    """(values, persistent flags, need-grad flags) of an op's inputs: a tuple is an
    activation needing a gradient, W/C initializers, an ndarray a constant."""
    values, persistent, need = [], [], []
    for s in shapes_:
        if s is None or isinstance(s, np.ndarray):
            values.append(s)
            persistent.append(s is not None)
            need.append(False)
            continue
        shape = s if isinstance(s, tuple) else s.shape
        values.append(rng.standard_normal(shape).astype(np.float32))
        persistent.append(isinstance(s, W | C))
        need.append(not isinstance(s, C))
    return values, persistent, need


def _site(op_type: str, attrs: dict, values, persistent, need, n_out: int) -> Site:
    names = tuple("" if v is None else f"in{i}" for i, v in enumerate(values))
    flags = frozenset(i for i, p in enumerate(persistent) if p)
    node = Node(op_type, "node", names, tuple(f"out{k}" for k in range(n_out)), attrs, flags)
    ins = [None if v is None else tuple(v.shape) for v in values]
    consts = [v if p else None for v, p in zip(values, persistent, strict=True)]
    outs = OPS[op_type].infer(node, ins, consts)
    return Site(node, tuple(ins), tuple(map(tuple, outs)), tuple(consts), tuple(need))


def _stored(a: np.ndarray, cm: bool) -> np.ndarray:
    return np.array(a.swapaxes(0, 1) if cm else a, order="C")


def _bind(op, k, site: Site, values, gy: np.ndarray) -> Bound:
    """Host buffers of one node: inputs as stored, zeroed outputs, gradients, saved bytes
    and workspace; an input backward keeps is kept as is (the codecs are tested apart)."""
    x = [None if v is None else _stored(v, site.cm_in(i)) for i, v in enumerate(values)]
    y = [np.zeros(stored_shape(s), np.float32) for s in site.outs]
    gx = [
        np.zeros(stored_shape(s, i in site.node.persistent), np.float32) if n else None
        for i, (s, n) in enumerate(zip(site.ins, site.need, strict=True))
    ]
    saved = {
        s.key: np.zeros(s.nbytes, np.uint8) if s.source is None else x[s.source]
        for s in op.saved(site)
    }
    ws = {key: np.zeros(shape, dtype) for key, (shape, dtype) in op.workspace(k, site).items()}
    return Bound(site, x, y, gx, _stored(gy, site.cm_out(0)), saved, ws)


def _to_device(b: Bound, op, k) -> Bound:
    """The device twin of host bound buffers (fresh device copies of each array), with
    the workspace the CUDA kernels `k` ask for."""
    from numba import cuda

    def dev(a):
        return None if a is None else cuda.to_device(a)

    x = [dev(a) for a in b.x]
    saved = {k: x[int(k[2:])] if k.startswith("in") else dev(a) for k, a in b.saved.items()}
    ws = {key: cuda.to_device(np.zeros(s, d)) for key, (s, d) in op.workspace(k, b.site).items()}
    gx = [dev(a) for a in b.gx]
    return Bound(b.site, x, [dev(a) for a in b.y], gx, dev(b.gy), saved, ws)


def _host(a, cm: bool) -> np.ndarray:
    h = a if isinstance(a, np.ndarray) else a.copy_to_host()
    return h.swapaxes(0, 1) if cm else h


def _outputs(b: Bound) -> dict[str, np.ndarray]:
    out = {f"y{k}": _host(a, b.site.cm_out(k)) for k, a in enumerate(b.y) if a is not None}
    for i, g in enumerate(b.gx):
        if g is not None:
            out[f"gx{i}"] = _host(g, b.site.cm_in(i))
    return out


def check_cuda_op(op_type, attrs, shapes_, n_out=1, atol=1e-5, seed=0, training=True):
    """Run one `op_type` node forward (training) and backward on the CPU and CUDA kernels
    from the same inputs and output gradient; outputs and input gradients agree."""
    rng = np.random.default_rng(seed)
    values, persistent, need = _inputs(shapes_, rng)
    site = _site(op_type, dict(attrs), values, persistent, need, n_out)
    gy = rng.standard_normal(site.outs[0]).astype(np.float32)
    op = OPS[op_type]
    cpu_k, cuda_k = (device_mod.resolve_device(d).kernels for d in ("cpu", "cuda"))
    hb = _bind(op, cpu_k, site, values, gy)
    db = _to_device(hb, op, cuda_k)
    for k, b in ((cpu_k, hb), (cuda_k, db)):
        op.forward(k, b, training)
        if training and any(site.need):
            op.backward(k, b)
    want, got = _outputs(hb), _outputs(db)
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=atol, rtol=1e-5, err_msg=key)
    return want


def f32(*v) -> np.ndarray:
    return np.array(v if len(v) > 1 else v[0], np.float32)


def i64(*v) -> np.ndarray:
    return np.array(v, np.int64)


X4 = (2, 3, 5, 6)  # a tiny NCHW activation
XC = (2, 3, 3, 4)  # a tinier one for convolutions (each runs three tiled matmuls)

# fmt: off
CONV_CASES = {
    "3x3 pad": ({"pads": [1, 1, 1, 1]}, [XC, W((4, 3, 3, 3)), W((4,))]),
    "stride dilation": ({"strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 0, 2]}, [XC, W((4, 3, 3, 2))]),  # noqa: E501
    "grouped": ({"group": 2, "pads": [1, 1, 1, 1]}, [(2, 4, 3, 4), W((4, 2, 3, 3))]),
    "depthwise x2": ({"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1]}, [XC, W((6, 1, 3, 3)), W((6,))]),  # noqa: E501
    "pointwise": ({}, [XC, W((4, 3, 1, 1)), C((4,))]),
    "1x1 stride": ({"strides": [2, 2]}, [XC, C((4, 3, 1, 1))]),
    "frozen weight": ({"pads": [1, 1, 1, 1]}, [XC, C((4, 3, 3, 3))]),
}
OP_CASES = {
    "gemm": ("Gemm", {"transB": 1}, [(3, 5), W((4, 5)), W((4,))]),
    "gemm transA alpha beta": ("Gemm", {"transA": 1, "alpha": 0.5, "beta": 2.0}, [(5, 3), W((5, 4)), W((3, 4))]),  # noqa: E501
    "gemm row bias": ("Gemm", {}, [(3, 5), C((5, 4)), W((1, 4))]),
    "matmul": ("MatMul", {}, [(3, 5), W((5, 4))]),
    "matmul batch broadcast": ("MatMul", {}, [(2, 3, 5), (5, 4)]),
    "matmul 4d": ("MatMul", {}, [(2, 3, 4, 5), W((5, 2))]),
    "add": ("Add", {}, [X4, X4]),
    "add channel bias": ("Add", {}, [X4, W((3, 1, 1))]),
    "add 2d broadcast": ("Add", {}, [(3, 4), (1, 4)]),
    "mul": ("Mul", {}, [X4, X4]),
    "mul channel scale": ("Mul", {}, [X4, W((1, 3, 1, 1))]),
    "sub": ("Sub", {}, [X4, (3, 1, 6)]),
    "sub se": ("Sub", {}, [(2, 3, 1, 1), X4]),
    "div se": ("Div", {}, [X4, (2, 3, 1, 1)]),
    "div constant": ("Div", {}, [X4, f32(1.5)]),
    "sigmoid": ("Sigmoid", {}, [X4]),
    "tanh": ("Tanh", {}, [X4]),
    "hard sigmoid": ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, [X4]),
    "hard swish": ("HardSwish", {}, [X4]),
    "leaky relu": ("LeakyRelu", {"alpha": 0.2}, [X4]),
    "elu": ("Elu", {"alpha": 0.5}, [X4]),
    "gelu": ("Gelu", {}, [X4]),
    "gelu tanh": ("Gelu", {"approximate": "tanh"}, [X4]),
    "swish": ("Swish", {}, [X4]),
    "erf": ("Erf", {}, [X4]),
    "prelu per channel": ("PRelu", {}, [X4, W((3, 1, 1))]),
    "prelu 2d frozen": ("PRelu", {}, [(3, 4), C((4,))]),
    "clip attributes": ("Clip", {"min": -0.5, "max": 0.25}, [X4]),
    "relu": ("Relu", {}, [X4]),
    "relu 2d": ("Relu", {}, [(3, 7)]),
    "relu6": ("Clip", {}, [X4, f32(0.0), f32(0.5)]),
    "clip min only": ("Clip", {}, [X4, f32(-0.3), None]),
    "maxpool": ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, [X4]),
    "maxpool overlap pad": ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, [X4]),  # noqa: E501
    "maxpool ceil dilation": ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1, "dilations": [1, 2]}, [X4]),  # noqa: E501
    "avgpool": ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}, [X4]),
    "avgpool pad exclude": ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, [X4]),  # noqa: E501
    "avgpool pad include ceil": ("AveragePool", {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1, "ceil_mode": 1}, [X4]),  # noqa: E501
    "global avgpool": ("GlobalAveragePool", {}, [X4]),
    "flatten": ("Flatten", {"axis": 1}, [X4]),
    "flatten axis 2": ("Flatten", {"axis": 2}, [X4]),
    "reshape": ("Reshape", {}, [X4, i64(2, -1)]),
    "reshape to 4d": ("Reshape", {}, [(2, 30), i64(2, 5, 3, 2)]),
    "identity": ("Identity", {}, [X4]),
    "dropout": ("Dropout", {}, [X4]),
    "pad": ("Pad", {}, [X4, i64(0, 1, 2, 1, 0, 0, 1, 2), f32(0.5)]),
    "pad negative": ("Pad", {}, [X4, i64(0, 0, -1, 1, 0, -1, 2, -2)]),
    "slice": ("Slice", {}, [X4, i64(1, 1), i64(3, 6), i64(1, 3), i64(1, 2)]),
    "slice reversed": ("Slice", {}, [X4, i64(-1), i64(-100), i64(2), i64(-2)]),
    "concat channels": ("Concat", {"axis": 1}, [X4, (2, 2, 5, 6)]),
    "concat 2d": ("Concat", {"axis": 0}, [(2, 4), (3, 4)]),
    "transpose nhwc": ("Transpose", {"perm": [0, 2, 3, 1]}, [X4]),
    "transpose to nchw": ("Transpose", {"perm": [0, 3, 1, 2]}, [(2, 5, 6, 3)]),
    "transpose shuffle rank5": ("Transpose", {"perm": [0, 2, 1, 3, 4]}, [(2, 2, 3, 2, 3)]),
    "reshape rank5": ("Reshape", {}, [X4, i64(2, 3, 1, 5, 6)]),
    "reshape from rank5": ("Reshape", {}, [(2, 2, 3, 2, 3), i64(2, 6, 2, 3)]),
    "reduce mean spatial": ("ReduceMean", {"axes": [2, 3], "keepdims": 0}, [X4]),
    "reduce mean channels keep": ("ReduceMean", {"axes": [1]}, [X4]),
    "reduce mean axes input": ("ReduceMean", {}, [X4, i64(0, -1)]),
    "split part": ("Split", {"axis": 1, "num_outputs": 2, "part": 1}, [(2, 4, 3, 2)]),
    "squeeze": ("Squeeze", {}, [(2, 3, 1, 1), i64(2, 3)]),
    "unsqueeze": ("Unsqueeze", {}, [(2, 3, 4), i64(2)]),
    "layernorm channels last": ("LayerNormalization", {"epsilon": 1e-6}, [(2, 3, 2, 4), W((4,)), W((4,))]),  # noqa: E501
    "layernorm 2d no bias": ("LayerNormalization", {}, [(3, 5), W((5,))]),
    "layernorm bias only": ("LayerNormalization", {}, [(3, 5), C((5,)), W((5,))]),
    "groupnorm": ("GroupNormalization", {"num_groups": 2}, [(2, 4, 3, 2), W((4,)), W((4,))]),
    "groupnorm rank3 no scale": ("GroupNormalization", {"num_groups": 2, "epsilon": 1e-3}, [(2, 4, 5), None, W((4, 1))]),  # noqa: E501
    "groupnorm one group": ("GroupNormalization", {"num_groups": 1}, [(2, 3, 2, 2), W((3, 1, 1)), C((3, 1, 1))]),  # noqa: E501
    "instancenorm": ("InstanceNormalization", {}, [X4, W((3,)), C((3,))]),
    "softmax": ("Softmax", {}, [(3, 5)]),
    "softmax channels": ("Softmax", {"axis": 1}, [X4]),
    "softmax batch": ("Softmax", {"axis": 0}, [X4]),
    "conv1d": ("Conv", {"pads": [1, 1]}, [(2, 3, 5), W((4, 3, 3)), W((4,))]),
    "conv1d strided grouped": ("Conv", {"strides": [2], "group": 3, "pads": [1, 0]}, [(2, 3, 6), W((6, 1, 3))]),  # noqa: E501
    "bn1d training": ("BatchNormalization", {"training_mode": 1}, [(2, 3, 5), W((3,)), W((3,)), C((3,)), f32(1.0, 2.0, 0.5)]),  # noqa: E501
    "maxpool1d ceil dilation": ("MaxPool", {"kernel_shape": [2], "strides": [2], "dilations": [2], "ceil_mode": 1}, [(2, 3, 7)]),  # noqa: E501
    "avgpool1d pad exclude": ("AveragePool", {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, [(2, 3, 7)]),  # noqa: E501
    "global avgpool1d": ("GlobalAveragePool", {}, [(2, 3, 7)]),
    "bn inference": ("BatchNormalization", {}, [X4, W((3,)), W((3,)), C((3,)), np.abs(np.arange(1.0, 4.0, dtype=np.float32))]),  # noqa: E501
    "bn inference frozen scale": ("BatchNormalization", {}, [X4, C((3,)), W((3,)), C((3,)), f32(1.0, 2.0, 0.5)]),  # noqa: E501
    "bn 2d": ("BatchNormalization", {"epsilon": 1e-3}, [(4, 3), W((3,)), W((3,)), C((3,)), f32(1.0, 2.0, 0.5)]),  # noqa: E501
    "xent": ("SoftmaxCrossEntropyLoss", {"reduction": "mean"}, [(4, 5), i64(0, 4, 2, 2)]),
    "delta conv": ("DeltaConv", {"pads": [1, 1, 1, 1]}, [(2, 2, 3, 4), W((4, 2, 1, 1)), W((4,)), XC, C((4, 3, 3, 3)), C((2, 3, 3, 3))]),  # noqa: E501
    "delta conv 1x1 strided no bias": ("DeltaConv", {"strides": [2, 2]}, [(2, 2, 2, 2), W((4, 2, 1, 1)), None, XC, C((4, 3, 1, 1)), C((2, 3, 1, 1))]),  # noqa: E501
    "xent smoothing sum": ("SoftmaxCrossEntropyLoss", {"reduction": "sum", "label_smoothing": 0.1}, [(4, 5), i64(1, 3, 0, 2)]),  # noqa: E501
}
# fmt: on


@needs_cuda
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv(case):
    attrs, shapes_ = CONV_CASES[case]
    check_cuda_op("Conv", attrs, shapes_)


@needs_cuda
@pytest.mark.parametrize("case", OP_CASES)
def test_op(case):
    op_type, attrs, shapes_ = OP_CASES[case]
    check_cuda_op(op_type, attrs, shapes_)


@needs_cuda
def test_bn_training_with_running_stats():
    var = np.abs(np.arange(1.0, 4.0, dtype=np.float32))
    shapes_ = [X4, W((3,)), W((3,)), C((3,)), var]
    out = check_cuda_op("BatchNormalization", {"training_mode": 1, "momentum": 0.8}, shapes_, 3)
    assert {"y1", "y2", "gx0", "gx1", "gx2"} <= out.keys()


@needs_cuda
@pytest.mark.parametrize("op_type", ["Relu", "MaxPool", "BatchNormalization"])
def test_eval_forward(op_type):
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2]} if op_type == "MaxPool" else {}
    shapes_ = [X4] + ([C((3,)), C((3,)), C((3,)), f32(1.0, 2.0, 0.5)] if op_type[0] == "B" else [])
    check_cuda_op(op_type, attrs, shapes_, training=False)


# Codecs, masks, argmax -------------------------------------------------------------------


def _activation(seed: int = 0) -> np.ndarray:
    """Values a codec meets: ReLU zeros, fp16 subnormals and extremes, a constant row."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, 3, 5, 5)) * 3).astype(np.float32)
    x[0, 0] = np.maximum(x[0, 0], 0)
    x[0, 1, 0, :4] = (3e-8, -6e-8, 1e-5, 65504.0)
    x[1, 2] = 0.25
    return x


@needs_cuda
@pytest.mark.parametrize("rounding", host_codecs.ROUNDINGS)
@pytest.mark.parametrize("name, group", [("fp32", 64), ("fp16", 64), ("q8", 64), ("q4", 64), ("q2", 64), ("q4", 7), ("q2", 3), ("q8", 25)])  # fmt: skip  # noqa: E501
def test_codec_matches_cpu(name, group, rounding):
    """Same bytes as the CPU codec under the simulator (exact arithmetic); on a GPU, FMA
    contraction may move a code by one step, so decoded values agree within a step."""
    from numba import cuda

    from facto_edge.runtime.kernels.cuda import codecs as dev_codecs

    if name.startswith("fp") and rounding != "nearest":
        pytest.skip("rounding applies to the block codecs")
    x = _activation()
    cpu = host_codecs.get_codec(name, group, rounding)
    dev = dev_codecs.get_codec(name, group, rounding)
    want = np.zeros(cpu.nbytes(x.shape), np.uint8)
    cpu.encode(x, want, seed=5)
    got = cuda.to_device(np.zeros_like(want))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # uint64 hash overflow (simulator)
        dev.encode(cuda.to_device(x), got, seed=5)
    decoded = cuda.device_array(x.shape, np.float32)
    dev.decode(cuda.to_device(want), decoded)
    ref = np.empty_like(x)
    cpu.decode(want, ref)
    if MODE == "sim" or name.startswith("fp"):
        np.testing.assert_array_equal(got.copy_to_host(), want)
    else:
        step = np.abs(x).max() / (2 ** int(name[1:]) - 1) * 2
        np.testing.assert_allclose(_decoded(cpu, got, x), ref, atol=step)
    np.testing.assert_array_equal(decoded.copy_to_host(), ref)


def _decoded(cpu, buf, like: np.ndarray) -> np.ndarray:
    out = np.empty_like(like)
    cpu.decode(buf.copy_to_host(), out)
    return out


@needs_cuda
@pytest.mark.parametrize("name", ["fp32", "fp16", "q4"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e6])
def test_codec_errors(name, bad):
    from numba import cuda

    from facto_edge.errors import NumericalError
    from facto_edge.runtime.kernels.cuda import codecs as dev_codecs

    x = _activation()
    x[1, 1, 2, 2] = bad
    codec = dev_codecs.get_codec(name)
    buf = cuda.device_array(codec.nbytes(x.shape), np.uint8)
    codec.encode(cuda.to_device(x), buf)
    if name == "fp32" and math.isfinite(bad):
        codec.kernels.check(name)  # fp32 holds 1e6
        return
    match = "NaN/Inf" if not math.isfinite(bad) else "fp16 range"
    with pytest.raises(NumericalError, match=match):
        codec.kernels.check(name)
    codec.kernels.check(name)  # the check reset the count


@needs_cuda
@pytest.mark.parametrize("kind", ["swish", "swish alpha", "sigmoid"])
def test_float32_swish_and_sigmoid_match_the_cpu_fast_path(kind):
    """On float32, Swish and Sigmoid run the CPU fast path's float32 math (its exp,
    activation_math.exp_split): forward and backward (gx may be gy) agree with the CPU
    kernels to a few ulp, and with float64 math to the CPU test's tolerance, saturating
    inputs included."""
    from numba import cuda

    from facto_edge.runtime.kernels import activation as host
    from facto_edge.runtime.kernels import activation_math as M
    from facto_edge.runtime.kernels.cuda import activation as dev

    code, alpha = {"swish": (M.SWISH, 1.0), "swish alpha": (M.SWISH, 1.702),
                   "sigmoid": (M.SIGMOID, 0.0)}[kind]  # fmt: skip
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(300) * 8).astype(np.float32)
    x[:8] = [-200.0, -90.0, -87.5, -20.0, 0.0, 20.0, 90.0, 200.0]
    gy = rng.standard_normal(x.size).astype(np.float32)
    assert dev._logistic(code, alpha, x, gy) and not dev._logistic(code, alpha, x.astype(float))
    want_y, want_g = np.empty_like(x), np.empty_like(x)
    host.activation_fwd(x, want_y, code, alpha, 0.0)
    host.activation_bwd(x, gy, want_g, code, alpha, 0.0)
    d_x, d_y, d_g = cuda.to_device(x), cuda.device_array(x.size, np.float32), cuda.to_device(gy)
    dev.activation_fwd(d_x, d_y, code, alpha, 0.0)
    dev.activation_bwd(d_x, d_g, d_g, code, alpha, 0.0)
    got_y, got_g = d_y.copy_to_host(), d_g.copy_to_host()
    np.testing.assert_allclose(got_y, want_y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_g, want_g, rtol=1e-6, atol=1e-6)
    a, v = (alpha if code == M.SWISH else 1.0), x.astype(np.float64)
    with np.errstate(over="ignore"):
        s = 1.0 / (1.0 + np.exp(-a * v))
    y64 = v * s if code == M.SWISH else s
    g64 = gy * (s + a * v * s * (1 - s) if code == M.SWISH else s * (1 - s))
    np.testing.assert_allclose(got_y, y64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_g, g64, rtol=1e-5, atol=1e-6)


@needs_cuda
def test_masks_and_argmax_match_cpu():
    from numba import cuda

    from facto_edge.runtime.kernels.cuda import codecs as dev_codecs

    x = _activation()
    want = np.zeros(host_codecs.mask_nbytes(x.shape), np.uint8)
    host_codecs.mask_encode(x, want, 0.0, 6.0)
    got = cuda.device_array(want.size, np.uint8)
    dev_codecs.mask_encode(cuda.to_device(x), got, 0.0, 6.0)
    np.testing.assert_array_equal(got.copy_to_host(), want)
    flags = cuda.device_array(x.shape, np.uint8)
    dev_codecs.mask_decode(got, flags)
    np.testing.assert_array_equal(flags.copy_to_host(), (x > 0) & (x < 6))
    idx = np.random.default_rng(1).integers(0, 9, (2, 3, 3, 3)).astype(np.uint8)
    packed = np.zeros(host_codecs.argmax_nbytes(idx.shape, 3), np.uint8)
    host_codecs.argmax_encode(idx, packed, 3)
    dev_packed = cuda.device_array(packed.size, np.uint8)
    dev_codecs.argmax_encode(cuda.to_device(idx), dev_packed, 3)
    np.testing.assert_array_equal(dev_packed.copy_to_host(), packed)
    back = cuda.device_array(idx.shape, np.uint8)
    dev_codecs.argmax_decode(dev_packed, back, 3)
    np.testing.assert_array_equal(back.copy_to_host(), idx)


# Optimizers ------------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd": ("sgd", {"momentum": 0.0}),
    "sgd momentum wd": ("sgd", {"momentum": 0.9, "weight_decay": 0.01}),
    "sgd nesterov": ("sgd", {"momentum": 0.9, "nesterov": True}),
    "adamw": ("adamw", {"weight_decay": 0.1, "eps": 1e-6}),
}


@needs_cuda
@pytest.mark.parametrize("case", OPTIMIZERS)
def test_optimizer_matches_cpu(case):
    from numba import cuda

    from facto_edge.runtime.kernels.cuda import optimizers as dev_optimizers

    name, kwargs = OPTIMIZERS[case]
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": f32(0.5, -1.0)}
    host_p = {k: v.copy() for k, v in params.items()}
    dev_p = {k: cuda.to_device(v) for k, v in params.items()}
    cpu = host_optimizers.make_optimizer(name, host_p, lr=0.1, **kwargs)
    dev = host_optimizers.make_optimizer(name, dev_p, lr=0.1, kernels=dev_optimizers, **kwargs)
    for _ in range(3):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        cpu.step(grads)
        dev.step({k: cuda.to_device(v) for k, v in grads.items()})
    exact = MODE == "sim"
    for k in params:
        np.testing.assert_allclose(dev_p[k].copy_to_host(), host_p[k], rtol=0 if exact else 1e-6)
    state, want = dev.state_dict(), cpu.state_dict()
    assert state.keys() == want.keys() and dev.state_bytes() == cpu.state_bytes()
    for k in want:
        np.testing.assert_allclose(state[k], want[k], rtol=0 if exact else 1e-6)
    dev.load_state_dict(want)
    assert dev.step_count == 3


# A training run on both backends ---------------------------------------------------------


def _micro_model():
    """input [N, 2, 3, 3] -> Conv 3x3 (trainable, bias) -> BatchNormalization (batch
    statistics, trainable) -> Relu -> MaxPool 2x2 -> Conv 1x1 (frozen) -> Add (skip) ->
    GlobalAveragePool -> Flatten -> Gemm (3 classes, trainable)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)

    def init(name: str, *shape: int, scale: float = 0.5):
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        return numpy_helper.from_array(a, name)

    ones = numpy_helper.from_array(np.ones(4, np.float32), "bn.var")
    inits = [
        init("c1.w", 4, 2, 3, 3), init("c1.b", 4), init("bn.s", 4), init("bn.b", 4),
        init("bn.m", 4, scale=0.0), ones, init("c2.w", 4, 4, 1, 1), init("fc.w", 3, 4),
        init("fc.b", 3),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["input", "c1.w", "c1.b"], ["c1"], "c1", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization",
            ["c1", "bn.s", "bn.b", "bn.m", "bn.var"],
            ["n", "bn.m_out", "bn.var_out"],
            "bn",
            training_mode=1,
        ),  # fmt: skip
        helper.make_node("Relu", ["n"], ["r"], "relu"),
        helper.make_node("MaxPool", ["r"], ["p"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "c2.w"], ["c2"], "c2"),
        helper.make_node("Add", ["c2", "p"], ["a"], "add"),
        helper.make_node("GlobalAveragePool", ["a"], ["g"], "gap"),
        helper.make_node("Flatten", ["g"], ["v"], "flatten"),
        helper.make_node("Gemm", ["v", "fc.w", "fc.b"], ["logits"], "fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "micro",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 3, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    manifest = {
        "input_shape": [2, 3, 3],
        "num_classes": 3,
        "normalization": {"mean": [0.0] * 2, "std": [1.0] * 2},
        "trainable": ["c1.w", "c1.b", "bn.s", "bn.b", "fc.w", "fc.b"],
        "layers": [],
    }
    return model, manifest


def _train(device: str, codec: str, steps: int, **options) -> tuple[list[float], object]:
    from facto_edge.runtime import TrainingSession

    rng = np.random.default_rng(0)
    s = TrainingSession(_micro_model(), batch_size=2, lr=0.1, codec=codec, device=device, **options)
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    y = np.array([0, 2], np.int64)
    return [s.train_step(x, y) for _ in range(steps)], s


@needs_cuda
def test_training_matches_cpu():
    """Five steps on one batch (SGD with momentum, fp32 codec): the CPU backend's
    falling losses; the trained tensors and running statistics agree too."""
    want, cpu = _train("cpu", "fp32", 5)
    got, dev = _train("cuda", "fp32", 5)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert want[-1] < want[0]
    trained = cpu.parameters() | cpu.buffers()
    for name, a in (dev.parameters() | dev.buffers()).items():  # device arrays
        np.testing.assert_allclose(a.copy_to_host(), trained[name], atol=1e-5, err_msg=name)


@needs_cuda
def test_training_q4_adamw_matches_cpu():
    """The lossy codec and AdamW on both backends: the same losses."""
    want, _ = _train("cpu", "q4", 2, optimizer="adamw")
    got, dev = _train("cuda", "q4", 2, optimizer="adamw")
    np.testing.assert_allclose(got, want, rtol=1e-4)
    report = dev.memory_report()
    assert report["device"] == "cuda" and report["device_arena_bytes"] == report["arena_bytes"]
    assert report["host_peak_rss_bytes"] > 0 and report["unplanned_bytes"] == 0


@needs_cuda
def test_gradients_predict_and_micro_batches_match_cpu():
    """compute_gradients over two micro-batches (accumulate=2) and predict: as on cpu."""
    from facto_edge.runtime import TrainingSession

    x = np.random.default_rng(1).standard_normal((2, 2, 3, 3)).astype(np.float32)
    y = np.array([1, 0], np.int64)
    sessions = [
        TrainingSession(_micro_model(), batch_size=2, accumulate=2, device=d)
        for d in ("cpu", "cuda")
    ]
    (want_loss, want), (got_loss, got) = (s.compute_gradients(x, y) for s in sessions)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(sessions[1].predict(x), sessions[0].predict(x), atol=1e-5)


@needs_cuda
def test_budget_counts_the_device_arena():
    from facto_edge.errors import BudgetError
    from facto_edge.runtime import TrainingSession

    arena = TrainingSession(_micro_model(), batch_size=2, device="cuda").memory_plan.arena_bytes
    s = TrainingSession(_micro_model(), batch_size=2, device="cuda", budget=arena)
    assert s.memory_report()["micro_batch"] == 2
    with pytest.raises(BudgetError, match="too small"):
        TrainingSession(_micro_model(), batch_size=1, device="cuda", budget=arena // 4)


@pytest.mark.skipif(MODE is not None, reason="checks a machine without CUDA")
def test_session_names_what_cuda_lacks():
    from facto_edge.runtime import TrainingSession

    with pytest.raises(DeviceError, match="numba-cuda|NVIDIA driver|NVIDIA GPU"):
        TrainingSession(_micro_model(), batch_size=2, device="cuda")
