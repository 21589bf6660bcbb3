# ruff: noqa: E501  (one line per op test, as tinygrad's test_ops)
"""Every op of the runtime against torch: forward, and every gradient through the real
executor (saved tensors through the fp32 codec, activations poisoned before backward so
backward can only use what the op declared it keeps)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facto_edge.errors import UnsupportedOpError
from facto_edge.runtime.codecs import get_codec, mask_apply, mask_encode, mask_nbytes
from facto_edge.runtime.executor import Executor
from facto_edge.runtime.graph import Node, build_schedule
from facto_edge.runtime.kernels.elementwise import clip_mask_fwd, mask_bwd


@dataclass(frozen=True)
class W:
    """A trainable initializer of this shape (random)."""

    shape: tuple[int, ...]


@dataclass(frozen=True)
class C:
    """A frozen initializer of this shape (random)."""

    shape: tuple[int, ...]


@dataclass(frozen=True)
class X:
    """An activation of this shape that needs no gradient (random)."""

    shape: tuple[int, ...]


def _alloc():
    buffers: dict[str, np.ndarray] = {}

    def alloc(name, shape, dtype, kind):
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        buf = buffers.setdefault(name, np.zeros(max(nbytes, 1), np.uint8))
        return buf[:nbytes].view(dtype).reshape(shape)

    return alloc


def check_op(op_type, attrs, shapes, torch_fn, atol=1e-5, grad_atol=1e-4, seed=0):
    """Run one `op_type` node with `attrs` on random inputs and compare its output and the
    gradient of every input that needs one with `torch_fn` under autograd (float64).

    `shapes` lists the inputs: a tuple is an activation that needs a gradient, W(shape) a
    trainable initializer, C(shape) a frozen one, X(shape) an activation needing no
    gradient, an ndarray a constant initializer, None an absent optional input.
    """
    rng = np.random.default_rng(seed)
    names, params, feeds, values, trainable = [], {}, {}, {}, []
    for i, s in enumerate(shapes):
        name = "" if s is None else f"in{i}"
        names.append(name)
        if s is None:
            continue
        if isinstance(s, np.ndarray):
            params[name] = values[name] = s
            continue
        shape = s if isinstance(s, tuple) else s.shape
        values[name] = rng.standard_normal(shape).astype(np.float32)
        if isinstance(s, W | C):
            params[name] = values[name]
        else:
            feeds[name] = (shape, np.dtype(np.float32))
        if isinstance(s, tuple | W):
            trainable.append(name)
    persistent = frozenset(i for i, n in enumerate(names) if n in params)
    node = Node(op_type, "node", tuple(names), ("y",), dict(attrs), persistent)
    schedule = build_schedule([node], tuple(trainable), "y")
    ex = Executor(schedule, params, feeds, "y", get_codec("fp32"), _alloc())
    for name in feeds:
        ex.logical(name)[...] = values[name]
    ex.forward(training=True)

    ref = [_torch(values[n], n in trainable) if n else None for n in names]
    out = torch_fn(*ref)
    np.testing.assert_allclose(ex.logical("y"), out.detach().numpy(), atol=atol, rtol=1e-5)
    if not trainable:
        return
    gy = rng.standard_normal(ex.logical("y").shape).astype(np.float32)
    ex.logical_grad("y")[...] = gy
    for name in [*feeds, "y"]:
        ex.values[name].fill(np.nan)  # backward may only use what forward kept
    ex.backward()
    (out * torch.from_numpy(gy).double()).sum().backward()
    for name, t in zip(names, ref, strict=True):
        if name in trainable:
            np.testing.assert_allclose(
                ex.logical_grad(name), t.grad.numpy(), atol=grad_atol, rtol=1e-4, err_msg=name
            )


def _torch(a: np.ndarray, grad: bool) -> torch.Tensor:
    t = torch.from_numpy(np.array(a))
    t = t.double() if t.is_floating_point() else t
    return t.requires_grad_(grad)


def f32(*v) -> np.ndarray:
    return np.array(v if len(v) > 1 else v[0], np.float32)


def i64(*v) -> np.ndarray:
    return np.array(v, np.int64)


X4 = (2, 3, 7, 6)


# fmt: off
def test_conv_plain():
    check_op("Conv", {}, [X4, W((4, 3, 3, 3)), W((4,))], lambda x, w, b: F.conv2d(x, w, b))

def test_conv_stride_pad():
    check_op("Conv", {"strides": (2, 2), "pads": (1, 1, 1, 1)}, [X4, W((4, 3, 3, 3))], lambda x, w: F.conv2d(x, w, stride=2, padding=1))

def test_conv_asymmetric_pads():
    check_op("Conv", {"pads": (1, 0, 2, 1)}, [X4, W((4, 3, 3, 2))], lambda x, w: F.conv2d(F.pad(x, (0, 1, 1, 2)), w))

def test_conv_dilation():
    check_op("Conv", {"dilations": (2, 1), "pads": (2, 1, 2, 1)}, [X4, W((4, 3, 3, 3)), W((4,))], lambda x, w, b: F.conv2d(x, w, b, padding=(2, 1), dilation=(2, 1)))

def test_conv_groups():
    check_op("Conv", {"group": 3, "pads": (1, 1, 1, 1)}, [(2, 6, 5, 5), W((9, 2, 3, 3))], lambda x, w: F.conv2d(x, w, padding=1, groups=3))

def test_conv_depthwise():
    check_op("Conv", {"group": 3, "strides": (2, 2), "pads": (1, 1, 1, 1)}, [X4, W((6, 1, 3, 3)), W((6,))], lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=3))

def test_conv_depthwise_dilated_asymmetric():
    check_op("Conv", {"group": 3, "pads": (2, 0, 1, 3), "dilations": (1, 2)}, [X4, W((3, 1, 2, 3)), W((3,))], lambda x, w, b: F.conv2d(F.pad(x, (0, 3, 2, 1)), w, b, dilation=(1, 2), groups=3))

def test_conv_strided_dilated_asymmetric():
    check_op("Conv", {"pads": (1, 2, 0, 1), "strides": (2, 1), "dilations": (2, 1)}, [X4, W((4, 3, 3, 2)), W((4,))], lambda x, w, b: F.conv2d(F.pad(x, (2, 1, 1, 0)), w, b, stride=(2, 1), dilation=(2, 1)))

def test_conv_pointwise():
    check_op("Conv", {}, [X4, W((5, 3, 1, 1)), W((5,))], lambda x, w, b: F.conv2d(x, w, b))

def test_conv_pointwise_strided():
    check_op("Conv", {"strides": (2, 2)}, [X4, W((5, 3, 1, 1))], lambda x, w: F.conv2d(x, w, stride=2))

def test_conv_same_upper():
    check_op("Conv", {"auto_pad": "SAME_UPPER", "strides": (2, 2)}, [X4, W((4, 3, 2, 2))], lambda x, w: F.conv2d(F.pad(x, (0, 0, 0, 1)), w, stride=2))

def test_conv_frozen_weight():
    check_op("Conv", {"pads": (1, 1, 1, 1)}, [X4, C((4, 3, 3, 3)), C((4,))], lambda x, w, b: F.conv2d(x, w, b, padding=1))

def test_conv_weight_only():
    check_op("Conv", {"pads": (1, 1, 1, 1)}, [X(X4), W((4, 3, 3, 3)), C((4,))], lambda x, w, b: F.conv2d(x, w, b, padding=1))

WIDE = (2, 3, 5, 18)  # >= 16 output columns: the direct (padded-plane) path

def test_conv_direct():
    check_op("Conv", {"pads": (1, 1, 1, 1)}, [WIDE, W((4, 3, 3, 3)), W((4,))], lambda x, w, b: F.conv2d(x, w, b, padding=1))

def test_conv_direct_asymmetric_dilated():
    check_op("Conv", {"pads": (2, 0, 1, 3), "dilations": (1, 2)}, [WIDE, W((4, 3, 2, 3))], lambda x, w: F.conv2d(F.pad(x, (0, 3, 2, 1)), w, dilation=(1, 2)))

def test_conv_direct_frozen():
    check_op("Conv", {"pads": (1, 1, 1, 1)}, [WIDE, C((4, 3, 3, 3))], lambda x, w: F.conv2d(x, w, padding=1))

SHIFTED = (2, 8, 9, 10)  # >= 8 channels, padded planes < 1.6x the output: shifted matmuls

def test_conv_shifted():
    check_op("Conv", {"pads": (1, 1, 1, 1)}, [SHIFTED, W((4, 8, 3, 3)), W((4,))], lambda x, w, b: F.conv2d(x, w, b, padding=1))

def test_conv_shifted_asymmetric_dilated():
    check_op("Conv", {"pads": (2, 0, 1, 3), "dilations": (1, 2)}, [SHIFTED, W((4, 8, 2, 3))], lambda x, w: F.conv2d(F.pad(x, (0, 3, 2, 1)), w, dilation=(1, 2)))

def test_conv_shifted_frozen():
    check_op("Conv", {"pads": (1, 1, 1, 1)}, [SHIFTED, C((4, 8, 3, 3))], lambda x, w: F.conv2d(x, w, padding=1))

WINOGRAD = (2, 32, 5, 6)  # 3x3 stride 1, >= WINOGRAD_MIN_CHANNELS inputs: Winograd F(2x2, 3x3)

def test_conv_winograd():
    check_op("Conv", {"pads": (1, 1, 1, 1)}, [WINOGRAD, W((4, 32, 3, 3)), W((4,))], lambda x, w, b: F.conv2d(x, w, b, padding=1))

def test_conv_winograd_asymmetric_pads():
    check_op("Conv", {"pads": (2, 0, 1, 2)}, [WINOGRAD, W((3, 32, 3, 3))], lambda x, w: F.conv2d(F.pad(x, (0, 2, 2, 1)), w))

def test_conv_winograd_unpadded_odd():
    check_op("Conv", {}, [(3, 32, 7, 4), W((5, 32, 3, 3)), W((5,))], lambda x, w, b: F.conv2d(x, w, b))

def test_conv_winograd_frozen():
    check_op("Conv", {"pads": (1, 1, 1, 1)}, [WINOGRAD, C((4, 32, 3, 3))], lambda x, w: F.conv2d(x, w, padding=1))

def test_gemm_transb_bias():
    check_op("Gemm", {"transB": 1}, [(4, 6), W((5, 6)), W((5,))], lambda a, b, c: a @ b.T + c)

def test_gemm_alpha_beta_transa():
    check_op("Gemm", {"transA": 1, "alpha": 0.5, "beta": 2.0}, [(6, 4), W((6, 5)), W((4, 1))], lambda a, b, c: 0.5 * a.T @ b + 2.0 * c)

def test_gemm_no_bias_alpha():
    check_op("Gemm", {"alpha": 3.0}, [(4, 6), (6, 5)], lambda a, b: 3.0 * a @ b)

def test_matmul_2d():
    check_op("MatMul", {}, [(4, 6), W((6, 5))], lambda a, b: a @ b)

def test_matmul_broadcast():
    check_op("MatMul", {}, [(2, 3, 4, 6), (3, 6, 5)], lambda a, b: a @ b)

def test_add_same():
    check_op("Add", {}, [X4, X4], lambda a, b: a + b)

def test_add_bias():
    check_op("Add", {}, [X4, W((3, 1, 1))], lambda a, b: a + b)

def test_add_broadcast_activation():
    check_op("Add", {}, [X4, (1, 3, 1, 6)], lambda a, b: a + b)

def test_mul_same():
    check_op("Mul", {}, [X4, X4], lambda a, b: a * b)

def test_mul_broadcast():
    check_op("Mul", {}, [X4, (3, 1, 6)], lambda a, b: a * b)

def test_mul_constant():
    check_op("Mul", {}, [X4, C((3, 1, 1))], lambda a, b: a * b)

def test_relu():
    check_op("Relu", {}, [X4], F.relu)

def test_clip_relu6():
    check_op("Clip", {}, [X4, f32(0.0), f32(0.6)], lambda x, lo, hi: x.clamp(lo, hi))

def test_clip_min_only():
    check_op("Clip", {}, [X4, f32(-0.3)], lambda x, lo: x.clamp(min=lo))

def test_clip_absent_min():
    check_op("Clip", {}, [X4, None, f32(0.2)], lambda x, lo, hi: x.clamp(max=hi))

def test_maxpool():
    check_op("MaxPool", {"kernel_shape": (2, 2), "strides": (2, 2)}, [X4], lambda x: F.max_pool2d(x, 2, 2))

def test_maxpool_tiling():  # 2x2 windows that tile x: the branch-free path, no zero fill
    check_op("MaxPool", {"kernel_shape": (2, 2), "strides": (2, 2)}, [(2, 3, 6, 8)], lambda x: F.max_pool2d(x, 2, 2))

def test_maxpool_ceil_partial():  # full 2x2 windows branch-free, the partial last ones not
    check_op("MaxPool", {"kernel_shape": (2, 2), "strides": (2, 2), "ceil_mode": 1}, [(2, 3, 7, 5)], lambda x: F.max_pool2d(x, 2, 2, ceil_mode=True))

def test_maxpool_pad_stride():
    check_op("MaxPool", {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}, [X4], lambda x: F.max_pool2d(x, 3, 2, 1))

def test_maxpool_ceil_dilation():
    check_op("MaxPool", {"kernel_shape": (2, 2), "strides": (2, 2), "dilations": (1, 2), "ceil_mode": 1}, [X4], lambda x: F.max_pool2d(x, 2, 2, dilation=(1, 2), ceil_mode=True))

def test_avgpool():
    check_op("AveragePool", {"kernel_shape": (2, 2), "strides": (2, 2)}, [X4], lambda x: F.avg_pool2d(x, 2, 2))

def test_avgpool_pad_exclude():
    check_op("AveragePool", {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}, [X4], lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))

def test_avgpool_pad_include_ceil():
    check_op("AveragePool", {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "count_include_pad": 1, "ceil_mode": 1}, [X4], lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True))

def test_global_avgpool():
    check_op("GlobalAveragePool", {}, [X4], lambda x: x.mean((2, 3), keepdim=True))

def test_flatten():
    check_op("Flatten", {"axis": 2}, [X4], lambda x: x.reshape(6, -1))

def test_reshape():
    check_op("Reshape", {}, [X4, i64(0, -1, 6)], lambda x, s: x.reshape(2, -1, 6))

def test_identity():
    check_op("Identity", {}, [X4], lambda x: x * 1)

def test_dropout_is_identity():
    check_op("Dropout", {}, [X4, f32(0.5)], lambda x, r: x * 1)

def test_pad():
    check_op("Pad", {}, [X4, i64(0, 0, 1, 2, 0, 1, 2, 0), f32(0.5)], lambda x, p, v: F.pad(x, (2, 0, 1, 2, 0, 1), value=0.5))

def test_pad_negative_axes():
    check_op("Pad", {}, [X4, i64(-1, 2, 1, -2), None, i64(2, 3)], lambda x, p, v, a: F.pad(x, (2, -2, -1, 1)))

def test_slice():
    check_op("Slice", {}, [X4, i64(1, 0), i64(3, -1), i64(1, 3), i64(1, 2)], lambda x, s, e, a, st: x[:, 1:3, :, 0:-1:2])

def test_slice_reverse_clamped():
    check_op("Slice", {}, [X4, i64(-1), i64(-100), i64(2), i64(-2)], lambda x, s, e, a, st: x.flip(2)[:, :, ::2])

def test_concat():
    check_op("Concat", {"axis": 1}, [X4, (2, 2, 7, 6), W((2, 1, 7, 6))], lambda a, b, c: torch.cat([a, b, c], 1))

def test_bn_inference_frozen():
    check_op("BatchNormalization", {"epsilon": 1e-3}, [X4, C((3,)), C((3,)), C((3,)), np.abs(f32(0.5, 1.0, 2.0))], lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b, eps=1e-3))

def test_bn_inference_trainable():
    check_op("BatchNormalization", {}, [X4, W((3,)), W((3,)), C((3,)), f32(0.5, 1.0, 2.0)], lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b))

def test_bn_training():
    check_op("BatchNormalization", {"training_mode": 1}, [X4, W((3,)), W((3,)), C((3,)), f32(0.5, 1.0, 2.0)], lambda x, w, b, m, v: F.batch_norm(x, None, None, w, b, training=True), grad_atol=3e-4)

def test_bn_training_bias_only():
    check_op("BatchNormalization", {"training_mode": 1}, [X(X4), C((3,)), W((3,)), C((3,)), f32(0.5, 1.0, 2.0)], lambda x, w, b, m, v: F.batch_norm(x, None, None, w, b, training=True))

def test_bn_training_rank2():
    check_op("BatchNormalization", {"training_mode": 1}, [(6, 3), W((3,)), W((3,)), C((3,)), f32(0.5, 1.0, 2.0)], lambda x, w, b, m, v: F.batch_norm(x, None, None, w, b, training=True), grad_atol=3e-4)

def test_xent_mean():
    check_op("SoftmaxCrossEntropyLoss", {}, [(5, 4), i64(0, 3, 1, 1, 2)], lambda s, y: F.cross_entropy(s, y))

def test_xent_label_smoothing():
    check_op("SoftmaxCrossEntropyLoss", {"label_smoothing": 0.1}, [(5, 4), i64(0, 3, 1, 1, 2)], lambda s, y: F.cross_entropy(s, y, label_smoothing=0.1))

def test_xent_sum():
    check_op("SoftmaxCrossEntropyLoss", {"reduction": "sum"}, [(5, 4), i64(0, 3, 1, 1, 2)], lambda s, y: F.cross_entropy(s, y, reduction="sum"))
# fmt: on


def test_conv_winograd_shapes_take_winograd():
    from facto_edge.runtime.kernels.conv import WINOGRAD_MIN_CHANNELS, ConvGeom, conv_path

    assert WINOGRAD[1] >= WINOGRAD_MIN_CHANNELS
    for pads, hw in (((1, 1, 1, 1), (5, 6)), ((2, 0, 1, 2), (5, 6)), ((0, 0, 0, 0), (7, 4))):
        g = ConvGeom(3, 3, 1, 1, *pads)
        assert conv_path(g, 32, g.out_hw(*hw)[1], hw) == "winograd"
    assert conv_path(ConvGeom(3, 3, 2, 2, 1, 1, 1, 1), 32, 3, (5, 6)) != "winograd"
    assert conv_path(ConvGeom(3, 3, 1, 1, 3, 3, 3, 3), 32, 10, (5, 6)) != "winograd"


@pytest.mark.parametrize(("n", "lo", "hi"), [(37, 0.0, math.inf), (64, -0.5, 0.5), (7, 0.0, math.inf), (1003, -0.2, 1.0)])
def test_fused_clip_mask_has_the_codec_layout(n, lo, hi):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    y, bits = np.empty_like(x), np.empty(mask_nbytes(x.shape), np.uint8)
    clip_mask_fwd(x, y, bits, lo, hi)
    ref = np.empty_like(bits)
    mask_encode(x, ref, lo, hi)
    np.testing.assert_array_equal(bits, ref)
    np.testing.assert_array_equal(y, np.clip(x, lo, hi))
    g, ref_g = np.empty_like(x), np.empty_like(x)
    mask_bwd(bits, x, g)
    mask_apply(ref, x, ref_g)
    np.testing.assert_array_equal(g, ref_g)
    inplace = x.copy()
    mask_bwd(bits, inplace, inplace)
    np.testing.assert_array_equal(inplace, ref_g)


def test_unsupported_op_names_type_and_node():
    with pytest.raises(UnsupportedOpError, match="Celu node 'node'"):
        check_op("Celu", {}, [X4], F.celu)


def test_unsupported_pad_mode():
    with pytest.raises(UnsupportedOpError, match="reflect"):
        check_op("Pad", {"mode": "reflect"}, [X4, i64(0, 0, 1, 1, 0, 0, 1, 1)], F.pad)


def test_unsupported_conv_weight_activation():
    with pytest.raises(UnsupportedOpError, match="weight .input 1. must be an initializer"):
        check_op("Conv", {}, [X4, (4, 3, 1, 1)], F.conv2d)


def test_unsupported_dynamic_reshape():
    with pytest.raises(UnsupportedOpError, match="shape .input 1. must be an initializer"):
        check_op("Reshape", {}, [X4, X((2,))], torch.reshape)


# fmt: off
def test_sub_broadcast():
    check_op("Sub", {}, [X4, (3, 1, 6)], lambda a, b: a - b)

def test_sub_se_scale():
    check_op("Sub", {}, [(2, 3, 1, 1), X4], lambda a, b: a - b)

def test_div_broadcast():
    check_op("Div", {}, [X4, (2, 3, 1, 1)], lambda a, b: a / b, grad_atol=1e-3)

def test_div_constant():
    check_op("Div", {}, [X4, f32(1.4142135)], lambda a, b: a / b)


def test_sigmoid():
    check_op("Sigmoid", {}, [X4], torch.sigmoid)

def test_tanh():
    check_op("Tanh", {}, [X4], torch.tanh)

def test_hard_sigmoid():
    check_op("HardSigmoid", {}, [X4], lambda x: (0.2 * x + 0.5).clamp(0, 1))

def test_hard_sigmoid_torch_attrs():
    check_op("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, [X4], F.hardsigmoid)

def test_hard_swish():
    check_op("HardSwish", {}, [X4], F.hardswish)

def test_leaky_relu():
    check_op("LeakyRelu", {}, [X4], lambda x: F.leaky_relu(x, 0.01))

def test_leaky_relu_alpha():
    check_op("LeakyRelu", {"alpha": 0.2}, [X4], lambda x: F.leaky_relu(x, 0.2))

def test_elu():
    check_op("Elu", {}, [X4], F.elu)

def test_elu_alpha():
    check_op("Elu", {"alpha": 0.5}, [X4], lambda x: F.elu(x, 0.5))

def test_gelu():
    check_op("Gelu", {}, [X4], F.gelu)

def test_gelu_tanh():
    check_op("Gelu", {"approximate": "tanh"}, [X4], lambda x: F.gelu(x, approximate="tanh"))

def test_swish():
    check_op("Swish", {}, [X4], F.silu)

def test_swish_alpha():
    check_op("Swish", {"alpha": 1.702}, [X4], lambda x: x * torch.sigmoid(1.702 * x))

def test_erf():
    check_op("Erf", {}, [X4], torch.erf)


@pytest.mark.parametrize("kind", ["swish", "swish alpha", "sigmoid"])
def test_swish_sigmoid_kernels_over_blocks_and_extremes(kind):
    """The float32 Swish and Sigmoid kernels work in blocks: several blocks and a ragged
    tail, with saturating inputs, match torch forward and backward (gx may be gy)."""
    from facto_edge.runtime.kernels import activation as A
    from facto_edge.runtime.kernels import activation_math as M

    code, alpha = {"swish": (M.SWISH, 1.0), "swish alpha": (M.SWISH, 1.702),
                   "sigmoid": (M.SIGMOID, 0.0)}[kind]  # fmt: skip
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(3 * 2048 + 77) * 8).astype(np.float32)
    x[:8] = [-200.0, -90.0, -87.5, -20.0, 0.0, 20.0, 90.0, 200.0]
    gy = rng.standard_normal(x.size).astype(np.float32)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = torch.sigmoid(tx) if code == M.SIGMOID else tx * torch.sigmoid(alpha * tx)
    ty.backward(torch.from_numpy(gy))
    y = np.full_like(x, np.nan)
    A.activation_fwd(x, y, code, alpha, 0.0)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    g = gy.copy()
    A.activation_bwd(x, g, g, code, alpha, 0.0)
    np.testing.assert_allclose(g, tx.grad.numpy(), rtol=1e-5, atol=1e-6)

def test_prelu_per_channel():
    check_op("PRelu", {}, [X4, W((3, 1, 1))], lambda x, s: F.prelu(x, s.reshape(-1)))

def test_prelu_scalar_frozen():
    check_op("PRelu", {}, [X4, C((1,))], lambda x, s: F.prelu(x, s))

def test_prelu_2d():
    check_op("PRelu", {}, [(4, 5), W((5,))], lambda x, s: F.prelu(x, s))

def test_clip_attributes():
    check_op("Clip", {"min": -0.5, "max": 0.25}, [X4], lambda x: x.clamp(-0.5, 0.25))
# fmt: on


def test_unsupported_prelu_slope_not_per_channel():
    with pytest.raises(UnsupportedOpError, match="per channel"):
        check_op("PRelu", {}, [X4, C((6,))], F.prelu)
