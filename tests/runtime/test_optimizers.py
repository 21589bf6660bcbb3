"""Optimizers against ONNX Runtime training and torch; schedules by hand-worked values."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from facto_edge.errors import CheckpointError, FactoEdgeError
from facto_edge.runtime.optimizers import make_optimizer
from facto_edge.runtime.schedules import make_schedule

N_IN, N_OUT, BATCH, STEPS = 6, 4, 8, 20


def random_params(seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W": rng.standard_normal((N_OUT, N_IN)).astype(dtype),
        "b": rng.standard_normal(N_OUT).astype(dtype),
    }


def random_grads(rng: np.random.Generator, params: dict[str, np.ndarray]) -> dict:
    return {k: rng.standard_normal(p.shape).astype(p.dtype) for k, p in params.items()}


def copy(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in d.items()}


def loss_and_grads(params: dict, x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    """Mean softmax cross-entropy of Gemm(x, W, b, transB=1), and its gradients."""
    logits = x.astype(np.float64) @ params["W"].T.astype(np.float64) + params["b"]
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    loss = -np.log(prob[np.arange(len(y)), y]).mean()
    dlogits = prob
    dlogits[np.arange(len(y)), y] -= 1
    dlogits /= len(y)
    grads = {"W": dlogits.T @ x, "b": dlogits.sum(axis=0)}
    return float(loss), {k: g.astype(np.float32) for k, g in grads.items()}


# ---- ONNX Runtime training: the reference the runtime must follow ----------------------


def tiny_model(params: dict[str, np.ndarray]) -> onnx.ModelProto:
    gemm = helper.make_node("Gemm", ["input", "W", "b"], ["logits"], transB=1)
    graph = helper.make_graph(
        [gemm],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", N_IN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", N_OUT])],
        [numpy_helper.from_array(a, k) for k, a in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_artifacts(tmp_path, optimizer):
    """Generates ORT artifacts for the tiny model and sets ir_version 10 on each .onnx."""
    artifacts = pytest.importorskip("onnxruntime.training.artifacts")
    artifacts.generate_artifacts(
        tiny_model(random_params()),
        requires_grad=["W", "b"],
        loss=artifacts.LossType.CrossEntropyLoss,
        optimizer=optimizer,
        artifact_directory=tmp_path,
    )
    for path in tmp_path.glob("*.onnx"):
        model = onnx.load(path)
        model.ir_version = 10
        onnx.save(model, path)
    return tmp_path


def ort_session(d):
    ort = pytest.importorskip("onnxruntime")
    api = pytest.importorskip("onnxruntime.training.api")
    ort.set_default_logger_severity(3)
    state = api.CheckpointState.load_checkpoint(str(d / "checkpoint"))
    module = api.Module(str(d / "training_model.onnx"), state, str(d / "eval_model.onnx"))
    return state, module, api.Optimizer(str(d / "optimizer_model.onnx"), module)


def ort_block(kind: str):
    """The `optimizer=` argument of generate_artifacts for each case."""
    artifacts = pytest.importorskip("onnxruntime.training.artifacts")
    if kind == "adamw_wd":
        onnxblock = pytest.importorskip("onnxruntime.training.onnxblock")
        return onnxblock.optim.AdamW(eps=1e-8, weight_decay=0.1)
    return {"sgd": artifacts.OptimType.SGD, "adamw": artifacts.OptimType.AdamW}[kind]


OURS = {  # our optimizer configured as each ORT artifact
    "sgd": dict(name="sgd", momentum=0.0),
    "adamw": dict(name="adamw", eps=1e-6),
    "adamw_wd": dict(name="adamw", eps=1e-8, weight_decay=0.1),
}


def run_ort(kind: str, tmp_path, schedule, x, y):
    """20 ORT steps; per step the loss, the gradients and the parameters after it."""
    state, module, optimizer = ort_session(ort_artifacts(tmp_path, ort_block(kind)))
    module.train()
    trace = []
    for step in range(STEPS):
        optimizer.set_learning_rate(schedule(step))
        loss = float(module(x, y))
        grads = {k: state.parameters[k].grad.copy() for k in ("W", "b")}
        optimizer.step()
        module.lazy_reset_grad()
        trace.append((loss, grads, {k: state.parameters[k].data.copy() for k in ("W", "b")}))
    return trace


@pytest.mark.parametrize("kind", ["sgd", "adamw", "adamw_wd"])
def test_matches_onnxruntime_training(kind, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, N_IN)).astype(np.float32)
    y = rng.integers(0, N_OUT, BATCH).astype(np.int64)
    schedule = make_schedule("cosine", 0.05, STEPS, warmup_steps=3)
    trace = run_ort(kind, tmp_path, schedule, x, y)
    cfg = dict(OURS[kind])

    # Fed ORT's own gradients, our parameters follow ORT's step for step: SGD bit for bit;
    # AdamW to 1-2 ulp, since ORT's CPU kernel takes sqrt(v) from Eigen's fast-math
    # rsqrtps + one Newton step, and we round sqrt exactly.
    fed = random_params()
    opt = make_optimizer(cfg.pop("name"), fed, lr=0.0, **cfg)
    rtol, atol = (0, 0) if kind == "sgd" else (1e-6, 1e-7)
    for step, (_, grads, ort_params) in enumerate(trace):
        opt.lr = schedule(step)
        opt.step(grads)
        for k in fed:
            np.testing.assert_allclose(fed[k], ort_params[k], rtol=rtol, atol=atol)
    assert opt.step_count == STEPS

    # With our own gradients, the loss trajectory is ORT's.
    cfg = dict(OURS[kind])
    own = random_params()
    opt = make_optimizer(cfg.pop("name"), own, lr=0.0, **cfg)
    for step, (ort_loss, _, _) in enumerate(trace):
        loss, grads = loss_and_grads(own, x, y)
        assert loss == pytest.approx(ort_loss, rel=1e-5)
        opt.lr = schedule(step)
        opt.step(grads)
    assert trace[-1][0] < 0.9 * trace[0][0]


def test_ort_artifact_defaults(tmp_path):
    """The defaults the optimizers module documents are those ORT 1.19 generates."""
    artifacts = pytest.importorskip("onnxruntime.training.artifacts")
    d = ort_artifacts(tmp_path, artifacts.OptimType.AdamW)
    (node,) = onnx.load(d / "optimizer_model.onnx").graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "AdamWOptimizer"
    assert attrs["adam_mode"] == 1 and attrs["correct_bias"] == 1
    assert attrs["weight_decay"] == 0.0
    for key, value in [("alpha", 0.9), ("beta", 0.999), ("epsilon", 1e-6)]:
        assert attrs[key] == pytest.approx(value, rel=1e-7)
    assert ort_session(d)[2].get_learning_rate() == pytest.approx(1e-3, rel=1e-7)


def test_ort_sgd_artifact_is_plain_sgd(tmp_path):
    artifacts = pytest.importorskip("onnxruntime.training.artifacts")
    d = ort_artifacts(tmp_path, artifacts.OptimType.SGD)
    (node,) = onnx.load(d / "optimizer_model.onnx").graph.node
    assert node.op_type == "SGDOptimizerV2" and not node.attribute


# ---- torch.optim: the convention of our SGD options, and AdamW's near twin -------------


def torch_run(torch_opt_cls, params, grads_seq, **kwargs) -> dict[str, np.ndarray]:
    torch = pytest.importorskip("torch")
    tparams = {k: torch.tensor(p.copy()) for k, p in params.items()}
    opt = torch_opt_cls(list(tparams.values()), **kwargs)
    for grads in grads_seq:
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k])
        opt.step()
    return {k: t.numpy() for k, t in tparams.items()}


def our_run(name, params, grads_seq, **kwargs) -> dict[str, np.ndarray]:
    params = copy(params)
    opt = make_optimizer(name, params, **kwargs)
    for grads in grads_seq:
        opt.step(grads)
    return params


@pytest.mark.parametrize(
    "momentum, nesterov, weight_decay",
    [
        (0.0, False, 0.0),
        (0.0, False, 0.05),
        (0.9, False, 0.0),
        (0.9, True, 0.01),
        (0.5, False, 0.1),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_matches_torch(momentum, nesterov, weight_decay, dtype):
    torch = pytest.importorskip("torch")
    params, rng = random_params(2, dtype), np.random.default_rng(3)
    grads_seq = [random_grads(rng, params) for _ in range(6)]
    kw = dict(lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    ours = our_run("sgd", params, grads_seq, **kw)
    ref = torch_run(torch.optim.SGD, params, grads_seq, **kw)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for k in params:
        np.testing.assert_allclose(ours[k], ref[k], rtol=tol, atol=tol)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adamw_near_torch(weight_decay):
    """torch decays before the update and adds eps to sqrt(v / bc2); ORT's rule (ours)
    decays after and adds eps to sqrt(v): they differ by ~lr * eps / sqrt(bc2 * v) and
    ~lr**2 * wd per step."""
    torch = pytest.importorskip("torch")
    params, rng = random_params(4, np.float64), np.random.default_rng(5)
    grads_seq = [random_grads(rng, params) for _ in range(8)]
    kw = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    ours = our_run("adamw", params, grads_seq, **kw)
    ref = torch_run(torch.optim.AdamW, params, grads_seq, **kw)
    atol = 1e-7 + 8 * 0.01**2 * weight_decay
    for k in params:
        np.testing.assert_allclose(ours[k], ref[k], rtol=0, atol=atol)
        assert not np.allclose(ours[k], params[k])


# ---- state: allocation, arena callable, resume -----------------------------------------

CONFIGS = [
    ("sgd", dict(momentum=0.0)),
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adamw", dict(weight_decay=0.01)),
]


@pytest.mark.parametrize("name, kw", CONFIGS)
def test_step_does_not_allocate(name, kw):
    rng = np.random.default_rng(6)
    params = {"a": rng.standard_normal((256, 256)).astype(np.float32)}
    grads = {"a": rng.standard_normal((256, 256)).astype(np.float32)}
    opt = make_optimizer(name, params, lr=1e-3, **kw)
    opt.step(grads)  # compile or load the kernels first
    before = params["a"].copy()
    tracemalloc.start()
    opt.step(grads)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 * 1024, f"step() allocated {peak} bytes"
    assert not np.array_equal(params["a"], before)


@pytest.mark.parametrize("name, kw", CONFIGS)
def test_state_comes_from_alloc(name, kw):
    calls, arena = [], []

    def alloc(key, shape, dtype):
        calls.append((key, tuple(shape), np.dtype(dtype)))
        arena.append(np.full(shape, np.nan, dtype))  # dirty memory: must be zeroed
        return arena[-1]

    params = random_params(7)
    opt = make_optimizer(name, params, lr=1e-2, alloc=alloc, **kw)
    kinds = {"sgd": ["momentum"] if kw.get("momentum") else [], "adamw": ["m", "v"]}[name]
    expected = [
        (f"{p}.{kind}", params[p].shape, np.dtype(np.float32)) for p in params for kind in kinds
    ]
    assert sorted(calls) == sorted(expected)
    assert opt.state_bytes() == sum(a.nbytes for a in arena)
    opt.step(random_grads(np.random.default_rng(8), params))
    assert all(np.isfinite(a).all() and np.any(a != 0) for a in arena)
    assert np.isfinite(params["W"]).all()


@pytest.mark.parametrize("name, kw", CONFIGS)
def test_state_dict_resumes_bit_for_bit(name, kw):
    rng = np.random.default_rng(9)
    params = random_params(10)
    grads_seq = [random_grads(rng, params) for _ in range(7)]
    opt = make_optimizer(name, params, lr=1e-2, **kw)
    for grads in grads_seq[:3]:
        opt.step(grads)
    opt.lr = 3e-3
    saved_params, saved_state = copy(params), opt.state_dict()
    for grads in grads_seq[3:]:
        opt.step(grads)

    resumed_params = copy(saved_params)
    resumed = make_optimizer(name, resumed_params, lr=1.0, **kw)
    resumed.load_state_dict(saved_state)
    assert resumed.step_count == 3 and resumed.lr == 3e-3
    for grads in grads_seq[3:]:
        resumed.step(grads)
    for k in params:
        assert np.array_equal(resumed_params[k], params[k])
    assert resumed.state_dict().keys() == opt.state_dict().keys()
    for key, value in opt.state_dict().items():
        assert np.array_equal(resumed.state_dict()[key], value)


def test_load_state_dict_rejects_another_optimizer():
    adam = make_optimizer("adamw", random_params(), lr=1e-3)
    sgd = make_optimizer("sgd", random_params(), lr=1e-3)
    with pytest.raises(CheckpointError, match="expected keys"):
        sgd.load_state_dict(adam.state_dict())
    bad = adam.state_dict()
    bad["W.m"] = np.zeros((2, 2), np.float32)
    with pytest.raises(CheckpointError, match="'W.m'"):
        adam.load_state_dict(bad)


def test_sgd_without_momentum_keeps_no_state():
    assert make_optimizer("sgd", random_params(), lr=0.1, momentum=0.0).state_bytes() == 0
    adam = make_optimizer("adamw", random_params(), lr=0.1)
    assert adam.state_bytes() == 2 * 4 * (N_OUT * N_IN + N_OUT)


@pytest.mark.parametrize(
    "name, kw, message",
    [
        ("adam", {}, "optimizer name"),
        ("sgd", dict(lr=-1.0), "learning rate"),
        ("sgd", dict(momentum=0.0, nesterov=True), "nesterov"),
        ("sgd", dict(weight_decay=float("nan")), "weight decay"),
        ("adamw", dict(betas=(0.9, 1.0)), "beta2"),
        ("adamw", dict(eps=-1e-8), "eps"),
        ("sgd", dict(lr_scales={"W": -1.0}), "multiplier of 'W'"),
        ("adamw", dict(lr_scales={"nope": 1.0}), "lr_scales"),
    ],
)
def test_bad_optimizer_arguments(name, kw, message):
    kw = {"lr": 1e-3, **kw}
    with pytest.raises(FactoEdgeError, match=message):
        make_optimizer(name, random_params(), **kw)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_lr_scales_give_a_tensor_its_own_rate(name):
    params, rng = random_params(4), np.random.default_rng(5)
    grads = random_grads(rng, params)
    kw = {"lr": 0.1} | ({"momentum": 0.0} if name == "sgd" else {})
    plain = make_optimizer(name, copy(params), **kw)
    plain.step(grads)
    frozen = make_optimizer(name, copy(params), lr_scales={"b": 0.0, "W": 1.0}, **kw)
    frozen.step(grads)
    np.testing.assert_array_equal(frozen.params["b"], params["b"])
    np.testing.assert_array_equal(frozen.params["W"], plain.params["W"])
    if name == "sgd":  # one SGD step by hand: p - (2 lr) g
        double = make_optimizer(name, copy(params), lr_scales={"W": 2.0}, **kw)
        double.step(grads)
        np.testing.assert_array_equal(double.params["b"], plain.params["b"])
        expected = params["W"] - np.float32(0.2) * grads["W"]
        np.testing.assert_allclose(double.params["W"], expected, rtol=1e-6)


def test_bad_params_and_grads():
    with pytest.raises(FactoEdgeError, match="float32 or float64"):
        make_optimizer("sgd", {"w": np.zeros(3, np.int32)}, lr=0.1)
    with pytest.raises(FactoEdgeError, match="C-contiguous"):
        make_optimizer("sgd", {"w": np.zeros((3, 4), np.float32).T}, lr=0.1)
    opt = make_optimizer("adamw", random_params(), lr=0.1)
    with pytest.raises(ValueError, match="one per parameter"):
        opt.step({"W": np.zeros((N_OUT, N_IN), np.float32)})
    with pytest.raises(ValueError, match="gradient of 'b'"):
        opt.step({"W": np.zeros((N_OUT, N_IN), np.float32), "b": np.zeros(N_OUT)})
    assert opt.step_count == 0
    with pytest.raises(ValueError, match="alloc"):
        make_optimizer("adamw", random_params(), lr=0.1, alloc=lambda k, s, d: np.zeros(s))


# ---- schedules -----------------------------------------------------------------------


def test_constant_with_linear_warmup():
    lr = make_schedule("constant", 0.4, 10, warmup_steps=4)
    assert [lr(s) for s in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    assert lr(1000) == 0.4


def test_step_schedule():
    lr = make_schedule("step", 1.0, 100, warmup_steps=2, step_size=3, gamma=0.5, min_lr=0.2)
    values = [lr(s) for s in range(2, 14)]
    assert values == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2])
    assert lr(0) == 0.5


def test_cosine_schedule():
    lr = make_schedule("cosine", 1.0, 12, warmup_steps=2, min_lr=0.1)
    assert [lr(0), lr(1), lr(2)] == pytest.approx([0.5, 1.0, 1.0])
    assert lr(7) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the 10 decay steps
    assert lr(4) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 0.2)) / 2)
    assert lr(12) == pytest.approx(0.1) and lr(50) == pytest.approx(0.1)
    values = [lr(s) for s in range(2, 13)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_warmup_ramps_linearly():
    lr = make_schedule("cosine", 0.3, 100, warmup_steps=10)
    ramp = np.array([lr(s) for s in range(10)])
    np.testing.assert_allclose(np.diff(ramp), 0.03)
    assert ramp[-1] == pytest.approx(0.3)


@pytest.mark.parametrize(
    "args, kw, message",
    [
        (("linear", 0.1, 10), {}, "schedule name"),
        (("constant", 0.0, 10), {}, "base_lr"),
        (("constant", 0.1, 0), {}, "total_steps"),
        (("cosine", 0.1, 10), dict(warmup_steps=11), "warmup_steps"),
        (("cosine", 0.1, 10), dict(min_lr=0.2), "min_lr"),
        (("step", 0.1, 10), {}, "step_size"),
        (("step", 0.1, 10), dict(step_size=2, gamma=1.5), "gamma"),
        (("cosine", 0.1, 10), dict(step_size=2), "only 'step'"),
    ],
)
def test_bad_schedule_arguments(args, kw, message):
    with pytest.raises(FactoEdgeError, match=message):
        make_schedule(*args, **kw)
    with pytest.raises(FactoEdgeError, match="index >= 0"):
        make_schedule("constant", 0.1, 10)(-1)
