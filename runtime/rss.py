"""This process's resident memory: the figures the budget is about."""

from __future__ import annotations

import sys


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes (0 where unknown).

    On Linux it is VmHWM of /proc/self/status, the high-water mark of this program's
    memory. getrusage's ru_maxrss is the fallback elsewhere; on Linux it would also carry
    the peak of the process that forked this one (it survives fork and exec), which
    misstates a child spawned by a big parent.
    """
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:
        return 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def current_rss_bytes() -> int:
    """This process's resident set size now, in bytes (VmRSS; 0 where unknown)."""
    return _proc_status_bytes("VmRSS") or 0


def _proc_status_bytes(field: str) -> int | None:
    """A kB field of /proc/self/status in bytes; None where there is no such file."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
