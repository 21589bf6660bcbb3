"""Fleet fine-tuning on Flower (flwr, the optional extra `facto-edge[fleet]`): many
devices, one exported model, only the trainable tensors on the wire.

    from facto_edge.fleet import FleetConfig, simulate
    report = simulate(FleetConfig("model.facto", "digits:", clients=100, rounds=20), "run/")

- client.py: the ClientApp (each client a TrainingSession under its budget);
- server.py: the ServerApp (sampling, update checks, aggregation by name, held-out
  evaluation, per-round checkpoint and resume) and strategy.py (FedAvg, FedAdam, FedProx);
- tensors.py: what travels (ArrayRecords of the trainable tensors) and the update checks;
- partition.py, data.py, parts.py: each client's part of the data (parts.py: written by the
  server side as one .npz per client); grid.py: an in-process Grid;
- simulate.py, report.py: `facto-edge fleet simulate`, fleet.json and fleet.png;
- deploy.py: `facto-edge fleet server` / `client` through Flower's SuperLink and SuperNodes.

This package imports flwr; nothing outside it does (the runtime stays numpy, numba, onnx).
"""

from facto_edge.fleet.config import FleetConfig


def __getattr__(name: str):
    if name == "simulate":
        from facto_edge.fleet.simulate import simulate

        return simulate
    raise AttributeError(name)


__all__ = ["FleetConfig", "simulate"]
