"""Learning-rate schedules: step index -> learning rate.

`make_schedule(name, base_lr, total_steps, ...)` returns a callable `lr(step)` for
0-based step indices (the optimizer's `step_count` before the update it applies to):

- warm-up (any schedule): for step < warmup_steps, lr = base_lr * (step + 1) / warmup_steps,
  a linear ramp whose last warm-up step uses base_lr itself.
- "constant": base_lr after warm-up.
- "step": base_lr * gamma ** ((step - warmup_steps) // step_size) after warm-up, never
  below min_lr (torch's StepLR, counted from the end of warm-up).
- "cosine": with p = (step - warmup_steps) / (total_steps - warmup_steps) clamped to
  [0, 1], lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2: base_lr right after
  warm-up, min_lr at step total_steps (one past the last step) and beyond (torch's
  CosineAnnealingLR with T_max = total_steps - warmup_steps, eta_min = min_lr).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import FactoEdgeError

SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule; call it with a step index. Build it with make_schedule."""

    name: str
    base_lr: float
    total_steps: int
    warmup_steps: int
    step_size: int | None
    gamma: float
    min_lr: float

    def __call__(self, step: int) -> float:
        if step < 0:
            raise FactoEdgeError(f"schedule step: expected an index >= 0, got {step}")
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        since = step - self.warmup_steps
        if self.name == "step":
            return max(self.min_lr, self.base_lr * self.gamma ** (since // self.step_size))
        if self.name == "cosine":
            progress = min(1.0, since / max(1, self.total_steps - self.warmup_steps))
            cosine = (1 + math.cos(math.pi * progress)) / 2
            return self.min_lr + (self.base_lr - self.min_lr) * cosine
        return self.base_lr


def _require(ok: bool, what: str, expected: str, found: object) -> None:
    if not ok:
        raise FactoEdgeError(f"{what}: expected {expected}, got {found!r}")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check(name, base_lr, total_steps, warmup_steps, step_size, gamma, min_lr) -> None:
    """Raises FactoEdgeError naming the first argument that makes no schedule."""
    _require(name in SCHEDULES, "schedule name", f"one of {', '.join(SCHEDULES)}", name)
    _require(math.isfinite(base_lr) and base_lr > 0, "base_lr", "a finite number > 0", base_lr)
    _require(_is_int(total_steps) and total_steps >= 1, "total_steps", "an int >= 1", total_steps)
    _require(
        _is_int(warmup_steps) and 0 <= warmup_steps <= total_steps,
        "warmup_steps",
        f"an int in [0, total_steps={total_steps}]",
        warmup_steps,
    )
    _require(0 <= min_lr <= base_lr, "min_lr", f"a number in [0, base_lr={base_lr}]", min_lr)
    if name == "step":
        ok = _is_int(step_size) and step_size >= 1
        _require(ok, "step_size of the 'step' schedule", "an int >= 1", step_size)
        _require(0 < gamma <= 1, "gamma", "a number in (0, 1]", gamma)
    else:
        _require(step_size is None, "step_size", "None (only 'step' uses it)", step_size)


def make_schedule(
    name: str,
    base_lr: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    step_size: int | None = None,
    gamma: float = 0.1,
    min_lr: float = 0.0,
) -> Schedule:
    """Builds the schedule `name` ("constant", "step" or "cosine"); see the module doc.

    `step_size` and `gamma` belong to "step"; `min_lr` is the floor of "step" and the end
    of "cosine" ("constant" ignores it). Raises FactoEdgeError for a bad argument.
    """
    _check(name, base_lr, total_steps, warmup_steps, step_size, gamma, min_lr)
    return Schedule(name, float(base_lr), total_steps, warmup_steps, step_size, gamma, min_lr)
