"""`facto-edge export --auto --budget 512MB`: the export with the best expected accuracy
whose training fits the budget.

The candidates are export configurations (rank, trainable set, BatchNorm) in the order of
the accuracy they reached in the CIFAR fine-tuning study (tools/cifar_study.py,
docs/accuracy.md): the first is the study's best. Each is exported into a scratch
directory beside the output (no ONNX Runtime artifacts) and planned as training will run
it (facto_edge.plan: the real session bound with the budget, at the batch size and codec
asked for, in one micro-batch); the first that fits is exported to the output for real.
Every candidate tried is reported with its planned peak, so the choice says why.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from facto_edge.errors import BudgetError, FactoEdgeError
from facto_edge.runtime.budget import format_size, parse_size
from facto_edge.runtime.codec_names import BLOCK_CODECS


@dataclass(frozen=True)
class Candidate:
    """One export configuration and what the study measured for it."""

    rank: float
    train: str
    bn: str
    study: str  # the study's figure, for the report
    train_hint: str = ""  # how the study trained it, where the defaults of train differ

    def options(self) -> str:
        return f"--rank {self.rank} --train {self.train} --bn {self.bn}"


# What `facto-edge export` and `facto_edge.export` use when not told.
EXPORT_DEFAULTS = {"rank": 0.25, "train": "delta", "bn": "train"}

# Best first: the test accuracy in the CIFAR study (docs/accuracy.md; ResNet-20 fine-tuned
# to five new classes from 500 photos each, mean of three seeds where it says so, else
# seed 0's; PyTorch full fine-tuning 81.6%, head only 68.1%, biases and BN 74.9%).
CANDIDATES = (
    Candidate(
        1.0,
        "core,last",
        "train",
        "80.7% over three seeds in the CIFAR study, trained with q2 and the layers that "
        "matter most (full fine-tuning 81.6%)",
        "train it with --lr 0.03 --train-layers auto:SIZE (SIZE: the saved bytes per step "
        "to allow, e.g. 7% of what PyTorch dense training keeps)",
    ),
    Candidate(0.5, "delta", "train", "78.3% over three seeds in the CIFAR study, q2"),
    Candidate(0.25, "delta", "train", "78.6% in the CIFAR study (seed 0), q2: the defaults"),
    Candidate(0.25, "delta", "fold", "77.2% in the CIFAR study (seed 0) with --lr-groups head=10"),
    Candidate(0.25, "last", "fold", "69.9% in the CIFAR study (seed 0): the former defaults"),
)


@dataclass(frozen=True)
class AutoChoice:
    """The chosen candidate, its plan, and one line per candidate tried."""

    candidate: Candidate
    peak: int
    saved_bytes: int
    tried: list[str]


Say = Callable[[str], None]


def choose_and_export(
    model, output: str | Path, budget: int | str, *, batch_size: int = 32, codec: str = "q2",
    ort: bool = True, force: bool = False, say: Say | None = None,
    candidates: tuple[Candidate, ...] = CANDIDATES, **export_options,
) -> tuple[AutoChoice, object]:  # fmt: skip
    """Export `model` to `output` with the first of `candidates` whose training at
    `batch_size` with `codec` fits `budget` in one micro-batch; returns the choice and the
    manifest. Where none fits in one micro-batch, the first that fits in several; where none
    fits at all, BudgetError names what the last (smallest) candidate needs."""
    from facto_edge.compile_cli import prepare_before_budget
    from facto_edge.exporters.export import check_output, export
    from facto_edge.plan import plan_training

    say = say or (lambda msg: None)
    budget_bytes = parse_size(budget)
    if codec not in BLOCK_CODECS:
        raise FactoEdgeError(
            f"--auto plans a block codec ({', '.join(BLOCK_CODECS)}), found {codec!r}"
        )
    bits = int(codec[1:])
    output = Path(output).absolute()
    check_output(output, force)  # before minutes of trials, not after
    output.parent.mkdir(parents=True, exist_ok=True)
    tried: list[str] = []
    choice = fallback = None
    with tempfile.TemporaryDirectory(prefix=".facto-auto-", dir=output.parent) as scratch:
        for i, cand in enumerate(candidates):
            trial = Path(scratch) / f"candidate-{i}.facto"
            say(f"--auto: trying {cand.options()} ({cand.study})")
            export(model, trial, ort=False, rank=cand.rank, train=cand.train, bn=cand.bn,
                   **export_options)  # fmt: skip
            prepare_before_budget(str(trial), [codec], "sgd", echo=say)
            try:
                report = plan_training(trial, budget_bytes, batch_size=batch_size, bits=bits)
            except BudgetError as e:
                tried.append(f"{cand.options()}: does not fit")
                smallest = str(e)
                continue
            found = AutoChoice(cand, report.total, int(report.memory["saved_bytes"]), tried)
            peak = format_size(report.total)
            if report.accumulate == 1:
                tried.append(f"{cand.options()}: fits, peak {peak} expected")
                choice = found
                break
            tried.append(
                f"{cand.options()}: batch {batch_size} fits only in {report.accumulate} "
                f"micro-batches (peak {peak} expected): BatchNorm statistics and speed want "
                f"the whole batch at once"
            )
            fallback = fallback or found
    choice = choice or fallback
    if choice is None:
        raise BudgetError(
            f"no --auto candidate trains at batch {batch_size} with {codec} in "
            f"{format_size(budget_bytes)}; the smallest ({candidates[-1].options()}): {smallest}"
        )
    manifest = export(model, output, ort=ort, force=force, rank=choice.candidate.rank,
                      train=choice.candidate.train, bn=choice.candidate.bn,
                      **export_options)  # fmt: skip
    return choice, manifest
