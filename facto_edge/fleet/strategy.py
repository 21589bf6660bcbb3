"""The server's aggregation: Flower's FedAvg, FedAdam or FedProx over the trainable
tensors, and the strategy state a checkpoint must keep.

Sampling is the server's own (deterministic per round, see server.py); the strategy sees
only the sampled nodes (grid.SampledGrid) and is built to take all of them, so its
configure_train addresses exactly those and its aggregate_train averages what they sent.
FedAdam's moments (m_t, v_t) are state across rounds: `strategy_state` and
`restore_strategy` carry them through the checkpoint.
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from facto_edge.fleet.config import FleetConfig

_ALL = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 1,
        "min_available_nodes": 1}  # fmt: skip


def make_strategy(cfg: FleetConfig) -> FedAvg:
    """The Flower strategy of `cfg.strategy`."""
    if cfg.strategy == "fedadam":
        return FedAdam(**_ALL, eta=cfg.server_lr, eta_l=cfg.lr)
    if cfg.strategy == "fedprox":
        return FedProx(**_ALL, proximal_mu=cfg.proximal_mu)
    return FedAvg(**_ALL)


def strategy_state(strategy: FedAvg) -> dict[str, np.ndarray]:
    """The arrays a strategy carries from round to round (FedAdam: "m/<name>", "v/<name>")."""
    out: dict[str, np.ndarray] = {}
    for key in ("m_t", "v_t"):
        for name, a in (getattr(strategy, key, None) or {}).items():
            out[f"{key[0]}/{name}"] = np.asarray(a)
    return out


def restore_strategy(strategy: FedAvg, saved: dict[str, np.ndarray]) -> None:
    """Give `strategy` the arrays `strategy_state` saved."""
    for key in ("m_t", "v_t"):
        prefix = f"{key[0]}/"
        arrays = {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
        if arrays:
            setattr(strategy, key, arrays)
