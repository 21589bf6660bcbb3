"""What one benchmark run measures, and in which order.

The protocol of ../shared/BENCHMARKS.md: the systems run side by side, interleaved
(A B C D A B C D ...), each measurement in a fresh subprocess so that its peak RSS is its
own. Per model the plan is

1. `prime`: one untimed facto-edge run, so the Numba cache of the warm runs is warm;
2. `repeats` rounds of every system at `batch` (`main`); in the first round facto-edge
   also runs once with a fresh, empty Numba cache (`cold`);
3. one run of facto-edge per extra codec (`codec`), for the saved-bytes table;
4. the batch-size sweep (`sweep`), every system at each batch size in turn.

`plan_runs` only lists the runs; `facto_edge.bench.driver` executes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from facto_edge.errors import FactoEdgeError
from facto_edge.runtime.codec_names import CODEC_NAMES

SYSTEMS: dict[str, str] = {
    "pytorch-dense": "PyTorch dense (BN train)",
    "pytorch-factorized": "PyTorch factorized (same frozen factors)",
    "ort-training": "ONNX Runtime training (ort/)",
    "facto-edge": "facto-edge",
}
FACTO = "facto-edge"
DEFAULT_MODELS = ("resnet18_cifar", "mobilenetv2_cifar", "vgg11_bn_cifar")
BN_CHOICES = ("fold", "train")
KINDS = ("prime", "main", "cold", "codec", "sweep")


@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark run depends on. `codecs[0]` is the codec facto-edge runs
    with against its peers; the others only add rows to the codec table. With `max_busy`,
    each measurement waits (at most `max_wait_s`) until the machine's other processes keep
    fewer than that many cores busy."""

    models: tuple[str, ...] = DEFAULT_MODELS
    systems: tuple[str, ...] = tuple(SYSTEMS)
    batch: int = 32
    rank: float = 0.25
    train: str = "last"  # the export's --train
    bn: str = "fold"  # the export's --bn
    codecs: tuple[str, ...] = ("q4",)
    input_shape: tuple[int, int, int] = (3, 32, 32)
    steps: int = 5
    warmup: int = 2
    repeats: int = 3
    sweep: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    sweep_steps: int = 2
    budget: int | None = 512 * 10**6
    cold_start: bool = True
    threads: int | None = None
    max_busy: float | None = None
    max_wait_s: float = 300.0
    lr: float = 0.01
    momentum: float = 0.9
    seed: int = 0
    timeout_s: float = 1800.0
    command: str = ""

    def validate(self) -> None:
        """Raise FactoEdgeError naming the first setting that cannot work."""
        unknown = [s for s in self.systems if s not in SYSTEMS]
        if unknown or not self.systems:
            raise FactoEdgeError(f"systems must be among {', '.join(SYSTEMS)}, found {unknown}")
        bad = [c for c in self.codecs if c not in CODEC_NAMES]
        if bad or not self.codecs:
            raise FactoEdgeError(f"codecs must be among {', '.join(CODEC_NAMES)}, found {bad}")
        if not self.models:
            raise FactoEdgeError("give at least one model")
        counts = {"batch": self.batch, "steps": self.steps, "warmup": self.warmup,
                  "repeats": self.repeats, "sweep_steps": self.sweep_steps}  # fmt: skip
        for name, value in counts.items():
            if value < 1:
                raise FactoEdgeError(f"{name} must be at least 1, found {value}")
        if any(b < 1 for b in self.sweep):
            raise FactoEdgeError(f"sweep batch sizes must be positive, found {self.sweep}")
        if not 0 < self.rank <= 1:
            raise FactoEdgeError(f"rank must be in (0, 1], found {self.rank}")
        from facto_edge.exporters.rewrite import train_parts  # torch: not in the workers

        train_parts(self.train)
        if self.bn not in BN_CHOICES:
            raise FactoEdgeError(f"bn must be one of {', '.join(BN_CHOICES)}, found {self.bn!r}")


@dataclass(frozen=True)
class RunSpec:
    """One measurement: one system on one model at one batch size, in its own process."""

    model: str
    system: str
    batch: int
    kind: str
    codec: str
    steps: int
    warmup: int
    repeat: int = 0
    count_saved: bool = False


def plan_runs(cfg: BenchConfig, model: str) -> list[RunSpec]:
    """The runs of one model, in the order they execute (see the module docstring)."""
    codec = cfg.codecs[0]
    runs: list[RunSpec] = []
    if FACTO in cfg.systems:
        runs.append(RunSpec(model, FACTO, cfg.batch, "prime", codec, 1, 1))
    for repeat in range(cfg.repeats):
        for system in cfg.systems:
            if system == FACTO and repeat == 0 and cfg.cold_start:
                runs.append(RunSpec(model, FACTO, cfg.batch, "cold", codec, 1, 1))
            runs.append(
                RunSpec(model, system, cfg.batch, "main", codec, cfg.steps, cfg.warmup,
                        repeat, count_saved=repeat == 0)
            )  # fmt: skip
    if FACTO in cfg.systems:
        runs += [
            RunSpec(model, FACTO, cfg.batch, "codec", c, 1, 1, count_saved=True)
            for c in cfg.codecs[1:]
        ]
    for batch in cfg.sweep:
        runs += [RunSpec(model, s, batch, "sweep", codec, cfg.sweep_steps, 1) for s in cfg.systems]
    return runs
