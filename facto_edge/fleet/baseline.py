"""The centralized reference of a fleet run: the same model and client options, trained on
the pooled data of all clients in one TrainingSession, evaluated on the same held-out set.

`equivalent_epochs`: a fleet round trains about cfg.fraction of the data for
cfg.local_epochs, so R rounds see the data about R * fraction * local_epochs times; the
baseline trains that many epochs (rounded, at least 1).
"""

from __future__ import annotations

import time

from facto_edge.data import iterate_batches
from facto_edge.fleet.config import FleetConfig
from facto_edge.fleet.data import held_out, pooled


def equivalent_epochs(cfg: FleetConfig) -> int:
    return max(1, round(cfg.rounds * cfg.fraction * cfg.local_epochs))


def centralized(cfg: FleetConfig, epochs: int | None = None) -> dict:
    """Train on the pooled data for `epochs` (default: equivalent_epochs) with the
    clients' options (batch size, lr, momentum, codec, budget); held-out metrics."""
    from facto_edge.runtime import TrainingSession

    epochs = epochs or equivalent_epochs(cfg)
    ds = pooled(cfg)
    started = time.perf_counter()
    with TrainingSession(
        cfg.model, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
        codec=cfg.codec, seed=cfg.seed, threads=cfg.threads, budget=cfg.budget,
    ) as session:  # fmt: skip
        for epoch in range(epochs):
            for x, y in iterate_batches(
                ds, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch
            ):
                session.train_step(x, y)
        metrics = session.evaluate(*held_out(cfg))
    return metrics | {"epochs": epochs, "train_samples": len(ds),
                      "seconds": time.perf_counter() - started}  # fmt: skip
