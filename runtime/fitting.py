"""The budget policy: what fits a memory budget, answered by one search.

`--budget` is the whole process's peak resident memory (on a CUDA device: the device
memory the arena takes). It splits into the runtime's measured fixed cost, a safety
margin and the arena (budget.py, `Allowance`); the expected peak is `budget.expected_peak`
everywhere. Two questions, both bisections over a cost that grows with the size asked
(`largest_fitting`):

- a TrainingSession given a budget and a batch: the fewest micro-batches (gradient
  accumulation) whose arena fits (`fit_batch`);
- `facto-edge plan` and `train --batch-size auto`: the largest power-of-two batch that
  fits in one micro-batch (`largest_batch`, over sessions made with the budget).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .budget import Allowance, allowance, parse_size
from .errors import BudgetError

MAX_AUTO_BATCH = 256


@dataclass(frozen=True)
class Fit:
    """How a batch fits a budget: `accumulate` micro-batches of `micro_batch` samples in
    an arena of `arena_bytes`, under the split `room`."""

    batch_size: int
    micro_batch: int
    accumulate: int
    arena_bytes: int
    room: Allowance

    @property
    def estimated_peak(self) -> int:
        return self.room.peak(self.arena_bytes)

    @property
    def budget(self) -> int:
        return self.room.budget

    @property
    def fixed_cost(self) -> int:
        return self.room.fixed

    @property
    def margin(self) -> int:
        return self.room.margin

    @property
    def startup(self) -> int:
        return self.room.startup


def largest_fitting(cost: Callable[[int], int], limit: int, high: int) -> int | None:
    """The largest n in [1, high] with cost(n) <= limit, for a cost that grows with n
    (bisection); None when even cost(1) exceeds the limit."""
    if cost(1) > limit:
        return None
    lo, hi = 1, high
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def room_for(budget: int | str, device: str, codec: str = "fp32") -> Allowance:
    """The split of `budget` on `device`: on the CPU the process's peak RSS (fixed cost
    with `codec`'s kernels, margin, arena); on a GPU the device memory, which the arena
    alone takes."""
    if device != "cpu":
        return Allowance(parse_size(budget), fixed=0, margin=0)
    return allowance(budget, codec)


def split(batch: int, parts: int) -> tuple[int, int]:
    """(micro-batch size, micro-batches) of a batch cut into at most `parts` even parts."""
    micro = -(-batch // parts)
    return micro, -(-batch // micro)


def fit_batch(
    batch: int,
    room: Allowance,
    arena_of: Callable[[int, int], int],
    accumulate: int | None,
    what: str,
) -> Fit:
    """The fit of `batch` in `room`: `accumulate` micro-batches as given, or the fewest
    whose arena (`arena_of(micro, parts)`) fits; BudgetError naming the smallest budget
    when none does (`what` says where, e.g. the codec)."""
    if accumulate is None:
        micro = largest_fitting(
            lambda m: arena_of(*split(batch, -(-batch // m))), room.arena, batch
        )
        micro, parts = split(batch, -(-batch // (micro or 1)))
    else:
        micro, parts = split(batch, accumulate)
    arena = arena_of(micro, parts)
    if room.peak(arena) > room.budget:
        raise room.too_small(arena, f"at micro-batches of {micro}, {what}")
    return Fit(batch, micro, parts, arena, room)


def largest_batch(make: Callable[[int], object], limit: int) -> object | None:
    """The session of the largest power-of-two batch (at most `limit` and MAX_AUTO_BATCH)
    that `make(batch)` builds, by bisection over the powers of two; `make` raises
    BudgetError where a batch does not fit. None if not even a batch of 1 fits. Sessions
    made on the way are closed, but the one returned."""
    top = max(1, min(limit, MAX_AUTO_BATCH))
    sizes = [1 << k for k in range(top.bit_length())]
    best: list = [None]

    def refused(k: int) -> int:
        try:
            session = make(sizes[k - 1])
        except BudgetError:
            return 1
        if best[0] is not None:  # bisection only moves up from a fitting size
            best[0].close()
        best[0] = session
        return 0

    largest_fitting(refused, 0, len(sizes))
    return best[0]
