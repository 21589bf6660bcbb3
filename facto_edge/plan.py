"""Budget planning: what training fits a memory budget, and where every byte goes.

    from facto_edge.plan import plan_training
    report = plan_training("model.facto", "512MB", batch_size=64)
    report.micro_batch, report.accumulate, report.codec, report.total

The budget is the whole process's peak resident memory. It splits into the runtime's
measured fixed cost, a safety margin for what the process holds beside the arena
(runtime/budget.py), and the arena. Each candidate is the real session bound with the
budget (runtime/memory.py plans its arena from a dry run; the arena's pages cost memory
only once training writes them), so the figures are those training will have.

The choice, codec bits tried from 8 down to `codec_limit` (fewer bits: smaller saved
activations, more rounding error), or exactly `bits`:
- with `batch_size`: the fewest micro-batches (gradient accumulation) that reach it, then
  the most bits;
- without: the largest power-of-two batch (up to MAX_AUTO_BATCH) in one micro-batch, then
  the most bits.
If nothing fits, BudgetError names the smallest budget that would: one sample per
micro-batch at the fewest bits allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facto_edge.errors import BudgetError, FactoEdgeError
from facto_edge.runtime.budget import parse_size
from facto_edge.runtime.codec_names import BLOCK_CODECS
from facto_edge.runtime.fitting import MAX_AUTO_BATCH, Fit, largest_batch

BITS = tuple(int(name[1:]) for name in BLOCK_CODECS)  # (8, 4, 2)


@dataclass(frozen=True)
class PlanReport:
    """A fitted training configuration and its memory figures (bytes)."""

    model: str
    budget: int
    batch_size: int
    micro_batch: int
    accumulate: int
    bits: int
    fit: Fit  # how the session fits the budget (runtime/fitting.py)
    memory: dict  # TrainingSession.memory_report()
    plan: object  # runtime.memory.MemoryPlan

    @property
    def fixed_cost(self) -> int:
        return self.fit.fixed_cost

    @property
    def margin(self) -> int:
        return self.fit.margin

    @property
    def codec(self) -> str:
        return f"q{self.bits}"

    @property
    def arena_bytes(self) -> int:
        return int(self.memory["arena_bytes"])

    @property
    def total(self) -> int:
        """The expected peak (budget.expected_peak): the larger of fixed cost + arena and
        the runtime's start-up peak, plus the safety margin."""
        return self.fit.estimated_peak

    def breakdown(self) -> list[tuple[str, int]]:
        """(what, bytes) in the order `facto-edge plan` prints them."""
        m = self.memory
        return [
            ("weights", m["weights_bytes"]),
            ("gradients", m["grads_bytes"]),
            ("optimizer state", m["optimizer_bytes"]),
            ("saved activations", m["saved_bytes"]),
            ("peak live activations", m["peak_activation_bytes"]),
            ("peak workspace", m["peak_workspace_bytes"]),
            ("arena (planned)", m["arena_bytes"]),
            ("fixed runtime cost", self.fixed_cost),
            ("safety margin", self.margin),
        ]

    def saved_by_layer(self) -> dict[str, int]:
        """Saved bytes per node that keeps something for backward, in schedule order."""
        return self.plan.saved_by_node()


def _session(model_dir, budget: int, batch: int, bits: int, accumulate: int | None, options: dict):
    """The session training would build, or None when it does not fit the budget."""
    from facto_edge.runtime import TrainingSession

    try:
        return TrainingSession(
            model_dir,
            batch_size=batch,
            codec=f"q{bits}",
            budget=budget,
            accumulate=accumulate,
            **options,
        )
    except BudgetError:
        return None


def _report(model_dir, budget: int, session, bits: int) -> PlanReport:
    m = session.memory_report()
    return PlanReport(
        str(model_dir), budget, session.batch_size, m["micro_batch"], m["accumulate"], bits,
        session.fit, m, session.memory_plan,
    )  # fmt: skip


def _bits_to_try(bits: int | None, codec_limit: int) -> tuple[int, ...]:
    if bits is not None:
        if bits not in BITS:
            raise FactoEdgeError(f"bits must be one of {BITS}, found {bits!r}")
        return (bits,)
    if codec_limit not in BITS:
        raise FactoEdgeError(f"codec_limit must be one of {BITS}, found {codec_limit!r}")
    return tuple(b for b in BITS if b >= codec_limit)


def _fit_batch(model_dir, budget: int, batch: int, tries, options) -> tuple:
    """(session, bits) for the batch asked for: fewest micro-batches, then most bits."""
    best = None
    for bits in tries:
        s = _session(model_dir, budget, batch, bits, None, options)
        if s is not None and (best is None or _parts(s) < _parts(best[0])):
            best = (s, bits)
    return best


def _parts(session) -> int:
    return session.memory_report()["accumulate"]


def _largest_batch(model_dir, budget: int, tries, options, limit: int) -> tuple:
    """(session, bits) of the largest power-of-two batch in one micro-batch, then most
    bits."""
    from facto_edge.runtime import TrainingSession

    best = None
    for bits in tries:

        def make(batch: int, bits: int = bits):
            return TrainingSession(
                model_dir, batch_size=batch, codec=f"q{bits}", budget=budget, accumulate=1,
                **options,
            )  # fmt: skip

        session = largest_batch(make, limit)
        if session is not None and (best is None or session.batch_size > best[0].batch_size):
            best = (session, bits)
    return best


def plan_training(
    model_dir: str | Path,
    budget: int | str,
    batch_size: int | None = None,
    bits: int | None = None,
    codec_limit: int = 2,
    max_batch: int = MAX_AUTO_BATCH,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    threads: int | None = None,
) -> PlanReport:
    """Fit training of the exported model `model_dir` into `budget` (peak RSS: bytes or a
    size such as "512MB"). `batch_size` fixes the batch (micro-batches reach it when it
    does not fit at once), None picks the largest power of two up to `max_batch`. `bits`
    fixes the codec's bits, None tries 8, 4, 2 down to `codec_limit`. `optimizer`,
    `momentum` (state kept or not) and `threads` (lanes) are the session's, as training
    will set them.

    Raises BudgetError, naming the smallest budget that fits, when nothing does.
    """
    from facto_edge.runtime import TrainingSession

    budget_bytes = parse_size(budget)
    tries = _bits_to_try(bits, codec_limit)
    options = {"optimizer": optimizer, "momentum": momentum, "threads": threads}
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise FactoEdgeError(f"batch_size must be a positive int, found {batch_size!r}")
    if batch_size is None:
        best = _largest_batch(model_dir, budget_bytes, tries, options, max_batch)
    else:
        best = _fit_batch(model_dir, budget_bytes, batch_size, tries, options)
    if best is None:  # let the session say what the smallest budget is
        TrainingSession(
            model_dir,
            batch_size=batch_size or 1,
            codec=f"q{tries[-1]}",
            budget=budget_bytes,
            **options,
        )
        raise AssertionError("the smallest session fits, yet no plan was found")
    return _report(model_dir, budget_bytes, *best)
