"""Compile every CUDA kernel the CUDA tests launch to PTX, without a GPU.

The CUDA simulator runs kernels as Python, so it cannot catch what only the real compiler
rejects (typing, unsupported functions). This tool runs tests/runtime/test_cuda.py under
the simulator with itself loaded as a pytest plugin that records the numba signature of
every launch, then compiles each recorded (kernel, signature) with numba-cuda's NVVM for
a target compute capability (default 8.7, Jetson Orin). It needs the cuda extra with a
toolkit (`pip install 'numba-cuda[cu12]'`), not a GPU or a driver.

    python tools/cuda_ptx_check.py            # exit status 1 if any kernel fails
    python tools/cuda_ptx_check.py --cc 7.2   # Jetson Xavier
    python tools/cuda_ptx_check.py -- -k conv # pytest arguments after --
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
SIGNATURES = "FACTO_PTX_SIGNATURES"  # where the plugin writes what it saw


def _record_launches(path: str) -> None:
    """Plugin side: wrap the simulator's kernel launch to record (module, name) -> sigs."""
    import numba
    from numba.cuda.simulator import kernel

    seen: dict[tuple[str, str], set] = {}
    launch = kernel.FakeCUDAKernel.__call__

    def call(self, *args):
        if not self._device:
            sig = tuple(numba.typeof(getattr(a, "_ary", a)) for a in args)
            seen.setdefault((self.fn.__module__, self.fn.__name__), set()).add(sig)
        return launch(self, *args)

    kernel.FakeCUDAKernel.__call__ = call
    atexit.register(lambda: Path(path).write_bytes(pickle.dumps(seen)))


if os.environ.get(SIGNATURES) and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    _record_launches(os.environ[SIGNATURES])


def record(path: Path, pytest_args: list[str]) -> None:
    """Run the CUDA tests under the simulator with this file as a plugin."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", SIGNATURES: str(path)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tools"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "cuda_ptx_check"]
    cmd += [*pytest_args, str(ROOT / "tests" / "runtime" / "test_cuda.py")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"the CUDA tests failed under the simulator:\n{proc.stdout[-4000:]}")


def compile_all(path: Path, cc: tuple[int, int]) -> int:
    """Compile every recorded launch for `cc`; returns the number of failures."""
    from numba import cuda
    from numba.cuda import dispatcher

    # device functions ask the current device for its compute capability: answer `cc`
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    seen = pickle.loads(path.read_bytes())
    failed = 0
    for (module, name), sigs in sorted(seen.items()):
        fn = getattr(importlib.import_module(module), name).py_func
        for sig in sigs:
            try:
                cuda.compile_ptx(fn, sig, cc=cc)
            except Exception as e:  # noqa: BLE001 - report every failure, then fail
                failed += 1
                print(f"FAILED {module}.{name}{sig}: {type(e).__name__}: {e}", file=sys.stderr)
    total = sum(len(s) for s in seen.values())
    print(f"{total - failed}/{total} launches of {len(seen)} kernels compile for sm_{cc[0]}{cc[1]}")
    return failed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cc", default="8.7", help="compute capability, e.g. 8.7")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = p.parse_args()
    cc = tuple(int(v) for v in args.cc.split("."))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "signatures.pkl"
        record(path, args.pytest_args)
        return 1 if compile_all(path, cc) else 0


if __name__ == "__main__":
    sys.exit(main())
