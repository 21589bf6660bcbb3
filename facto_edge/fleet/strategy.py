"""The server's aggregation: Flower's FedAvg, FedAvgM, FedAdam or FedProx over the
trainable tensors, and the strategy state a checkpoint must keep.

Sampling is the server's own (deterministic per round, see server.py); the strategy sees
only the sampled nodes (grid.SampledGrid) and is built to take all of them, so its
configure_train addresses exactly those and its aggregate_train averages what they sent.
FedAdam's moments (m_t, v_t) and FedAvgM's momentum vector are state across rounds:
`strategy_state` and `restore_strategy` carry them through the checkpoint. FedAvgM also
keeps its own copy of the global arrays (current_arrays); `start_round` hands it the
server's, so a refused aggregate or a resumed run cannot leave the two apart.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx

from facto_edge.fleet.config import FleetConfig

_ALL = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 1,
        "min_available_nodes": 1}  # fmt: skip


def make_strategy(cfg: FleetConfig) -> FedAvg:
    """The Flower strategy of `cfg.strategy`."""
    if cfg.strategy == "fedadam":
        return FedAdam(**_ALL, eta=cfg.server_step, eta_l=cfg.lr)
    if cfg.strategy == "fedavgm":
        return FedAvgM(**_ALL, server_learning_rate=cfg.server_step,
                       server_momentum=cfg.server_momentum)  # fmt: skip
    if cfg.strategy == "fedprox":
        return FedProx(**_ALL, proximal_mu=cfg.proximal_mu)
    return FedAvg(**_ALL)


def start_round(strategy: FedAvg, arrays: ArrayRecord) -> None:
    """Before a round's configure_train: FedAvgM steps from the server's global arrays."""
    if isinstance(strategy, FedAvgM):
        strategy.current_arrays = arrays


def strategy_state(strategy: FedAvg) -> dict[str, np.ndarray]:
    """The arrays a strategy carries from round to round (FedAdam: "m/<name>", "v/<name>";
    FedAvgM: "b/<name>", its momentum vector, ordered as its arrays' names)."""
    out: dict[str, np.ndarray] = {}
    for key in ("m_t", "v_t"):
        for name, a in (getattr(strategy, key, None) or {}).items():
            out[f"{key[0]}/{name}"] = np.asarray(a)
    if isinstance(strategy, FedAvgM) and strategy.momentum_vector is not None:
        names = list(strategy.current_arrays.keys())
        for name, a in zip(names, strategy.momentum_vector, strict=True):
            out[f"b/{name}"] = np.asarray(a)
    return out


def restore_strategy(strategy: FedAvg, saved: dict[str, np.ndarray]) -> None:
    """Give `strategy` the arrays `strategy_state` saved."""
    for key in ("m_t", "v_t"):
        prefix = f"{key[0]}/"
        arrays = {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
        if arrays:
            setattr(strategy, key, arrays)
    momentum = {k[2:]: v for k, v in saved.items() if k.startswith("b/")}
    if isinstance(strategy, FedAvgM) and momentum:
        strategy.momentum_vector = [momentum[k] for k in sorted(momentum)]
