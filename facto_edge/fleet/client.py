"""The fleet's ClientApp: one device, one budgeted TrainingSession per round.

A "train" message carries the global trainable tensors (ArrayRecord "arrays") and the
round's config ("config": server-round, and proximal-mu under FedProx). The client builds
a TrainingSession of the shared model under its budget, writes the global tensors into
it, trains its part of the data (`data.client_data`: from the part the server side wrote,
parts.py) for `local_epochs` at cfg.client_lr(round), and replies with its trained
tensors (ArrayRecord "arrays", the same names: the trainable tensors, and the running
statistics of a --bn train export, `travelling`; both ways encoded for cfg.wire, and on a
lossy wire the reply holds their change from what came, wire.py) and "metrics": num-examples
(FedAvg's weight), train-loss, partition-id and its process's peak-rss. A "query" message
asks only for the client's partition-id, which the server samples by.

FedProx: after each optimizer step the client moves every tensor back towards the global
one by lr * mu * (w - w_global), the gradient step of the proximal term (mu/2)|w - w_g|^2
taken apart from the momentum of the loss's step.

A client that cannot train raises; Flower turns that into an error reply, which the
server counts as failed and leaves out of the round.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from facto_edge.data import iterate_batches
from facto_edge.errors import DataError, NumericalError
from facto_edge.fleet.config import FleetConfig
from facto_edge.fleet.data import client_data
from facto_edge.fleet.wire import decode, encode_up
from facto_edge.runtime.checkpoint import write_into
from facto_edge.runtime.rss import peak_rss_bytes

PARTITION_KEY = "partition-id"


def partition_of(context: Context, cfg: FleetConfig) -> int:
    """The client's partition: node_config "partition-id" (Flower's simulation sets it;
    a SuperNode is started with --node-config "partition-id=I")."""
    value = context.node_config.get(PARTITION_KEY)
    if not isinstance(value, int) or not 0 <= value < cfg.clients:
        raise DataError(
            f"node config partition-id must be an integer in [0, {cfg.clients}), found "
            f"{value!r}: start the SuperNode with --node-config 'partition-id=I'"
        )
    return value


def travelling(session) -> dict[str, np.ndarray]:
    """The live tensors of `session` that travel: its trainable tensors and, for a model
    exported with --bn train, the running statistics its BatchNorms update."""
    return session.parameters() | session.buffers()


def local_train(
    cfg: FleetConfig, partition: int, global_tensors: dict[str, np.ndarray], server_round: int,
    proximal_mu: float = 0.0,
) -> tuple[dict[str, np.ndarray], dict[str, float | int]]:  # fmt: skip
    """Train client `partition` from `global_tensors` for cfg.local_epochs: (trained
    trainable tensors by name, metrics). Batch order and codec rounding derive from
    (cfg.seed, partition, server_round), so a round replayed gives the same update."""
    from facto_edge.runtime import TrainingSession

    seed = cfg.seed * cfg.clients + partition
    ds = client_data(cfg, partition)
    with TrainingSession(
        cfg.model, batch_size=cfg.batch_size, lr=cfg.client_lr(server_round),
        momentum=cfg.momentum, codec=cfg.codec, seed=seed, threads=cfg.threads,
        budget=cfg.budget,
    ) as session:  # fmt: skip
        params, state = session.parameters(), travelling(session)
        for name, live in state.items():
            write_into(live, global_tensors[name])
        losses = []
        for e in range(cfg.local_epochs):
            epoch = (server_round - 1) * cfg.local_epochs + e
            for x, y in iterate_batches(ds, cfg.batch_size, shuffle=True, seed=seed, epoch=epoch):
                losses.append(session.train_step(x, y) * len(y))
                if proximal_mu:
                    for name, live in params.items():
                        live -= session.lr * proximal_mu * (live - global_tensors[name])
        loss = sum(losses) / (len(ds) * cfg.local_epochs)
        if not math.isfinite(loss):
            raise NumericalError(f"client {partition} diverged: mean loss {loss}; lower --lr")
        trained = {k: np.array(v) for k, v in state.items()}
    metrics = {
        "num-examples": len(ds), "train-loss": float(loss), PARTITION_KEY: partition,
        "peak-rss": peak_rss_bytes(),
    }  # fmt: skip
    return trained, metrics


def train_reply(message: Message, cfg: FleetConfig, partition: int) -> RecordDict:
    """The content of the reply to a "train" message: both ways, the tensors are encoded
    for cfg.wire (wire.py; a lossy wire sends back the change from what came)."""
    config = message.content["config"]
    record = message.content["arrays"]
    tensors = decode(record, {k: tuple(a.shape) for k, a in record.items()}, cfg.wire)
    mu = float(config.get("proximal-mu", 0.0))
    trained, metrics = local_train(cfg, partition, tensors, int(config["server-round"]), mu)
    reply = encode_up(trained, tensors, cfg.wire)
    return RecordDict({"arrays": reply, "metrics": MetricRecord(metrics)})


def client_app(config: FleetConfig | None = None) -> ClientApp:
    """The fleet's ClientApp; without `config` it reads the run config (deployment),
    and the node config's "parts" (where the device holds its part) if it has one."""
    app = ClientApp()

    def cfg_of(context: Context) -> FleetConfig:
        if config is not None:
            return config
        cfg = FleetConfig.from_run_config(dict(context.run_config))
        parts = context.node_config.get("parts")  # the device's own copy of its part
        return replace(cfg, parts=str(parts)) if parts else cfg

    @app.train()
    def train(message: Message, context: Context) -> Message:
        cfg = cfg_of(context)
        return Message(train_reply(message, cfg, partition_of(context, cfg)), reply_to=message)

    @app.query()
    def query(message: Message, context: Context) -> Message:
        partition = partition_of(context, cfg_of(context))
        content = RecordDict({"metrics": MetricRecord({PARTITION_KEY: partition})})
        return Message(content, reply_to=message)

    return app
