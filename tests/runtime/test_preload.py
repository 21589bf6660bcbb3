"""Kernels are loaded before the arena is touched, and the compiler's pages given back."""

import subprocess
import sys

import numpy as np
import pytest
from numba.core import event
from tiny_graphs import batch, tiny_model

from facto_edge.runtime import TrainingSession, preload
from facto_edge.runtime.kernels import dispatch


class _Count(event.Listener):
    def __init__(self) -> None:
        self.loads = 0

    def on_start(self, ev) -> None:
        pass

    def on_end(self, ev) -> None:
        self.loads += 1


@pytest.mark.parametrize("bn", ["fold", "train"])
def test_a_session_loads_every_kernel_before_its_first_step(bn):
    s = TrainingSession(tiny_model(bn=bn), batch_size=16, codec="q4", momentum=0.9, threads=2)
    x, y = batch(16)
    count = _Count()
    with event.install_listener("numba:compiler_lock", count):
        s.train_step(x, y)
        s.predict(x)
        s.compute_gradients(x[:3], y[:3])
    assert count.loads == 0


def test_both_builds_of_a_called_kernel_are_loaded():
    @dispatch.kernel
    def _double(a, out):  # a fresh two-build kernel
        for i in range(a.size):
            out[i] = 2 * a[i]

    a = np.arange(4, dtype=np.float32)
    _double(a, np.empty_like(a))  # small: the serial build
    assert _double.serial.signatures and not _double.parallel.signatures
    original = preload._kernels
    preload._kernels = lambda kind: [*original(kind), _double]
    try:
        assert preload.load_both_builds() >= 1
    finally:
        preload._kernels = original
    assert _double.parallel.signatures == _double.serial.signatures


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_PAGEOUT is Linux's")
def test_released_pages_come_back_when_a_kernel_is_compiled_again():
    assert preload.release_compiler_pages() > 100 << 20  # libllvmlite is mapped, > 100 MiB

    @dispatch.kernel
    def _triple(a, out):
        for i in range(a.size):
            out[i] = 3 * a[i]

    a = np.arange(5, dtype=np.float32)
    out = np.empty_like(a)
    _triple(a, out)  # compiles with LLVM after its pages were released
    np.testing.assert_array_equal(out, 3 * a)
    assert preload.release_compiler_pages(("no-such-library",)) == 0


SET_UP = """
import subprocess
import sys
import numpy as np
from numba import njit
from facto_edge.runtime import preload
preload.set_up_cpu_target()
print("numba.np.arraymath" in sys.modules)  # loading kernels refreshes nothing
njit(lambda a: a + 1.0)(1.0)  # compiling refreshes numba's CPU target ...
print("scipy.linalg" in sys.modules, "numba.np.arraymath" in sys.modules)  # ... without BLAS
print(njit(lambda a, b: np.dot(a, b))(np.ones(3), np.arange(3.0)))  # BLAS found later
"""


def test_numba_is_set_up_without_scipy_linalg_which_a_later_kernel_still_finds():
    out = subprocess.run(
        [sys.executable, "-c", SET_UP], capture_output=True, text=True, check=True, timeout=300
    ).stdout.split()
    assert out == ["False", "False", "True", "3.0"]


def _save_tiny_model(directory) -> None:
    """tiny_model() as a *.facto directory, for sessions in fresh interpreters."""
    import onnx

    from facto_edge.runtime.manifest import Manifest

    model, manifest = tiny_model()
    onnx.save(model, directory / "model.onnx")
    (directory / "manifest.json").write_text(Manifest.in_memory(manifest).to_json())


# Trains a tiny model in a fresh interpreter, then lists which of numba's compiler-side
# modules it imported: the registries a refresh of numba's CPU target loads.
_LEAN = """
import sys
import numpy as np
from facto_edge.runtime import TrainingSession
s = TrainingSession(sys.argv[1], batch_size=4, codec="q4")
x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
s.train_step(x, np.arange(4) % 5)
print(sorted(m for m in ("numba.np.arraymath", "numba.np.linalg", "numba.typed.typedlist",
                         "numba.experimental.jitclass.base", "scipy.linalg") if m in sys.modules))
"""


def test_a_session_loads_its_kernels_without_numbas_compiler_registries(tmp_path):
    _save_tiny_model(tmp_path)
    TrainingSession(str(tmp_path), batch_size=4, codec="q4").close()  # compiles what is not cached
    run = subprocess.run(
        [sys.executable, "-c", _LEAN, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["[]"]


# In a fresh interpreter: how many two-build kernels hold a loaded serial and parallel
# build after a session with argv[2] threads is made.
_BUILDS = """
import sys
from facto_edge.runtime import TrainingSession, preload
from facto_edge.runtime.kernels import dispatch
TrainingSession(sys.argv[1], batch_size=4, codec="q4", threads=int(sys.argv[2])).close()
kernels = preload._kernels(dispatch.Kernel)
print(*(sum(bool(getattr(k, b).overloads) for k in kernels) for b in ("serial", "parallel")))
"""


def test_one_thread_loads_no_parallel_build_and_two_threads_load_both(tmp_path):
    _save_tiny_model(tmp_path)
    TrainingSession(str(tmp_path), batch_size=4, codec="q4", threads=2).close()  # compiles
    loaded = {}
    for threads in (1, 2):
        run = subprocess.run(
            [sys.executable, "-c", _BUILDS, str(tmp_path), str(threads)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        loaded[threads] = [int(v) for v in run.stdout.split()]
    assert loaded[1][0] > 0 and loaded[1][1] == 0
    assert loaded[2][1] == loaded[2][0]
