"""TrainingSession on tiny hand-built graphs: gradients against PyTorch, what backward
keeps and where it stops, batches, errors, memory, and a light import."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from tiny_graphs import batch, tiny_model
from torch_ref import TorchReference

from facto_edge.errors import DataError, DeviceError, FactoEdgeError, UnsupportedOpError
from facto_edge.runtime import TrainingSession
from facto_edge.runtime.kernels import blas


def torch_grads(model, manifest, x, y, smoothing=0.0):
    ref = TorchReference(model, manifest["trainable"])
    loss = F.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y), label_smoothing=smoothing)
    loss.backward()
    return loss.item(), ref.grads()


def assert_grads_match(grads, expected, rtol=1e-4, atol=1e-5):
    assert grads.keys() == expected.keys()
    for name, g in grads.items():
        np.testing.assert_allclose(g, expected[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("bn", ["fold", "train"])
@pytest.mark.parametrize("stem_trainable", [False, True])
def test_gradients_match_torch(bn, stem_trainable):
    model, manifest = tiny_model(bn, stem_trainable)
    x, y = batch(4)
    s = TrainingSession((model, manifest), batch_size=4, label_smoothing=0.1)
    loss, grads = s.compute_gradients(x, y)
    ref_loss, ref_grads = torch_grads(model, manifest, x, y, smoothing=0.1)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert_grads_match(grads, ref_grads)


def test_frozen_layers_keep_nothing_and_run_no_backward():
    s = TrainingSession(tiny_model(), batch_size=2)
    saved = {n.split(":", 1)[1] for n in s.binding.memory.buffers if n.startswith("saved:")}
    assert saved == {
        "last:in0",  # the input of the trainable factor
        "relu:mask",
        "pool:argmax",
        "fc:in0",
        "facto:loss:logp",
    }
    assert [n.name for n in s.binding.spec.schedule.backward] == [
        "facto:loss", "fc", "flatten", "gap", "pool", "relu", "add", "last",
    ]  # fmt: skip
    grads = {n.removeprefix("grad:") for n in s.binding.memory.buffers if n.startswith("grad:")}
    assert not grads & {"input", "s", "r", "f", "c"}


def test_shared_gradient_of_residual_is_summed():
    model, manifest = tiny_model(stem_trainable=True)
    s = TrainingSession((model, manifest), batch_size=3)
    assert "r" in s.binding.executor(3).grads  # the stem output feeds the block and the skip
    x, y = batch(3, seed=4)
    assert_grads_match(s.compute_gradients(x, y)[1], torch_grads(model, manifest, x, y)[1])


def test_smaller_last_batch_matches_a_session_of_that_size():
    model, manifest = tiny_model("train")
    x, y = batch(3, seed=2)
    big = TrainingSession((model, manifest), batch_size=5)
    big.compute_gradients(*batch(5))
    loss, grads = big.compute_gradients(x, y)
    ref_loss, ref_grads = TrainingSession((model, manifest), batch_size=3).compute_gradients(x, y)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert_grads_match(grads, ref_grads, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [8, 7, 1])
def test_lanes_match_one_lane(monkeypatch, n):
    model, manifest = tiny_model(stem_trainable=True)
    x, y = batch(n, seed=5)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    lanes = TrainingSession((model, manifest), batch_size=8, threads=2)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    monkeypatch.setattr(blas, "available", lambda: False)  # BLAS threads that stay on
    one = TrainingSession((model, manifest), batch_size=8, threads=2)
    assert (lanes.binding.lanes, one.binding.lanes) == (2, 1)
    for _ in range(2):  # the second step also checks that lane gradients do not pile up
        loss, grads = lanes.compute_gradients(x, y)
        ref_loss, ref_grads = one.compute_gradients(x, y)
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        assert_grads_match(grads, ref_grads, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(lanes.predict(x), one.predict(x), rtol=1e-6, atol=1e-7)


def test_batch_statistics_need_one_lane(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert TrainingSession(tiny_model("train"), batch_size=8, threads=2).binding.lanes == 1


def test_one_lane_steps_run_blas_on_one_thread(monkeypatch):
    """A one-lane session with two threads: numba's kernels take both, BLAS one (its
    threads, meeting at every small sgemm, collapse on a busy machine: lanes.py)."""
    from facto_edge.runtime import lanes

    asked = []
    real = blas.threads
    monkeypatch.setattr(lanes.blas, "threads", lambda n: asked.append(n) or real(n))
    s = TrainingSession(tiny_model("train"), batch_size=8, threads=2)
    s.train_step(*batch(8))
    assert s.binding.lanes == 1 and asked and set(asked) == {1}


def test_train_step_is_sgd_with_momentum():
    model, manifest = tiny_model()
    x, y = batch(4)
    s = TrainingSession((model, manifest), batch_size=4, lr=0.1, momentum=0.9)
    before = {k: v.copy() for k, v in s.parameters().items()}
    _, g0 = s.compute_gradients(x, y)
    s.train_step(x, y)
    for name, p in s.parameters().items():
        np.testing.assert_allclose(p, before[name] - 0.1 * g0[name], rtol=1e-5, atol=1e-7)
    losses = [s.train_step(x, y) for _ in range(10)]
    assert losses[-1] < losses[0]


def test_predict_matches_torch_in_chunks():
    model, manifest = tiny_model()
    x, _ = batch(7)
    s = TrainingSession((model, manifest), batch_size=3)
    with torch.no_grad():
        expected = TorchReference(model, [])(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(s.predict(x), expected, rtol=1e-5, atol=1e-6)


def test_batchnorm_running_statistics_follow_onnx():
    model, manifest = tiny_model("train")
    s = TrainingSession((model, manifest), batch_size=4)
    x, y = batch(4)
    mean = s.binding.params["bn.mean"]
    s.compute_gradients(x, y)
    assert not mean.any()  # compute_gradients updates nothing
    s.train_step(x, y)
    with torch.no_grad():
        ref = TorchReference(model, [])
        branch = ref.tensors
        h = F.relu(F.conv2d(torch.from_numpy(x), branch["stem.w"], branch["stem.b"], padding=1))
        h = F.conv2d(F.conv2d(h, branch["first.w"]), branch["core.w"], padding=1)
        h = F.conv2d(h, branch["last.w"], branch["last.b"])
    np.testing.assert_allclose(mean, 0.1 * h.mean((0, 2, 3)).numpy(), rtol=1e-4, atol=1e-6)
    var = 0.9 + 0.1 * h.var((0, 2, 3), unbiased=False).numpy()
    np.testing.assert_allclose(s.binding.params["bn.var"], var, rtol=1e-4)
    assert s.buffers().keys() == {"bn.mean", "bn.var"}
    assert s.buffers()["bn.mean"] is mean and s.step == 1


def test_lossy_codec_trains_close_to_fp32():
    model, manifest = tiny_model()
    x, y = batch(4)
    exact = TrainingSession((model, manifest), batch_size=4).compute_gradients(x, y)[1]
    lossy = TrainingSession((model, manifest), batch_size=4, codec="q8").compute_gradients(x, y)[1]
    for name, g in exact.items():
        np.testing.assert_allclose(lossy[name], g, atol=0.02 * np.abs(g).max(), err_msg=name)


def test_stochastic_rounding_is_seeded_and_unbiased(exported):
    """q2 with stochastic rounding: a step's gradients repeat, another step's differ, and
    their mean over steps lands closer to the lossless gradients than nearest rounding."""
    model_dir = exported("simple_cnn", rank=0.25, ort=False)[1]
    x, y = batch(4, shape=(3, 32, 32), classes=10, seed=3)
    exact = TrainingSession(model_dir, batch_size=4).compute_gradients(x, y)[1]
    nearest = TrainingSession(model_dir, batch_size=4, codec="q2").compute_gradients(x, y)[1]
    s = TrainingSession(model_dir, batch_size=4, codec="q2", rounding="stochastic")
    assert s.rounding == "stochastic"
    draws = []
    for step in range(48):
        s.step = step
        draws.append(s.compute_gradients(x, y)[1])
    again = s.compute_gradients(x, y)[1]
    factors = [name for name in exact if name.endswith("last.weight")]
    assert len(factors) == 3
    for name in factors:
        np.testing.assert_array_equal(again[name], draws[-1][name])
        assert not np.array_equal(draws[0][name], draws[1][name])
        mean_error = np.abs(np.mean([d[name] for d in draws], 0) - exact[name]).max()
        assert mean_error < 0.5 * np.abs(nearest[name] - exact[name]).max(), name


def test_memory_report_accounts_for_every_buffer():
    s = TrainingSession(tiny_model(), batch_size=4, momentum=0.9)
    r = s.memory_report()
    kinds = ("weights", "grads", "optimizer", "activation", "saved", "workspace")
    requested = sum(r[f"{k}_bytes"] for k in kinds)
    assert r["lower_bound"] <= r["arena_bytes"] <= requested <= r["linear_bytes"]
    trainable_bytes = sum(p.nbytes for p in s.parameters().values())
    assert r["grads_bytes"] == trainable_bytes
    assert r["optimizer_bytes"] == trainable_bytes == s.optimizer.state_bytes()
    # fp32: the input of `last` [4,4,8,8] and of fc [4,8]; log-probs [4,5]; 1-bit ReLU
    # mask of [4,8,8,8]; 2-bit argmax of [4,8,4,4]
    assert r["saved_bytes"] == 4 * (4 * 4 * 64 + 4 * 8 + 4 * 5) + 4 * 8 * 64 // 8 + 4 * 8 * 16 // 4


def test_steps_allocate_no_buffers():
    model, manifest = tiny_model()
    s = TrainingSession((model, manifest), batch_size=16)
    x, y = batch(16)
    s.train_step(x, y)
    tracemalloc.start()
    s.train_step(x, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    activation = 16 * 8 * 8 * 8 * 4  # one [16, 8, 8, 8] feature map: 32 KiB
    assert peak < activation // 2


def test_data_errors():
    s = TrainingSession(tiny_model(), batch_size=4)
    x, y = batch(4)
    bad_x = x.copy()
    bad_x[1, 0, 2, 3] = np.nan
    cases = [
        (x.astype(np.float64), y, "float32"),
        (x[:, :2], y, r"shape \[n, 3, 8, 8\]"),
        (np.concatenate([x, x]), np.concatenate([y, y]), "exceeds the session's batch_size 4"),
        (x, y[:3], r"shape \[4\]"),
        (x, y.astype(np.float32), "int64"),
        (x, np.array([0, 1, 5, 2]), r"labels must lie in \[0, 5\)"),
        (x, np.array([0, -1, 2, 2]), r"labels must lie in \[0, 5\)"),
        (bad_x, y, "1 NaN/Inf"),
    ]
    for bx, by, message in cases:
        with pytest.raises(DataError, match=message):
            s.train_step(bx, by)
    with pytest.raises(DataError, match="float32"):
        s.predict(x.astype(np.float16))


def test_unsupported_op_is_named():
    model, manifest = tiny_model(extra_nodes=[helper.make_node("Softplus", ["v"], ["q"], "sp")])
    with pytest.raises(UnsupportedOpError, match="Softplus node 'sp'"):
        TrainingSession((model, manifest), batch_size=2)


def test_option_errors():
    with pytest.raises(DeviceError, match="cuda"):
        TrainingSession(tiny_model(), batch_size=2, device="cuda")
    with pytest.raises(FactoEdgeError, match="batch_size"):
        TrainingSession(tiny_model(), batch_size=0)
    with pytest.raises(FactoEdgeError, match="threads"):
        TrainingSession(tiny_model(), batch_size=2, threads=0)
    with pytest.raises(FactoEdgeError, match="unknown codec"):
        TrainingSession(tiny_model(), batch_size=2, codec="q3")
    with pytest.raises(FactoEdgeError, match="stochastic rounding applies to the q8"):
        TrainingSession(tiny_model(), batch_size=2, codec="fp32", rounding="stochastic")
    with pytest.raises(FactoEdgeError, match="rounding must be one of"):
        TrainingSession(tiny_model(), batch_size=2, codec="q4", rounding="up")


def test_threads_option_sets_numba_threads():
    TrainingSession(tiny_model(), batch_size=2, threads=1)
    assert numba.get_num_threads() == 1
    TrainingSession(tiny_model(), batch_size=2)
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS


def test_missing_model_dir(tmp_path):
    with pytest.raises(FactoEdgeError, match="model.onnx is missing"):
        TrainingSession(tmp_path, batch_size=2)


def test_import_is_light():
    code = (
        "import sys, facto_edge.runtime; "
        "print(sorted(m for m in ('torch', 'tensorly', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_closed_session_refuses_work():
    x, y = batch(4)
    with TrainingSession(tiny_model(), batch_size=4) as s:
        s.train_step(x, y)
    for call in (lambda: s.train_step(x, y), lambda: s.predict(x), s.parameters, s.memory_report):
        with pytest.raises(FactoEdgeError, match="closed"):
            call()


def test_a_dropped_binding_is_freed_without_the_garbage_collector():
    # The kernel warm-up's throwaway arena must be gone before the session's arena is
    # touched: nothing a binding hands out may point back at it (no reference cycle).
    import gc
    import weakref

    from facto_edge.runtime.binding import Binding
    from facto_edge.runtime.device import resolve_device
    from facto_edge.runtime.memory import Recorder

    s = TrainingSession(tiny_model(), batch_size=8, threads=2)
    gc.disable()
    try:
        b = Binding(s.binding.spec, Recorder(), resolve_device("cpu"), 8, 2)
        binding, memory = weakref.ref(b), weakref.ref(b.memory)
        del b
        assert binding() is None and memory() is None
    finally:
        gc.enable()
