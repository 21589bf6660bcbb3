"""Numba's runtime library is compiled once, stored as object code, and loaded after."""

import os
import subprocess
import sys

# In a fresh interpreter: initialize numba's runtime library through nrt_object, run a
# kernel that needs it (it allocates an array), and say whether this process compiled it.
_INIT = """
import numpy as np
from numba import njit
from facto_edge.runtime import nrt_object
before = nrt_object.cached()
nrt_object.ensure()
print(before, nrt_object.compiled_here(), nrt_object.cached(), njit(lambda n: np.ones(n).sum())(4))
"""


def _run(cache_home) -> list[str]:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home))
    run = subprocess.run(
        [sys.executable, "-c", _INIT], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.split()


def test_the_first_process_compiles_and_stores_the_library_the_next_loads_it(tmp_path):
    assert _run(tmp_path) == ["False", "True", "True", "4.0"]
    assert len(list((tmp_path / "facto-edge" / "nrt").glob("*.pickle"))) == 1
    assert _run(tmp_path) == ["True", "False", "True", "4.0"]


def test_a_corrupt_stored_library_is_compiled_again(tmp_path):
    _run(tmp_path)
    (stored,) = (tmp_path / "facto-edge" / "nrt").glob("*.pickle")
    stored.write_bytes(b"not a pickle")
    assert _run(tmp_path) == ["True", "True", "True", "4.0"]
