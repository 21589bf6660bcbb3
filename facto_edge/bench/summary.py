"""From runs to figures: medians per system and model, ratios of facto-edge to each
peer, and the targets the runtime and memory issues set (met or not met)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from facto_edge.bench.driver import BenchResult, Run
from facto_edge.bench.protocol import FACTO


@dataclass
class Summary:
    """The figures of one system on one model at the main batch size (medians over the
    successful rounds; saved bytes come from the counted round)."""

    model: str
    system: str
    images_per_s: float | None = None
    peak_rss: int | None = None
    saved_bytes: int | None = None
    first_step_s: float | None = None
    rounds: int = 0
    errors: list[str] = field(default_factory=list)
    memory_report: dict | None = None
    info: dict = field(default_factory=dict)
    flops_per_image: int | None = None

    @property
    def gflops_per_s(self) -> float | None:
        """Achieved GFLOP/s: the FLOPs of a step per image times images/s."""
        if self.flops_per_image is None or self.images_per_s is None:
            return None
        return self.flops_per_image * self.images_per_s / 1e9


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def select(result: BenchResult, model: str, kind: str, system: str | None = None) -> list[Run]:
    """The runs of one kind on `model` (of `system` only, when given), in run order."""
    return [
        r
        for r in result.runs
        if r.spec.model == model and r.spec.kind == kind and system in (None, r.spec.system)
    ]


def summarize(result: BenchResult, model: str, system: str) -> Summary:
    """The Summary of `system` on `model` from the `main` runs."""
    runs = select(result, model, "main", system)
    ok = [r for r in runs if r.ok]
    s = Summary(model, system, rounds=len(ok), errors=[r.error for r in runs if not r.ok])
    counted = result.flops.get(model, {}).get(system)
    s.flops_per_image = sum(counted.values()) if counted else None
    if not ok:
        return s
    s.images_per_s = _median([r.images_per_s for r in ok])
    rss = _median([r.peak_rss for r in ok])
    s.peak_rss = int(rss) if rss is not None else None
    s.saved_bytes = next((r.saved_bytes for r in ok if r.saved_bytes is not None), None)
    s.first_step_s = _median([r.first_step_s for r in ok])
    s.memory_report = ok[0].info.get("memory_report")
    s.info = ok[0].info
    return s


def summaries(result: BenchResult) -> dict[tuple[str, str], Summary]:
    """Summary per (model, system), in configuration order."""
    cfg = result.config
    return {(m, s): summarize(result, m, s) for m in cfg.models for s in cfg.systems}


def sgemm_gflops(result: BenchResult) -> float | None:
    """The machine's measured sgemm rate in GFLOP/s, None where it was not measured."""
    return (result.machine.get("sgemm") or {}).get("gflops")


def share_of_sgemm(result: BenchResult, s: Summary) -> float | None:
    """The achieved GFLOP/s of `s` as a fraction of the machine's sgemm rate."""
    return ratio(s.gflops_per_s, sgemm_gflops(result))


def cold_start(result: BenchResult, model: str) -> Run | None:
    """facto-edge's run with an empty Numba cache on `model`, if one was made."""
    return next(iter(select(result, model, "cold")), None)


def codec_runs(result: BenchResult, model: str) -> list[Run]:
    """facto-edge's runs with the extra codecs on `model`."""
    return select(result, model, "codec")


def sweep_runs(result: BenchResult, model: str, system: str) -> list[Run]:
    """The sweep runs of `system` on `model`, by batch size."""
    return sorted(select(result, model, "sweep", system), key=lambda r: r.spec.batch)


def largest_within_budget(runs: list[Run]) -> int | None:
    """The largest batch size a system ran at without passing the budget."""
    fits = [r.spec.batch for r in runs if r.ok and not r.over_budget]
    return max(fits) if fits else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    return a / b if a is not None and b else None


@dataclass(frozen=True)
class Target:
    """A figure an issue asks facto-edge to reach, on `required` models (all if empty)."""

    issue: int
    text: str
    value: Callable[[Summary, dict[str, Summary]], float | None]
    met: Callable[[float], bool]
    shown: Callable[[float], str]
    required: tuple[str, ...] = ()


TARGETS: tuple[Target, ...] = (
    Target(4, "saved activations at least 93% below PyTorch dense",
           lambda fe, peers: _less(fe.saved_bytes, peers.get("pytorch-dense")),
           lambda v: v >= 0.93, lambda v: f"{v:.1%} less"),
    Target(3, "throughput at least 1.0x PyTorch factorized",
           lambda fe, peers: _ratio_of(fe, peers.get("pytorch-factorized"), "images_per_s"),
           lambda v: v >= 1.0, lambda v: f"{v:.2f}x", ("resnet18_cifar",)),
    Target(4, "peak RSS at most 30% of PyTorch dense",
           lambda fe, peers: _ratio_of(fe, peers.get("pytorch-dense"), "peak_rss"),
           lambda v: v <= 0.30, lambda v: f"{v:.1%}", ("resnet18_cifar",)),
    Target(3, "cold start with a warm Numba cache under 5 s",
           lambda fe, peers: fe.first_step_s, lambda v: v < 5.0, lambda v: f"{v:.2f} s"),
)  # fmt: skip


def _less(fe_bytes: int | None, peer: Summary | None) -> float | None:
    r = ratio(fe_bytes, peer.saved_bytes if peer else None)
    return None if r is None else 1.0 - r


def _ratio_of(fe: Summary, peer: Summary | None, attr: str) -> float | None:
    return ratio(getattr(fe, attr), getattr(peer, attr) if peer else None)


@dataclass
class TargetRow:
    """One target evaluated on one model."""

    target: Target
    model: str
    value: float | None

    @property
    def required(self) -> bool:
        return not self.target.required or self.model in self.target.required

    @property
    def status(self) -> str:
        if self.value is None:
            return "not measured"
        return "met" if self.target.met(self.value) else "not met"


def evaluate_targets(result: BenchResult) -> list[TargetRow]:
    """Every target on every model (facto-edge against the peers of the same run)."""
    table = summaries(result)
    rows = []
    for target in TARGETS:
        for model in result.config.models:
            fe = table.get((model, FACTO))
            peers = {s: v for (m, s), v in table.items() if m == model}
            rows.append(TargetRow(target, model, target.value(fe, peers) if fe else None))
    return rows
