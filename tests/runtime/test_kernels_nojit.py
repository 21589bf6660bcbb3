"""The op tests of the Numba kernels again with NUMBA_DISABLE_JIT=1 (plain Python, so a
failure gives a readable trace), in a subprocess since the flag is read at import."""

import os
import subprocess
import sys
from pathlib import Path

KERNEL_TESTS = "conv or pool or bn or xent or relu or clip or gemm"


def test_ops_pass_without_jit():
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    test_ops = Path(__file__).with_name("test_ops.py")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_ops)]
    result = subprocess.run(
        [*cmd, "-k", KERNEL_TESTS], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "deselected" in result.stdout
