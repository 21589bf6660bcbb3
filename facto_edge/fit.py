"""Fit training into a memory budget: check a batch size, or pick the largest that fits.

`--budget` is the whole process's peak resident memory. The estimate of a run's peak is
the runtime's measured fixed cost (`budget.measure_runtime_fixed_cost`) plus the bytes of
the session's buffers (`TrainingSession.memory_report()["arena_bytes"]`). Buffers grow
linearly with the batch size, so two probe sessions (batch 1 and 2) give the line, and
the largest power of two under the budget is picked; the caller confirms it with
`check_fits` on the session it builds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from facto_edge.budget import format_size, measure_runtime_fixed_cost
from facto_edge.errors import BudgetError

MAX_AUTO_BATCH = 256

SessionFactory = Callable[[int], object]


@dataclass(frozen=True)
class Fit:
    """A batch size and what it is expected to cost against the budget."""

    batch_size: int
    budget: int
    fixed_cost: int
    arena_bytes: int

    @property
    def estimated_peak(self) -> int:
        return self.fixed_cost + self.arena_bytes


def arena_of(session) -> int:
    return int(session.memory_report()["arena_bytes"])


def _over_budget(budget: int, fixed: int, arena: int, batch: int, min_fit: int) -> BudgetError:
    return BudgetError(
        f"training needs about {format_size(fixed + arena)} (runtime {format_size(fixed)} + "
        f"buffers {format_size(arena)} at batch size {batch}) but the budget is "
        f"{format_size(budget)}: give --budget {format_size(min_fit)} or more, or a "
        "smaller --batch-size or --codec"
    )


def check_fits(session, batch_size: int, budget: int) -> Fit:
    """The fit of a built session; BudgetError if it cannot fit the budget."""
    fixed, arena = measure_runtime_fixed_cost(), arena_of(session)
    if fixed + arena > budget:
        raise _over_budget(budget, fixed, arena, batch_size, fixed + arena)
    return Fit(batch_size, budget, fixed, arena)


def fit_batch_size(make_session: SessionFactory, budget: int, max_batch: int) -> Fit:
    """The largest power-of-two batch size (at most `max_batch`, MAX_AUTO_BATCH) whose
    sessions fit `budget`; `make_session(b)` builds a session of batch size b."""
    fixed = measure_runtime_fixed_cost()
    one, two = arena_of(make_session(1)), arena_of(make_session(2))
    per_sample, base = max(two - one, 1), one - max(two - one, 0)
    if fixed + one > budget:
        raise _over_budget(budget, fixed, one, 1, fixed + one)
    limit = min(max_batch, MAX_AUTO_BATCH)
    batch = 1
    while batch * 2 <= limit and fixed + base + per_sample * batch * 2 <= budget:
        batch *= 2
    return Fit(batch, budget, fixed, base + per_sample * batch)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes (0 where unknown).

    On Linux it is VmHWM of /proc/self/status, the high-water mark of this program's
    memory. getrusage's ru_maxrss is the fallback elsewhere; on Linux it would also carry
    the peak of the process that forked this one (it survives fork and exec), which
    misstates a child spawned by a big parent.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024
