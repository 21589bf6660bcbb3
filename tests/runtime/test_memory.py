"""The session's one arena (runtime/memory.py): lifetimes from the schedule, every buffer
inside the planned arena, bytes reused only where lifetimes allow (checked by poisoning
dead bytes), no allocation while training, micro-batches, budgets, and the q4 codec's
gradients on the zoo models."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
import tracemalloc

import numba
import numpy as np
import pytest
from tiny_graphs import batch, tiny_model

from facto_edge.errors import BudgetError
from facto_edge.runtime import TrainingSession
from facto_edge.runtime import budget as budget_mod
from facto_edge.runtime.fitting import largest_fitting
from facto_edge.runtime.kernels import blas
from facto_edge.runtime.memory import Recorder

MiB = 1 << 20
ZOO = ["simple_cnn", "resnet18_cifar", "mobilenetv2_cifar", "vgg11_bn_cifar"]


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def test_recorder_buffers_cost_nothing_until_written():
    rec = Recorder()
    before = _rss()
    big = [rec.alloc(f"b{i}", (16 * MiB,), np.float32, "activations") for i in range(4)]
    assert _rss() - before < 8 * MiB  # 256 MiB asked for, zero pages only
    assert not big[2].any()
    assert rec.owner(big[2][1000:]) == "b2" and rec.owner(big[0]) == "b0"
    assert rec.requests["b3"] == (64 * MiB, "activations")


def test_largest_fitting_bisects():
    assert largest_fitting(lambda n: 10 * n, 95, 64) == 9
    assert largest_fitting(lambda n: 10 * n, 5, 64) is None
    assert largest_fitting(lambda n: n, 10**9, 64) == 64


def _step(plan, label: str) -> int:
    return plan.steps.index(label)


def test_lifetimes_follow_the_schedule():
    s = TrainingSession(tiny_model(), batch_size=4, threads=1)
    plan = s.memory_plan
    end = len(plan.steps) - 1
    span = {name: (b.first, b.last) for name, b in plan.buffers.items()}
    for b in plan.buffers.values():
        if b.kind in ("weights", "grads", "optimizer"):
            assert (b.first, b.last) == (0, end), b.name
    # caller-side buffers: the input, the labels, the loss and its seeded gradient
    for name in ("value:input", "value:facto:labels", "value:facto:loss", "grad:facto:loss"):
        assert span[name] == (0, end), name
    # activations die at their last forward reader: backward reads saved buffers only
    assert span["value:s"] == (_step(plan, "fwd stem"), _step(plan, "fwd stem.relu"))
    assert span["value:r"] == (_step(plan, "fwd stem.relu"), _step(plan, "fwd add"))
    # saved: from the forward node that encodes to the backward node that decodes
    assert span["saved:last:in0"] == (_step(plan, "fwd last"), _step(plan, "bwd last"))
    assert span["saved:relu:mask"] == (_step(plan, "fwd relu"), _step(plan, "bwd relu"))
    # an activation gradient lives across the backward nodes that write and read it
    assert span["grad:p"] == (_step(plan, "bwd gap"), _step(plan, "bwd pool"))
    assert plan.lower_bound <= plan.arena_bytes < plan.linear_bytes


@pytest.mark.parametrize("bn", ["fold", "train"])
def test_every_buffer_is_an_arena_view_at_its_planned_offset(bn):
    s = TrainingSession(tiny_model(bn), batch_size=8, threads=1, momentum=0.9)
    x, y = batch(8)
    s.train_step(x, y)
    s.train_step(x[:5], y[:5])  # binds an executor for 5 samples: the same buffers
    s.predict(x[:3])
    plan, arena = s.memory_plan, s.binding.memory.arena
    base = arena.view(0, (arena.nbytes,), np.uint8).ctypes.data
    assert s.memory_report()["unplanned_bytes"] == 0 and plan.overlaps() == []
    assert arena.nbytes == plan.arena_bytes == s.memory_report()["arena_bytes"]
    for name, (raw, _) in s.binding.memory.buffers.items():
        assert raw.ctypes.data - base == plan.buffers[name].offset, name
    for ex in s.binding.executors.values():
        steps, io = ex.step_arrays()
        for a in (a for arrays in steps for a in arrays + io if a.size):
            assert base <= a.ctypes.data and a.ctypes.data + a.nbytes <= base + arena.nbytes


def _poison(s: TrainingSession, keep) -> None:
    """Fill every arena byte outside the planned buffers `keep` selects with 0xFF (NaN
    as float32): whatever reads them after this point reads garbage."""
    plan = s.memory_plan
    raw = s.binding.memory.arena.view(0, (plan.arena_bytes,), np.uint8)
    live = np.zeros(plan.arena_bytes, bool)
    for b in plan.buffers.values():
        if keep(b):
            live[b.offset : b.offset + b.nbytes] = True
    raw[~live] = 0xFF


def _poisoned_gradients(s: TrainingSession, x, y) -> dict[str, np.ndarray]:
    """The gradients of (x, y) with every byte that is dead by the plan poisoned before
    forward (all but whole-step buffers) and before backward (all that died in forward)."""
    plan, n = s.memory_plan, x.shape[0]
    end, forward_steps = len(plan.steps) - 1, len(s.binding.spec.schedule.forward)
    ex = s.binding.executor(n)
    _poison(s, lambda b: (b.first, b.last) == (0, end))
    s.binding.feed_x(ex, x)
    np.copyto(ex.values["facto:labels"], y)
    ex.grads["facto:loss"][...] = 1.0
    with blas.threads(1):  # as the session's step runs BLAS: the same summation order
        ex.forward(training=True)
        _poison(s, lambda b: b.last >= forward_steps)
        ex.backward()
    return {name: g.copy() for name, g in s.binding.lane_grads.items()}


@pytest.mark.parametrize("bn", ["fold", "train"])
def test_reused_bytes_are_dead_when_reused_tiny(bn):
    s = TrainingSession(tiny_model(bn, stem_trainable=True), batch_size=6, threads=1)
    x, y = batch(6)
    _, expected = s.compute_gradients(x, y)
    for name, g in _poisoned_gradients(s, x, y).items():
        np.testing.assert_array_equal(g, expected[name], err_msg=name)


@pytest.mark.parametrize("name", ["simple_cnn", "mobilenetv2_cifar"])
def test_reused_bytes_are_dead_when_reused_zoo(exported, name):
    s = TrainingSession(exported(name, rank=0.25, ort=False)[1], batch_size=2, threads=1)
    x, y = batch(2, shape=(3, 32, 32), classes=10, seed=5)
    _, expected = s.compute_gradients(x, y)
    for key, g in _poisoned_gradients(s, x, y).items():
        np.testing.assert_array_equal(g, expected[key], err_msg=key)


def _numpy_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes of numpy array data held in a snapshot (numpy's own tracemalloc domain)."""
    only_numpy = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    return sum(t.size for t in snapshot.filter_traces(only_numpy).traces)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_training_steps_allocate_nothing(accumulate):
    s = TrainingSession(tiny_model(), batch_size=16, accumulate=accumulate, threads=1)
    x, y = batch(16)
    for _ in range(2):
        s.train_step(x, y)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    start = tracemalloc.get_traced_memory()[0]
    for _ in range(10):
        s.train_step(x, y)
    _, peak = tracemalloc.get_traced_memory()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert _numpy_bytes(after) == _numpy_bytes(before)  # no array outlives a step
    assert peak - start < 16 * 8 * 8 * 8 * 4 // 4  # and none lives within one: < 1/4 map


def test_micro_batches_give_the_gradients_of_one_batch():
    x, y = batch(7, seed=3)
    whole = TrainingSession(tiny_model(stem_trainable=True), batch_size=7, threads=1)
    parts = TrainingSession(tiny_model(stem_trainable=True), batch_size=7, threads=1, accumulate=3)
    assert (parts.memory_report()["micro_batch"], parts.memory_report()["accumulate"]) == (3, 3)
    loss, expected = whole.compute_gradients(x, y)
    loss_parts, grads = parts.compute_gradients(x, y)
    assert loss_parts == pytest.approx(loss, rel=1e-6)
    for name, g in grads.items():
        np.testing.assert_allclose(g, expected[name], rtol=1e-5, atol=1e-7, err_msg=name)
    whole.train_step(x, y)
    parts.train_step(x, y)
    for name, p in parts.parameters().items():
        np.testing.assert_allclose(p, whole.parameters()[name], rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="lanes need two threads")
def test_lanes_get_regions_of_their_own(monkeypatch):
    x, y = batch(8, seed=2)
    expected = TrainingSession(tiny_model(), batch_size=8, threads=1).compute_gradients(x, y)[1]
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    s = TrainingSession(tiny_model(), batch_size=8, threads=2)
    assert s.binding.lanes == 2
    plan = s.memory_plan
    lane0_end = max(b.offset + b.nbytes for b in plan.buffers.values() if b.lane == 0)
    lane1 = [b for b in plan.buffers.values() if b.lane == 1]
    assert lane1 and all(b.offset >= lane0_end for b in lane1)
    assert plan.overlaps() == []
    for name, g in s.compute_gradients(x, y)[1].items():
        np.testing.assert_allclose(g, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_budget_picks_micro_batches_and_refuses_fast(monkeypatch):
    fixed = 100 * MiB
    monkeypatch.setattr(budget_mod, "measure_runtime_fixed_cost", lambda codec: fixed)
    monkeypatch.setattr(budget_mod, "measure_runtime_startup_peak", lambda codec: fixed)
    model = tiny_model()
    full = TrainingSession(model, batch_size=64, threads=1).memory_report()["arena_bytes"]
    one = TrainingSession(model, batch_size=1, threads=1).memory_report()["arena_bytes"]
    ones = TrainingSession(model, batch_size=64, threads=1, accumulate=64)
    one_by_one = ones.memory_report()["arena_bytes"]  # with the accumulation buffers
    room = fixed + budget_mod.SAFETY_MARGIN
    s = TrainingSession(model, batch_size=64, threads=1, budget=room + (full + one) // 2)
    r = s.memory_report()
    assert 1 < r["accumulate"] and r["micro_batch"] * r["accumulate"] >= 64
    assert room + r["arena_bytes"] <= room + (full + one) // 2
    assert (
        TrainingSession(model, batch_size=64, threads=1, budget=room + full).memory_report()[
            "accumulate"
        ]
        == 1
    )

    started = time.perf_counter()
    with pytest.raises(BudgetError, match=r"give --budget (\d+)MiB or more") as err:
        TrainingSession(model, batch_size=64, threads=1, budget=room)
    assert time.perf_counter() - started < 5
    smallest = int(err.value.args[0].rsplit("--budget ", 1)[1].split("MiB")[0])
    assert (smallest - 1) * MiB < room + one_by_one <= smallest * MiB
    TrainingSession(model, batch_size=64, threads=1, budget=f"{smallest}MiB")


def test_arena_is_within_ten_percent_of_the_lower_bound(exported):
    s = TrainingSession(
        exported("resnet18_cifar", rank=0.25, ort=False)[1], batch_size=32, codec="q4"
    )
    r = s.memory_report()
    print(
        f"resnet18_cifar b32 q4: arena {r['arena_bytes'] / MiB:.1f} MiB, lower bound "
        f"{r['lower_bound'] / MiB:.1f} MiB, every buffer apart {r['linear_bytes'] / MiB:.1f} MiB"
    )
    assert r["lower_bound"] <= r["arena_bytes"] <= 1.10 * r["lower_bound"]
    assert s.memory_plan.overlaps() == []


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("name", ZOO)
def test_q4_gradients_stay_close_to_lossless(exported, name):
    # trained BN makes a conv bias before it gradient-free (exact gradient only rounding
    # noise), so the cosine is measured on the factors of the last factor and folded BN
    model_dir = exported(name, rank=0.25, train="last", bn="fold", ort=False)[1]
    x, y = batch(4, shape=(3, 32, 32), classes=10, seed=11)
    exact = TrainingSession(model_dir, batch_size=4, codec="fp32").compute_gradients(x, y)[1]
    lossy = TrainingSession(model_dir, batch_size=4, codec="q4").compute_gradients(x, y)[1]
    worst = min((_cosine(lossy[k], g), k) for k, g in exact.items() if np.any(g))
    assert worst[0] >= 0.99, worst


# Runs in a fresh interpreter: a warm-up child (Numba's cache filled, as the fixed cost
# assumes), then a child that trains under the budget; the parent reports the second
# child's peak RSS from wait4's getrusage (a forked child starts with this small
# interpreter's pages, not the test runner's, which an exec'ed child would inherit).
_RUN = textwrap.dedent(
    """
    import json, os, sys
    model, budget = sys.argv[1], sys.argv[2]

    def train(budget, steps):
        import numpy as np
        from facto_edge.runtime import TrainingSession
        s = TrainingSession(model, batch_size=8, codec="q4", budget=budget)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
        for _ in range(steps):
            s.train_step(x, np.arange(8) % 10)
        return s.memory_report()

    def child(budget, steps):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                report = train(budget, steps)
                print(json.dumps({k: v for k, v in report.items() if k != "codec"}), flush=True)
                code = 0
            finally:
                os._exit(code)
        _, status, usage = os.wait4(pid, 0)
        return status, usage.ru_maxrss * 1024

    child(None, 1)
    status, peak = child(budget, 2)
    print(json.dumps({"status": status, "peak": peak}))
    """
)


@pytest.mark.parametrize("budget", ["256MB", "512MB"])
def test_training_under_a_budget_stays_inside_it(exported, budget):
    model_dir = exported("resnet18_cifar", rank=0.25, ort=False)[1]
    budget_mod.measure_runtime_fixed_cost()  # measured once, outside the timed child
    run = subprocess.run(
        [sys.executable, "-c", _RUN, str(model_dir), budget],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    *_, report, result = (json.loads(line) for line in run.stdout.splitlines())
    print(f"resnet18_cifar under {budget}: peak {result['peak'] / MiB:.1f} MiB, {report}")
    assert result["status"] == 0
    assert result["peak"] <= budget_mod.parse_size(budget)
    assert report["micro_batch"] * report["accumulate"] >= 8 and report["unplanned_bytes"] == 0
    assert math.isfinite(report["arena_bytes"])
