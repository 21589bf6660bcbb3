"""Where the runtime keeps what it computes once per machine: the user's cache directory.

    ~/.cache/facto-edge/            ($XDG_CACHE_HOME/facto-edge where that is set)
        fixed_cost.json             the budget probe's figures (runtime/budget.py)
        kernelsets/                 which kernels each model needs (runtime/kernelset.py)
        numba/                      numba's kernel cache, when the runtime's own source
                                    directory is read-only (an installed package)

Numba caches a kernel beside its source (`__pycache__`) when that directory is writable,
as in a development tree. An installed runtime usually is not; numba would then fall back
to its own user-wide directory. `use_user_kernel_cache` points it at ours instead, through
NUMBA_CACHE_DIR, so that the preparation's child processes and the probe's inherit it.
A NUMBA_CACHE_DIR the user set is left alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

RUNTIME_DIR = Path(__file__).resolve().parent


def user_cache_dir() -> Path:
    """~/.cache/facto-edge, or $XDG_CACHE_HOME/facto-edge."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(root) / "facto-edge"


def source_cache_writable(directory: Path = RUNTIME_DIR) -> bool:
    """Whether numba can keep its cache in `directory`/__pycache__ (its in-tree rule)."""
    pycache = directory / "__pycache__"
    if pycache.is_dir():
        return os.access(pycache, os.W_OK | os.X_OK)
    return os.access(directory, os.W_OK | os.X_OK)


def use_user_kernel_cache() -> str | None:
    """Send numba's cache to user_cache_dir()/numba when the runtime's source directories
    are read-only and the user chose no NUMBA_CACHE_DIR; returns the directory set, or
    None when nothing changed. Call before any kernel is decorated."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    if all(source_cache_writable(d) for d in (RUNTIME_DIR, RUNTIME_DIR / "kernels")):
        return None
    path = str(user_cache_dir() / "numba")
    os.environ["NUMBA_CACHE_DIR"] = path
    config = sys.modules.get("numba.core.config")
    if config is not None:  # numba read its environment already
        config.CACHE_DIR = path
    return path
