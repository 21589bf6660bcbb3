"""Fit training into a memory budget: check a batch size, or pick the largest that fits.

`--budget` is the whole process's peak resident memory. Where the TrainingSession takes a
budget it plans its own arena against it (and splits a batch into micro-batches when it
must); otherwise a run's peak is estimated here as the runtime's measured fixed cost
(`budget.measure_runtime_fixed_cost`) plus the session's arena
(`memory_report()["arena_bytes"]`), or the runtime's start-up peak if that is higher,
plus the safety margin. `--batch-size auto` is the largest power of two whose
session fits whole (no micro-batches), found by bisection over real sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from facto_edge.errors import BudgetError
from facto_edge.runtime.budget import (
    SAFETY_MARGIN,
    expected_peak,
    format_size,
    measure_runtime_fixed_cost,
    measure_runtime_startup_peak,
)

MAX_AUTO_BATCH = 256

SessionFactory = Callable[[int], object]


@dataclass(frozen=True)
class Fit:
    """A batch size and what it is expected to cost against the budget; the session may
    run the batch as `accumulate` micro-batches of `micro_batch` to fit."""

    batch_size: int
    budget: int
    fixed_cost: int
    arena_bytes: int
    micro_batch: int | None = None
    accumulate: int = 1
    margin: int = 0
    startup: int = 0  # the runtime's peak while loading, before the arena

    @property
    def estimated_peak(self) -> int:
        return expected_peak(self.fixed_cost, self.arena_bytes, self.startup, self.margin)


def _over_budget(fit: Fit) -> BudgetError:
    fixed, arena = fit.fixed_cost, fit.arena_bytes
    return BudgetError(
        f"training needs about {format_size(fit.estimated_peak)} (runtime "
        f"{format_size(fixed)} + buffers {format_size(arena)} at batch size "
        f"{fit.batch_size} + margin {format_size(fit.margin)}) but the budget is "
        f"{format_size(fit.budget)}: give --budget {format_size(fit.estimated_peak)} or "
        "more, or a smaller --batch-size or --codec"
    )


def fit_of(session, budget: int) -> Fit:
    """What a built session costs against `budget` (it is not checked)."""
    report = session.memory_report()
    return Fit(
        batch_size=int(report["batch_size"]),
        budget=budget,
        fixed_cost=measure_runtime_fixed_cost(),
        arena_bytes=int(report["arena_bytes"]),
        micro_batch=report.get("micro_batch"),
        accumulate=int(report.get("accumulate", 1)),
        margin=SAFETY_MARGIN,
        startup=measure_runtime_startup_peak(),
    )


def check_fits(session, budget: int) -> Fit:
    """The fit of a built session; BudgetError if it cannot fit the budget."""
    fit = fit_of(session, budget)
    if fit.estimated_peak > budget:
        raise _over_budget(fit)
    return fit


def _fits_whole(make: SessionFactory, batch: int, budget: int) -> bool:
    """Whether a session of `batch` fits `budget` without splitting it into micro-batches."""
    try:
        session = make(batch)
    except BudgetError:
        return False
    if session.memory_report().get("accumulate", 1) > 1:
        return False
    return getattr(make, "owns_budget", False) or fit_of(session, budget).estimated_peak <= budget


def fit_batch_size(make: SessionFactory, budget: int, max_batch: int) -> int:
    """The largest power-of-two batch size (at most `max_batch` and MAX_AUTO_BATCH) whose
    session fits `budget` whole, by bisection over the powers of two; `make(b)` builds a
    session of batch size b. BudgetError, saying what would fit, if not even 1 does."""
    sizes = [1 << k for k in range(9) if 1 << k <= min(max_batch, MAX_AUTO_BATCH)]
    lo, hi, best = 0, len(sizes) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if _fits_whole(make, sizes[mid], budget):
            best, lo = sizes[mid], mid + 1
        else:
            hi = mid - 1
    if best is None:
        check_fits(make(1), budget)  # raises, with the figures
    return best or 1
