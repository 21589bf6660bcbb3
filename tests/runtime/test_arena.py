"""The arena: aligned, views share its bytes without copying, and views never allocate."""

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from facto_edge.errors import DeviceError
from facto_edge.runtime.arena import Arena
from facto_edge.runtime.planner import GreedyPlanner

MiB = 1 << 20


def test_views_alias_the_arena_at_their_offsets():
    arena = Arena(4096)
    a = arena.view(0, (4, 4), np.float32)
    b = arena.view(64, (8,), np.float64)
    raw = arena.view(0, (4096,), np.uint8)
    a[...] = 1.5
    b[...] = -2.0
    assert raw.ctypes.data % 64 == 0 and a.flags.c_contiguous and b.flags.c_contiguous
    assert raw[:64].view(np.float32).tolist() == [1.5] * 16
    assert raw[64:128].view(np.float64).tolist() == [-2.0] * 8
    assert np.shares_memory(a, raw) and not np.shares_memory(a, b)


def test_planned_views_do_not_overlap():
    plan = GreedyPlanner()
    lifetimes = [(3000, 0, 1), (5000, 1, 2), (700, 2, 3), (64, 0, 3)]
    for size, first, last in lifetimes:
        plan.add_buffer(size, first, last)
    arena = Arena(plan.arena_size())
    views = [arena.view(plan.offset(i), (s,), np.uint8) for i, (s, _, _) in enumerate(lifetimes)]
    for i, (_, f1, l1) in enumerate(lifetimes):
        for j, (_, f2, l2) in enumerate(lifetimes[:i]):
            if f1 <= l2 and f2 <= l1:
                assert not np.shares_memory(views[i], views[j])
    assert all(v.ctypes.data % 64 == 0 for v in views)


def test_views_do_not_allocate():
    tracemalloc.start()
    try:
        arena = Arena(16 * MiB)
        # numpy reports its data buffers to tracemalloc: the arena itself shows up
        assert tracemalloc.get_traced_memory()[1] >= 16 * MiB
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        for k in range(1000):
            v = arena.view((k % 15) * MiB, (MiB // 4,), np.float32)
            v[0] = k
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before < 64 * 1024
    assert current - before < 4 * 1024


@pytest.mark.parametrize(
    ("offset", "shape", "dtype"),
    [(4090, (4,), np.float32), (-64, (1,), np.uint8), (2, (1,), np.float32)],
)
def test_views_outside_or_misaligned_are_rejected(offset, shape, dtype):
    with pytest.raises(ValueError, match="does not fit"):
        Arena(4096).view(offset, shape, dtype)


def test_unknown_device_is_rejected():
    with pytest.raises(DeviceError, match="unknown device"):
        Arena(64, device="tpu")


def test_cuda_arena_under_the_simulator():
    script = (
        "import numpy as np\n"
        "from facto_edge.runtime.arena import Arena\n"
        "v = Arena(1024, device='cuda').view(64, (4, 4), np.float32)\n"
        "print(v.shape, v.dtype)\n"
    )
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(4, 4) float32"
