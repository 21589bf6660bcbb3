"""facto-edge: the runtime's TrainingSession on the export, with the codec asked for.
Its saved-activation bytes are the session's own account (`memory_report()`)."""

from __future__ import annotations

import inspect

from facto_edge.bench.systems import Trainer, WorkerArgs


def build(args: WorkerArgs) -> Trainer:
    """A TrainingSession at `args.batch`; the budget is passed when the session takes one."""
    from facto_edge.runtime import TrainingSession  # before numba: runtime/preload.py

    options = dict(batch_size=args.batch, optimizer="sgd", lr=args.lr,
                   momentum=args.momentum, codec=args.codec, seed=args.seed,
                   threads=args.threads)  # fmt: skip
    takes_budget = "budget" in inspect.signature(TrainingSession).parameters
    if args.budget is not None and takes_budget:
        options["budget"] = args.budget
    session = TrainingSession(args.model_dir, **options)

    def counted_step(x, y) -> tuple[float, int]:
        return session.train_step(x, y), session.memory_report()["saved_bytes"]

    def info() -> dict:
        return {
            "threads": session.threads,
            "optimizer": f"SGD momentum {args.momentum}",
            "budget_applied": "budget" in options,
            "memory_report": session.memory_report(),
        }

    return Trainer(session.train_step, counted_step, info)
