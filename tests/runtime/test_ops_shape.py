# ruff: noqa: E501  (one line per op test, as tinygrad's test_ops)
"""The shape, reduction and normalization ops, and 1-D (N, C, L) Conv/BN/pooling, against
torch through the real executor (test_ops.check_op: saved tensors through the codec,
activations poisoned before backward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_ops import C, W, X, _alloc, check_op, f32, i64

from facto_edge.errors import UnsupportedOpError
from facto_edge.runtime.codecs import get_codec
from facto_edge.runtime.executor import Executor
from facto_edge.runtime.graph import Node, build_schedule

X4 = (2, 3, 5, 6)
X5 = (2, 2, 3, 4, 5)
L3 = (2, 3, 9)  # a 1-D activation: N, C, L


# fmt: off
def test_transpose_nchw_to_nhwc():
    check_op("Transpose", {"perm": (0, 2, 3, 1)}, [X4], lambda x: x.permute(0, 2, 3, 1))

def test_transpose_nhwc_to_nchw():
    check_op("Transpose", {"perm": (0, 3, 1, 2)}, [(2, 5, 6, 3)], lambda x: x.permute(0, 3, 1, 2))

def test_transpose_channel_shuffle_rank5():
    check_op("Transpose", {"perm": (0, 2, 1, 3, 4)}, [X5], lambda x: x.transpose(1, 2))

def test_transpose_default_reverses():
    check_op("Transpose", {}, [(2, 3, 4)], lambda x: x.permute(2, 1, 0))

def test_transpose_rank4_to_rank4_batch_axis():
    check_op("Transpose", {"perm": (1, 0, 3, 2)}, [X4], lambda x: x.permute(1, 0, 3, 2))

def test_reduce_mean_spatial():
    check_op("ReduceMean", {"axes": (2, 3), "keepdims": 0}, [X4], lambda x: x.mean((2, 3)))

def test_reduce_mean_keepdims_axes_input():
    check_op("ReduceMean", {}, [X4, i64(-1, 2)], lambda x, a: x.mean((2, 3), keepdim=True))

def test_reduce_mean_channels_keepdims():
    check_op("ReduceMean", {"axes": (1,)}, [X4], lambda x: x.mean(1, keepdim=True))

def test_reduce_mean_all():
    check_op("ReduceMean", {"keepdims": 0}, [(3, 4)], lambda x: x.mean())

def test_reduce_mean_batch_rank5_to_rank4():
    check_op("ReduceMean", {"axes": (0,), "keepdims": 0}, [X5], lambda x: x.mean(0))

def test_squeeze_axes_input():
    check_op("Squeeze", {}, [(2, 3, 1, 1), i64(2, 3)], lambda x, a: x.squeeze(3).squeeze(2))

def test_squeeze_all_ones():
    check_op("Squeeze", {}, [(2, 1, 4)], lambda x: x.squeeze(1))

def test_unsqueeze_to_rank4():
    check_op("Unsqueeze", {}, [(2, 3, 4), i64(2)], lambda x, a: x.unsqueeze(2))

def test_unsqueeze_attribute_two_axes():
    check_op("Unsqueeze", {"axes": (-1, 1)}, [(2, 3)], lambda x: x.unsqueeze(1).unsqueeze(-1))

def test_reshape_to_rank5_and_back():
    check_op("Reshape", {}, [X4, i64(2, 3, 1, 5, 6)], lambda x, s: x.reshape(2, 3, 1, 5, 6))
    check_op("Reshape", {}, [X5, i64(2, 6, 4, 5)], lambda x, s: x.reshape(2, 6, 4, 5))

def test_concat_last_axis_rank4():
    check_op("Concat", {"axis": -1}, [X4, (2, 3, 5, 2)], lambda a, b: torch.cat([a, b], -1))

def test_concat_batch_axis_rank3():
    check_op("Concat", {"axis": 0}, [(2, 3, 4), (1, 3, 4)], lambda a, b: torch.cat([a, b], 0))

def test_layernorm_channels_last():
    check_op("LayerNormalization", {"epsilon": 1e-6}, [(2, 5, 6, 4), W((4,)), W((4,))], lambda x, w, b: F.layer_norm(x, (4,), w, b, 1e-6), grad_atol=2e-4)

def test_layernorm_rank2_no_bias():
    check_op("LayerNormalization", {}, [(3, 8), W((8,))], lambda x, w: F.layer_norm(x, (8,), w), grad_atol=2e-4)

def test_layernorm_two_trailing_axes():
    check_op("LayerNormalization", {"axis": 2}, [X4, W((5, 6)), W((5, 6))], lambda x, w, b: F.layer_norm(x, (5, 6), w, b), grad_atol=2e-4)

def test_layernorm_frozen_input_scale_trains():
    check_op("LayerNormalization", {}, [X((4, 6)), W((6,)), W((6,))], lambda x, w, b: F.layer_norm(x, (6,), w, b), grad_atol=2e-4)

def test_layernorm_only_bias_trains():
    check_op("LayerNormalization", {}, [X((4, 6)), C((6,)), W((6,))], lambda x, w, b: F.layer_norm(x, (6,), w, b))

def test_softmax_last_axis():
    check_op("Softmax", {}, [(3, 7)], lambda x: x.softmax(-1))

def test_softmax_channels_rank4():
    check_op("Softmax", {"axis": 1}, [X4], lambda x: x.softmax(1))

def test_softmax_batch_axis_rank4():
    check_op("Softmax", {"axis": 0}, [X4], lambda x: x.softmax(0))

def test_softmax_middle_axis_rank3():
    check_op("Softmax", {"axis": 1}, [(2, 4, 3)], lambda x: x.softmax(1))

def test_groupnorm():
    check_op("GroupNormalization", {"num_groups": 2}, [(2, 6, 3, 4), W((6,)), W((6,))], lambda x, w, b: F.group_norm(x, 2, w, b), grad_atol=2e-4)

def test_groupnorm_fused_affine_shapes_eps():
    check_op("GroupNormalization", {"num_groups": 3, "epsilon": 1e-3}, [(3, 6, 2, 5), W((6, 1, 1)), C((6, 1, 1))], lambda x, w, b: F.group_norm(x, 3, w.reshape(-1), b.reshape(-1), 1e-3), grad_atol=2e-4)

def test_groupnorm_no_scale_rank3():
    check_op("GroupNormalization", {"num_groups": 2}, [(2, 4, 7), None, W((4,))], lambda x, w, b: F.group_norm(x, 2) + b.reshape(4, 1), grad_atol=2e-4)

def test_groupnorm_no_affine_one_group():
    check_op("GroupNormalization", {"num_groups": 1}, [X4], lambda x: F.group_norm(x, 1), grad_atol=2e-4)

def test_groupnorm_frozen_input_scale_trains():
    check_op("GroupNormalization", {"num_groups": 2}, [X((2, 4, 3, 3)), W((4,)), C((4,))], lambda x, w, b: F.group_norm(x, 2, w, b))

def test_groupnorm_only_bias_trains():
    check_op("GroupNormalization", {"num_groups": 2}, [X((2, 4, 3, 3)), C((4,)), W((4,))], lambda x, w, b: F.group_norm(x, 2, w, b))

def test_instancenorm():
    check_op("InstanceNormalization", {"epsilon": 1e-5}, [X4, W((3,)), W((3,))], lambda x, w, b: F.instance_norm(x, weight=w, bias=b), grad_atol=2e-4)

def test_instancenorm_rank3_as_torch_onnx_writes_groupnorm():
    check_op("InstanceNormalization", {}, [(2, 2, 12), C((2,)), C((2,))], lambda x, w, b: F.instance_norm(x, weight=w, bias=b), grad_atol=2e-4)

def test_conv1d():
    check_op("Conv", {"pads": (1, 1)}, [L3, W((4, 3, 3)), W((4,))], lambda x, w, b: F.conv1d(x, w, b, padding=1))

def test_conv1d_strided_dilated_grouped():
    check_op("Conv", {"strides": (2,), "dilations": (2,), "pads": (2, 1), "group": 3}, [L3, W((6, 1, 3))], lambda x, w: F.conv1d(F.pad(x, (2, 1)), w, stride=2, dilation=2, groups=3))

def test_conv1d_pointwise_frozen():
    check_op("Conv", {}, [L3, C((5, 3, 1)), C((5,))], lambda x, w, b: F.conv1d(x, w, b))

def test_bn1d_training():
    check_op("BatchNormalization", {"training_mode": 1}, [L3, W((3,)), W((3,)), C((3,)), f32(0.5, 1.0, 2.0)], lambda x, w, b, m, v: F.batch_norm(x, None, None, w, b, training=True), grad_atol=3e-4)

def test_bn1d_inference():
    check_op("BatchNormalization", {}, [L3, W((3,)), W((3,)), C((3,)), f32(0.5, 1.0, 2.0)], lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b))

def test_maxpool1d():
    check_op("MaxPool", {"kernel_shape": (2,), "strides": (2,)}, [L3], lambda x: F.max_pool1d(x, 2, 2))

def test_maxpool1d_pad_dilation_ceil():
    check_op("MaxPool", {"kernel_shape": (3,), "strides": (2,), "pads": (1, 1), "dilations": (2,), "ceil_mode": 1}, [L3], lambda x: F.max_pool1d(x, 3, 2, 1, dilation=2, ceil_mode=True))

def test_avgpool1d_exclude_pad_ceil():
    check_op("AveragePool", {"kernel_shape": (3,), "strides": (2,), "pads": (1, 1), "ceil_mode": 1}, [L3], lambda x: F.avg_pool1d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False))

def test_avgpool1d_include_pad():
    check_op("AveragePool", {"kernel_shape": (3,), "strides": (1,), "pads": (1, 1), "count_include_pad": 1}, [L3], lambda x: F.avg_pool1d(x, 3, 1, 1))

def test_global_avgpool1d():
    check_op("GlobalAveragePool", {}, [L3], lambda x: x.mean(2, keepdim=True))
# fmt: on


def _run_graph(nodes, inputs, params, trainable, gy_seed=1):
    """Forward and backward of `nodes` (output 'y'): (y, {input: gradient})."""
    schedule = build_schedule(nodes, tuple(trainable), "y")
    feeds = {n: (v.shape, np.dtype(np.float32)) for n, v in inputs.items()}
    ex = Executor(schedule, params, feeds, "y", get_codec("fp32"), _alloc())
    for n, v in inputs.items():
        ex.logical(n)[...] = v
    ex.forward(training=True)
    y = ex.logical("y").copy()
    gy = np.random.default_rng(gy_seed).standard_normal(y.shape).astype(np.float32)
    ex.logical_grad("y")[...] = gy
    ex.backward()
    return y, gy, {n: ex.logical_grad(n).copy() for n in trainable}


@pytest.mark.parametrize(
    "attrs,split",
    [({"axis": 1}, None), ({"axis": 1, "num_outputs": 2}, None), ({"axis": 3}, i64(2, 4))],
)
def test_split_then_concat_reversed(attrs, split):
    """Split's outputs each carry a gradient: concat them reversed and compare."""
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 6)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((1, 1, 1, 6)).astype(np.float32)
    ins = ("xs", "split") if split is not None else ("xs",)
    params = {"w": w, **({"split": split} if split is not None else {})}
    nodes = [
        Node("Mul", "scale", ("x", "w"), ("xs",), {}, frozenset({1})),
        Node(
            "Split",
            "split",
            ins,
            ("a", "b"),
            attrs,
            frozenset({1}) if split is not None else frozenset(),
        ),
        Node("Concat", "cat", ("b", "a"), ("y",), {"axis": attrs["axis"]}),
    ]
    y, gy, grads = _run_graph(nodes, {"x": x}, params, ["w"])
    wt = torch.from_numpy(w).double().requires_grad_()
    sizes = [2, 4] if split is not None else [x.shape[attrs["axis"]] // 2] * 2
    a, b = (torch.from_numpy(x).double() * wt).split(sizes, attrs["axis"])
    ref = torch.cat([b, a], attrs["axis"])
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    (ref * torch.from_numpy(gy).double()).sum().backward()
    np.testing.assert_allclose(grads["w"], wt.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "op,attrs,shapes_,match",
    [
        ("LayerNormalization", {"axis": 1}, [X4, W((3, 5, 6))], "axis 1 of a rank-4 input"),
        ("Squeeze", {"axes": (1,)}, [X4], "not all of size 1"),
        ("Transpose", {"perm": (0, 0, 1, 2)}, [X4], "not a permutation"),
        ("Conv", {}, [(2, 3, 4, 5, 6), W((4, 3, 1, 1, 1))], "1-D .* and 2-D"),
        (
            "GroupNormalization",
            {"num_groups": 4},
            [X4, W((3,)), W((3,))],
            "does not divide the 3 channels",
        ),
        ("GroupNormalization", {"num_groups": 3}, [X4, W((1,)), W((3,))], "one value per channel"),
        ("GroupNormalization", {"num_groups": 3, "shape": [0, 3, 6, 5]}, [X4], "changes the shape"),
    ],
)
def test_unsupported_shapes_are_named(op, attrs, shapes_, match):
    with pytest.raises(UnsupportedOpError, match=match):
        check_op(op, attrs, shapes_, lambda *a: a[0])
