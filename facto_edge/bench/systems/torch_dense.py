"""PyTorch dense training: the zoo model before factorization, every weight trainable and
BatchNorm in train mode (batch statistics) — what users do today."""

from __future__ import annotations

from facto_edge.bench.systems import Trainer, WorkerArgs


def build(args: WorkerArgs) -> Trainer:
    """The zoo model `args.model` built from the seed the export used, in train mode."""
    from facto_edge import zoo
    from facto_edge.bench.systems.torch_common import torch_trainer

    manifest = args.manifest
    model = zoo.build(
        args.model, seed=args.seed, num_classes=manifest["num_classes"],
        in_channels=manifest["input_shape"][0],
    ).train()  # fmt: skip
    params = list(model.parameters())
    return torch_trainer(model, params, [*params, *model.buffers()], args)
