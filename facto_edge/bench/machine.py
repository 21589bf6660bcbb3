"""What a benchmark ran on: CPU, cores, memory, load and the versions that matter."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path

import facto_edge

PACKAGES = ("torch", "numpy", "numba", "onnx", "onnxruntime-training", "onnxruntime")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def versions() -> dict[str, str]:
    """Versions of Python, facto-edge and the installed frameworks ("absent" if not)."""
    out = {"python": platform.python_version(), "facto-edge": facto_edge.__version__}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def peak_rss_of(pid: int | str = "self") -> int | None:
    """VmHWM (peak resident set size) of process `pid` in bytes, from /proc; None where
    /proc is unavailable or the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _cpu_times() -> tuple[int, int] | None:
    """(all, idle + iowait) jiffies of every CPU since boot, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(values), values[3] + values[4]


def busy_cores(interval_s: float = 1.0) -> float | None:
    """How many cores every process on the machine kept busy over the next `interval_s`
    (None where /proc/stat is unavailable)."""
    before = _cpu_times()
    time.sleep(interval_s)
    after = _cpu_times()
    if before is None or after is None or after[0] == before[0]:
        return None
    total, idle = after[0] - before[0], after[1] - before[1]
    return round((1 - idle / total) * (os.cpu_count() or 1), 2)


def wait_until_idle(max_busy: float, max_wait_s: float) -> tuple[float | None, float]:
    """Wait until fewer than `max_busy` cores are busy, for at most `max_wait_s`.
    Returns the last busy figure and the seconds waited."""
    start = time.monotonic()
    while True:
        busy = busy_cores()
        waited = time.monotonic() - start
        if busy is None or busy < max_busy or waited >= max_wait_s:
            return busy, round(waited, 1)


def machine_info() -> dict:
    """CPU model, core count, memory, OS, load average now, and versions."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "load_start": load_average(),
        "versions": versions(),
        # OPENBLAS_CORETYPE pins numpy's BLAS kernels (some images set it: AVX2 kernels
        # on an AVX-512 CPU halve its sgemm rate); the report says which held
        "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")},
    }
