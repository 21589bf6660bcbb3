"""Embedding the runtime: a light import, the example app, flat memory while streaming,
a replay buffer that never allocates, and exact checkpoint round trips."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from tiny_graphs import tiny_model

from facto_edge.runtime import ReplayBuffer, StreamingTrainer, TrainingSession

ROOT = Path(__file__).resolve().parents[2]


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 8, 8)).astype(np.float32), rng.integers(0, 5, n)


def test_import_pulls_no_heavy_module():
    code = (
        "import sys, facto_edge.runtime, facto_edge.runtime.checkpoint, facto_edge.export_onnx; "
        "print([m for m in ('torch', 'tensorly', 'onnxruntime') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# Imports the runtime, trains one step and predicts in a fresh interpreter, then lists what
# it loaded of facto_edge beyond facto_edge.runtime and of the application's libraries.
_ONE_STEP = """
import sys
import numpy as np
import facto_edge.runtime
from facto_edge.runtime import TrainingSession
s = TrainingSession(sys.argv[1], batch_size=4, codec="q4")
x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
s.train_step(x, np.arange(4) % 5)
s.predict(x)
app = [m for m in sys.modules if m.startswith("facto_edge") and m != "facto_edge"
       and not m.startswith("facto_edge.runtime")]
libs = [m for m in ("torch", "tensorly", "onnxruntime", "click", "tqdm", "matplotlib")
        if m in sys.modules]
print(sorted(app), libs)
"""


def test_a_training_step_loads_nothing_of_the_application(tmp_path):
    import onnx

    from facto_edge.runtime.manifest import Manifest

    model, manifest = tiny_model()
    onnx.save(model, tmp_path / "model.onnx")
    (tmp_path / "manifest.json").write_text(Manifest.in_memory(manifest).to_json())
    run = subprocess.run(
        [sys.executable, "-c", _ONE_STEP, str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[] []"


def test_example_app_adapts_to_the_shift(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(ROOT / "tools" / "examples"))
    import adapt_shift

    report = adapt_shift.main([str(tmp_path), "--tiny"])
    assert report["heavy_modules"] == []
    assert report["accuracy_after"] > report["accuracy_before"] + 0.1


STREAM = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from tiny_graphs import tiny_model
from facto_edge.runtime import StreamingTrainer, TrainingSession

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

s = TrainingSession(tiny_model(), batch_size=8, lr=0.01)
trainer = StreamingTrainer(s, capacity=64, replay=4)
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
y = rng.integers(0, 5, 64)
for step in range(1, 1001):
    i = (step * 4) % 60
    trainer.step(x[i : i + 4], y[i : i + 4])
    if step == 100:
        warm = rss()
print(warm, rss())
"""


def test_streaming_keeps_memory_flat():
    code = STREAM.format(tests=str(ROOT / "tests" / "runtime"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    warm, end = map(int, done.stdout.split())
    assert end - warm < 2 * 2**20, (warm, end)


@pytest.mark.parametrize("policy", ["reservoir", "ring"])
def test_replay_buffer_never_allocates(policy):
    buf = ReplayBuffer(32, (3, 8, 8), policy=policy, seed=1)
    x, y = _data(8)
    out_x, out_y = np.empty((8, 3, 8, 8), np.float32), np.empty(8, np.int64)
    buf.add(x, y)
    buf.sample(8, out_x, out_y)  # warm
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(200):
        buf.add(x, y)
        buf.sample(8, out_x, out_y)
    grown = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert grown < 4096
    assert len(buf) == 32 and buf.seen == 1608


def test_replay_is_deterministic_and_ring_keeps_the_latest():
    x, y = _data(40)
    a, b = ReplayBuffer(16, (3, 8, 8), seed=3), ReplayBuffer(16, (3, 8, 8), seed=3)
    outs = []
    for buf in (a, b):
        buf.add(x, y)
        ox, oy = np.empty((10, 3, 8, 8), np.float32), np.empty(10, np.int64)
        buf.sample(10, ox, oy)
        outs.append((ox, oy))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    ring = ReplayBuffer(16, (3, 8, 8), policy="ring")
    ring.add(x, y)
    assert sorted(map(bytes, ring._x)) == sorted(map(bytes, x[24:]))


def test_checkpoint_round_trip_is_exact(tmp_path):
    x, y = _data(16)
    s = TrainingSession(tiny_model(), batch_size=8, lr=0.05)
    s.train_step(x[:8], y[:8])
    s.save_checkpoint(tmp_path)
    expected = [s.train_step(x[8:], y[8:]), s.train_step(x[:8], y[:8])]
    params = {k: v.copy() for k, v in s.parameters().items()}
    t = TrainingSession(tiny_model(), batch_size=8, lr=0.05)
    t.load_checkpoint(tmp_path)
    assert [t.train_step(x[8:], y[8:]), t.train_step(x[:8], y[:8])] == expected
    for k, v in t.parameters().items():
        np.testing.assert_array_equal(v, params[k])


def test_evaluate_and_callbacks():
    x, y = _data(20)
    s = TrainingSession(tiny_model(), batch_size=8, lr=0.05)
    seen = []
    s.add_callback(seen.append)
    StreamingTrainer(s, capacity=16).run([(x[:4], y[:4]), (x[4:8], y[4:8])])
    assert [m["step"] for m in seen] == [1, 2] and seen[0]["lr"] == 0.05
    result = s.evaluate(x, y, batch_size=6)
    assert result["samples"] == 20 and 0 <= result["accuracy"] <= 1 and result["loss"] > 0
    assert json.dumps(result)
