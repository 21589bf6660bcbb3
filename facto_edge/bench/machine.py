"""What a benchmark ran on: CPU, cores, memory, load and the versions that matter."""

from __future__ import annotations

import importlib.metadata
import os
import platform
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


def machine_info() -> dict:
    """CPU model, core count, memory, OS, load average now, and versions."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "load_start": load_average(),
        "versions": versions(),
    }
