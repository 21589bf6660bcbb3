"""20 training steps of the runtime against ONNX Runtime training on the export's ort/
artifacts: the same loss trajectory, SGD and AdamW (DESIGN.md, correctness references),
on simple_cnn and on every zoo model. Where ORT 1.19 cannot train an op of a zoo model
(mobilenetv3_small's HardSigmoid and HardSwish, densenet's AveragePool and frozen
BatchNormalization) the reference is built here from model.onnx with those ops rewritten
into equivalent ones it trains."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from zoo_cases import cases, input_shape

from facto_edge.runtime import TrainingSession
from facto_edge.runtime.manifest import Manifest

pytest.importorskip("onnxruntime.training")

STEPS, LR = 20, 0.02


def batches(n_batches: int = 4, n: int = 8, shape=(3, 32, 32), seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((n, *shape)).astype(np.float32),
         rng.integers(0, 10, n).astype(np.int64))
        for _ in range(n_batches)
    ]  # fmt: skip


def ort_losses(model_dir, optimizer_file: str, data, ort_dir=None) -> list[float]:
    from onnxruntime.training import api

    ort_dir = ort_dir or model_dir / "ort"
    state = api.CheckpointState.load_checkpoint(str(ort_dir / "checkpoint"))
    module = api.Module(
        str(ort_dir / "training_model.onnx"), state, str(ort_dir / "eval_model.onnx")
    )
    opt = api.Optimizer(str(ort_dir / optimizer_file), module)
    opt.set_learning_rate(LR)
    module.train()
    losses = []
    for step in range(STEPS):
        x, y = data[step % len(data)]
        losses.append(float(module(x, y)))
        opt.step()
        module.lazy_reset_grad()
    return losses


def our_losses(model_dir, optimizer: str, data, batch_size: int = 8) -> list[float]:
    # ORT's SGD has no momentum; its AdamW uses eps 1e-6 (see runtime/optimizers.py).
    session = TrainingSession(
        model_dir, batch_size=batch_size, optimizer=optimizer, lr=LR, momentum=0.0, eps=1e-6
    )
    return [session.train_step(*data[step % len(data)]) for step in range(STEPS)]


@pytest.mark.parametrize("bn", ["fold", "train"])
@pytest.mark.parametrize(
    "optimizer, ort_file", [("sgd", "optimizer_sgd.onnx"), ("adamw", "optimizer_model.onnx")]
)
def test_loss_trajectory_matches_onnxruntime(exported, bn, optimizer, ort_file):
    _, model_dir = exported("simple_cnn", rank=0.25, bn=bn)
    data = batches()
    ours, theirs = our_losses(model_dir, optimizer, data), ort_losses(model_dir, ort_file, data)
    assert theirs[-1] < theirs[0]
    rel = np.abs(np.array(ours) - np.array(theirs)) / np.abs(np.array(theirs))
    assert rel.max() < 1e-3, list(zip(ours, theirs, strict=True))


def test_delta_trajectory_matches_onnxruntime(exported):
    """--train delta (frozen dense weights beside a zero-started update), BN trained."""
    _, model_dir = exported("simple_cnn", rank=0.25, train="delta", bn="train")
    data = batches()
    ours = our_losses(model_dir, "sgd", data)
    theirs = ort_losses(model_dir, "optimizer_sgd.onnx", data)
    assert theirs[-1] < theirs[0]
    rel = np.abs(np.array(ours) - np.array(theirs)) / np.abs(np.array(theirs))
    assert rel.max() < 1e-3, list(zip(ours, theirs, strict=True))


# Every zoo model at rank 0.5 (shared with test_zoo_gradients.py), SGD, batches of four:
# `--train last --bn fold` runs free for 20 steps; `--train core,last --bn train` runs in
# lockstep (ORT starts each of the 20 steps from the runtime's parameters, and the loss
# and the update must agree), since free-running batch-statistics
# trajectories are chaotic: resnet20_cifar's and mcunet_like's moved apart by 1e-2
# within 20 steps between two runs of the runtime itself whose inputs differed by 1e-7
# (a ReLU mask element flips, and the rest follows).
# ORT 1.19 has no gradient for HardSigmoid or HardSwish (mobilenetv3_small's export warns
# and writes no ort/); its AveragePool gradient dies of SIGFPE (densenet's first training
# step; any AveragePool, a depthwise Conv in its place trains); and its training graph
# turns a frozen BatchNormalization in inference mode into BatchNormInternal, which
# normalizes with the batch's statistics (densenet's pre-activation BNs, which no conv
# before them can fold). The reference of a model with any of them is built from its
# model.onnx with them rewritten.
REWRITTEN_FOR_ORT = ("HardSigmoid", "HardSwish", "AveragePool", "BatchNormalization")
KINKED = {"mobilenetv2_cifar"}  # see test_zoo_gradients.py
ZOO_CASES = cases([("last", "fold"), ("core,last", "train")])


def _attr(node: onnx.NodeProto, name: str, default):
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def _hard(node: onnx.NodeProto, constant, graph) -> list[onnx.NodeProto]:
    """HardSigmoid(x; alpha, beta) as Clip(x * alpha + beta, 0, 1); HardSwish(x) as
    x * HardSigmoid(x; 1/6, 1/2)."""
    hard_sigmoid = node.op_type == "HardSigmoid"
    alpha, beta = (
        (_attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)) if hard_sigmoid else (1 / 6, 0.5)
    )
    x, y = node.input[0], node.output[0]
    gate = y if hard_sigmoid else f"{y}.gate"
    nodes = [
        helper.make_node("Mul", [x, constant(np.float32(alpha))], [f"{y}.scaled"]),
        helper.make_node("Add", [f"{y}.scaled", constant(np.float32(beta))], [f"{y}.shifted"]),
        helper.make_node(
            "Clip", [f"{y}.shifted", constant(np.float32(0)), constant(np.float32(1))], [gate]
        ),
    ]
    return nodes + ([] if hard_sigmoid else [helper.make_node("Mul", [x, gate], [y])])


def _average_pool(node: onnx.NodeProto, constant, graph) -> list[onnx.NodeProto]:
    """AveragePool as a depthwise Conv whose weights are 1 / (kernel size): the same
    average where no window reaches into padding, or where padding counts."""
    kernel = _attr(node, "kernel_shape", None)
    pads = _attr(node, "pads", [0] * 2 * len(kernel))
    assert _attr(node, "ceil_mode", 0) == 0 and _attr(node, "auto_pad", b"NOTSET") == b"NOTSET"
    assert not any(pads) or _attr(node, "count_include_pad", 0), "padding left out of the mean"
    c = graph.dims[node.input[0]][1]
    weight = np.full((c, 1, *kernel), 1 / np.prod(kernel), np.float32)
    strides = _attr(node, "strides", [1] * len(kernel))
    return [
        helper.make_node("Conv", [node.input[0], constant(weight)], [node.output[0]],
                         kernel_shape=kernel, strides=strides, pads=pads, group=c)
    ]  # fmt: skip


def _frozen_batchnorm(node: onnx.NodeProto, constant, graph) -> list[onnx.NodeProto]:
    """A frozen BatchNormalization in inference mode as x * k + (bias - mean * k), k =
    scale / sqrt(var + eps) per channel (computed in float64); one that trains stays."""
    params = node.input[1:5]
    if _attr(node, "training_mode", 0) or any(p in graph.trainable for p in params):
        return [node]
    scale, bias, mean, var = (graph.values[p].astype(np.float64) for p in params)
    k = scale / np.sqrt(var + _attr(node, "epsilon", 1e-5))
    per_channel = (-1,) + (1,) * (len(graph.dims[node.input[0]]) - 2)
    k32, shift = (v.astype(np.float32).reshape(per_channel) for v in (k, bias - mean * k))
    y = node.output[0]
    return [
        helper.make_node("Mul", [node.input[0], constant(k32)], [f"{y}.scaled"]),
        helper.make_node("Add", [f"{y}.scaled", constant(shift)], [y]),
    ]


REWRITES = {"HardSigmoid": _hard, "HardSwish": _hard, "AveragePool": _average_pool,
            "BatchNormalization": _frozen_batchnorm}  # fmt: skip
assert tuple(REWRITES) == REWRITTEN_FOR_ORT


@dataclass(frozen=True)
class GraphFacts:
    """What a rewrite may need of the graph: static dims, initializer values, trainables."""

    dims: dict[str, list[int]]
    values: dict[str, np.ndarray]
    trainable: frozenset[str]


def rewritten_for_ort(proto: onnx.ModelProto, trainable=frozenset()) -> onnx.ModelProto:
    """A copy of `proto` computing the same function without the ops of REWRITES (each
    node replaced by what its entry makes of it) when the `trainable` tensors train."""
    model = copy.deepcopy(proto)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    values = [*inferred.input, *inferred.value_info]
    graph = GraphFacts(
        {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values},
        {t.name: numpy_helper.to_array(t) for t in model.graph.initializer},
        frozenset(trainable),
    )
    made: list[onnx.TensorProto] = []

    def constant(value: np.ndarray) -> str:
        made.append(numpy_helper.from_array(value, f"ort_rewrite.const{len(made)}"))
        return made[-1].name

    nodes = []
    for node in model.graph.node:
        rewrite = REWRITES.get(node.op_type)
        nodes += rewrite(node, constant, graph) if rewrite else [node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(made)
    return model


def reference_ort_dir(model_dir, tmp_path):
    """The export's ort/ where `rewritten_for_ort` leaves its model.onnx as it is; else
    artifacts written into `tmp_path` from the rewritten graph."""
    manifest = Manifest.load(model_dir)
    proto = onnx.load(str(model_dir / "model.onnx"))
    rewritten = rewritten_for_ort(proto, manifest.trainable)
    if list(rewritten.graph.node) == list(proto.graph.node):
        return model_dir / "ort"
    from facto_edge.exporters.ort_artifacts import write_ort_artifacts

    assert write_ort_artifacts(rewritten, manifest, tmp_path / "ort")
    return tmp_path / "ort"


def _ort_outputs(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    import onnxruntime

    return onnxruntime.InferenceSession(model.SerializeToString()).run(None, feed)


def _graph(nodes, x_shape, outputs) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)
    ys = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in outputs]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], ys), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 10
    return model


BN = ("bn.scale", "bn.bias", "bn.mean", "bn.var")


def test_the_rewrite_for_ort_computes_the_same_function():
    hard = _graph([
        helper.make_node("HardSigmoid", ["x"], ["a"], alpha=1 / 6, beta=0.5),
        helper.make_node("HardSigmoid", ["x"], ["b"]),  # ONNX's defaults 0.2, 0.5
        helper.make_node("HardSwish", ["x"], ["c"]),
    ], [64], "abc")  # fmt: skip
    pools = _graph([
        helper.make_node("AveragePool", ["x"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["x"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         count_include_pad=1),
        helper.make_node("AveragePool", ["x"], ["c"], kernel_shape=[3, 2], strides=[2, 1]),
        helper.make_node("BatchNormalization", ["x", *BN], ["d"], epsilon=1e-3),
    ], [2, 3, 6, 7], "abcd")  # fmt: skip
    rng = np.random.default_rng(1)
    pools.graph.initializer.extend(
        numpy_helper.from_array(rng.uniform(0.5, 2, 3).astype(np.float32), name) for name in BN
    )
    images = np.random.default_rng(0).standard_normal((2, 3, 6, 7), np.float32)
    for model, x in [(hard, np.linspace(-5, 5, 64, dtype=np.float32)), (pools, images)]:
        rewritten = rewritten_for_ort(model)
        assert not {n.op_type for n in rewritten.graph.node} & set(REWRITTEN_FOR_ORT)
        theirs, ours = _ort_outputs(model, {"x": x}), _ort_outputs(rewritten, {"x": x})
        for want, got in zip(theirs, ours, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    trained = rewritten_for_ort(pools, trainable={"bn.scale"})  # a BN that trains stays
    assert [n.op_type for n in trained.graph.node].count("BatchNormalization") == 1


def ort_session(ort_dir):
    from onnxruntime.training import api

    state = api.CheckpointState.load_checkpoint(str(ort_dir / "checkpoint"))
    module = api.Module(
        str(ort_dir / "training_model.onnx"), state, str(ort_dir / "eval_model.onnx")
    )
    opt = api.Optimizer(str(ort_dir / "optimizer_sgd.onnx"), module)
    opt.set_learning_rate(LR)
    module.train()
    return state, module, opt


def lockstep(model_dir, data, ort_dir) -> list[tuple[float, float, float]]:
    """(our loss, ORT's loss, relative difference of the two updates of all trainable
    tensors together) of each step, ORT starting every step from the runtime's parameters."""
    session = TrainingSession(model_dir, batch_size=4, optimizer="sgd", lr=LR, momentum=0.0)
    state, module, opt = ort_session(ort_dir)
    rows = []
    for step in range(STEPS):
        x, y = data[step % len(data)]
        before = {k: v.copy() for k, v in session.parameters().items()}
        for name, value in before.items():
            state.parameters[name].data = value
        theirs = float(module(x, y))
        opt.step()
        module.lazy_reset_grad()
        ours = session.train_step(x, y)
        ours_delta = np.concatenate(
            [(v - before[k]).ravel() for k, v in session.parameters().items()]
        )
        their_delta = np.concatenate(
            [(state.parameters[k].data - v).ravel() for k, v in before.items()]
        )
        diff = np.linalg.norm(ours_delta - their_delta) / np.linalg.norm(their_delta)
        rows.append((ours, theirs, float(diff)))
    return rows


@pytest.mark.parametrize(("name", "train", "bn"), ZOO_CASES)
def test_zoo_trajectory_matches_onnxruntime(zoo_export, tmp_path, name, train, bn):
    model_dir = zoo_export(name, train, bn, ort=True)
    ort_dir = reference_ort_dir(model_dir, tmp_path)
    data = batches(2, n=4, shape=input_shape(name), seed=1)
    if bn == "train":
        rows = np.array(lockstep(model_dir, data, ort_dir))
        assert rows[-2, 0] < rows[0, 0]  # batch 0 again, after 18 steps: it trains
        # atol: a batch of four is learnt by heart, and losses of 0.005 differ by 7e-8
        np.testing.assert_allclose(rows[:, 0], rows[:, 1], rtol=1e-5, atol=1e-6)
        # most steps agree to fp32 rounding; one where a ReLU mask element falls on the
        # other side moves a few weight gradients by percents (test_zoo_gradients.py). It
        # happens at nearly every step of mobilenetv2_cifar, and at many of resnet18_cifar,
        # where ORT's first gradient differs from PyTorch's by 2% and the runtime's
        # matches PyTorch's to rtol 1e-4. Such a step moved resnet20_cifar's update by
        # 1.5e-2 (4 steps of 20 above 1e-3, the rest at 2e-6) once its one lane ran BLAS
        # on one thread (lanes.py): a summation order of its own, flipping other elements.
        typical, worst = (5e-2, 5e-2) if name in KINKED else (1e-3, 2e-2)
        assert np.median(rows[:, 2]) < typical and rows[:, 2].max() < worst, rows[:, 2]
        return
    ours = our_losses(model_dir, "sgd", data, batch_size=4)
    theirs = ort_losses(model_dir, "optimizer_sgd.onnx", data, ort_dir)
    assert theirs[-2] < theirs[0]  # batch 0 again, after 18 steps: it trains
    rel = np.abs(np.array(ours) - np.array(theirs)) / np.abs(np.array(theirs))
    assert rel.max() < 1e-3, list(zip(ours, theirs, strict=True))
