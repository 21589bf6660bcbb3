"""The options of a fleet run, one dataclass shared by the server and every client.

In a simulation both apps receive the same `FleetConfig` object; in a deployment
(SuperLink, SuperNodes) the server's config travels to the apps as Flower's run config
(`to_run_config` / `from_run_config`: flat str, int, float and bool values).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from facto_edge.errors import FactoEdgeError
from facto_edge.runtime.budget import parse_size
from facto_edge.runtime.codec_names import CODEC_NAMES

STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedprox")
SERVER_LR = {"fedavgm": 1.0, "fedadam": 0.1}  # what server_lr 0 stands for
WIRE_NAMES = ("fp32", "fp16", "q8")  # wire.WIRES, named without importing flwr


@dataclass(frozen=True)
class FleetConfig:
    """What defines a fleet run; a resumed run must repeat it (`rounds` may grow). The
    defaults are the best of the sweep in docs/fleet.md (100 clients, Dirichlet 0.5).

    `model`: the exported *.facto directory every node holds; `data`: the data every
    client partitions (client i trains part i of `clients`); `partition`: "iid" or
    "dirichlet:ALPHA"; `fraction`: share of the clients sampled per round (at least
    `min_clients`); `min_available`: clients that must be connected before a round starts;
    `budget`: each client's peak memory; `local_epochs`, `batch_size`, `lr`, `momentum`,
    `codec`: each client's TrainingSession and loop, its learning rate in round r being
    `lr * lr_decay ** (r - 1)`; `wire`: how the travelling tensors are encoded, both
    ways (wire.py: "fp32", "fp16" or "q8"); `strategy`: "fedavg", "fedavgm" (server learning
    rate `server_lr`, server momentum `server_momentum`), "fedadam" (server learning rate
    `server_lr`) or "fedprox" (proximal weight `proximal_mu`); `server_lr` 0 stands for the
    strategy's own default (SERVER_LR: FedAvgM 1.0, FedAdam 0.1);
    `seed`: sampling, partitions and batch order; `timeout`: seconds a round waits for
    replies; `threads`: each client session's threads; `parts`: a directory of the
    clients' parts written by the server side (parts.py; empty: each client opens `data`
    and partitions it itself).
    """

    model: str
    data: str
    clients: int = 100
    rounds: int = 20
    fraction: float = 0.5
    min_clients: int = 2
    min_available: int = 2
    partition: str = "dirichlet:0.5"
    budget: str = "256MB"
    local_epochs: int = 10
    batch_size: int = 8
    lr: float = 0.05
    lr_decay: float = 0.95
    momentum: float = 0.9
    codec: str = "q2"
    wire: str = "fp16"
    strategy: str = "fedavgm"
    server_lr: float = 0.0
    server_momentum: float = 0.5
    proximal_mu: float = 0.01
    seed: int = 0
    timeout: float = 600.0
    threads: int = 1
    parts: str = ""

    def check(self) -> FleetConfig:
        """Raise FactoEdgeError naming the first option that makes no run; self if fine."""
        _require(self.clients >= 1, "--clients", "a positive integer", self.clients)
        _require(self.rounds >= 1, "--rounds", "a positive integer", self.rounds)
        _require(0 < self.fraction <= 1, "--fraction", "a share in (0, 1]", self.fraction)
        _require(
            1 <= self.min_clients <= self.clients,
            "--min-clients",
            f"an integer in [1, {self.clients}] (the clients)",
            self.min_clients,
        )
        _require(
            1 <= self.min_available <= self.clients,
            "--min-available",
            f"an integer in [1, {self.clients}] (the clients)",
            self.min_available,
        )
        _require(self.local_epochs >= 1, "--local-epochs", "a positive integer", self.local_epochs)
        _require(self.batch_size >= 1, "--batch-size", "a positive integer", self.batch_size)
        ok = math.isfinite(self.lr) and self.lr > 0
        _require(ok, "--lr", "a finite number > 0", self.lr)
        _require(0 < self.lr_decay <= 1, "--lr-decay", "a factor in (0, 1]", self.lr_decay)
        ok = 0 <= self.server_momentum < 1
        _require(ok, "--server-momentum", "a factor in [0, 1)", self.server_momentum)
        ok = math.isfinite(self.server_lr) and self.server_lr >= 0
        _require(ok, "--server-lr", "a finite number >= 0 (0: the default)", self.server_lr)
        _require(self.codec in CODEC_NAMES, "--codec", f"one of {CODEC_NAMES}", self.codec)
        _require(self.wire in WIRE_NAMES, "--wire", f"one of {WIRE_NAMES}", self.wire)
        _require(self.strategy in STRATEGIES, "--strategy", f"one of {STRATEGIES}", self.strategy)
        _require(self.seed >= 0, "--seed", "an integer >= 0", self.seed)
        _require(self.threads >= 1, "threads", "a positive integer", self.threads)
        parse_size(self.budget)
        from facto_edge.fleet.partition import parse_partition

        parse_partition(self.partition)
        return self

    def client_lr(self, server_round: int) -> float:
        """The clients' learning rate in `server_round` (1-based)."""
        return self.lr * self.lr_decay ** (server_round - 1)

    @property
    def server_step(self) -> float:
        """The server learning rate of FedAvgM or FedAdam: server_lr, or for 0 the
        strategy's default."""
        return self.server_lr or SERVER_LR.get(self.strategy, 1.0)

    @property
    def sampled(self) -> int:
        """Clients sampled per round."""
        return max(self.min_clients, int(round(self.fraction * self.clients)))

    def to_run_config(self) -> dict[str, str | int | float | bool]:
        """The config as Flower's run config (keys with dashes)."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    @classmethod
    def from_run_config(cls, run_config: dict) -> FleetConfig:
        """The config of a run config written by `to_run_config` (or a Flower App's
        pyproject.toml); FactoEdgeError naming a missing key."""
        values = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in run_config:
                values[f.name] = run_config[key]
        for required in ("model", "data"):
            if required not in values:
                raise FactoEdgeError(
                    f"the Flower run config has no {required!r}: expected the keys of "
                    "FleetConfig.to_run_config(); start the run with `facto-edge fleet server`"
                )
        return cls(**values)

    def resume_changes(self, saved: dict) -> list[str]:
        """The options that differ from a saved run's (all but `rounds`, `timeout`,
        `threads` and `parts`)."""
        now = asdict(self)
        free = {"rounds", "timeout", "threads", "parts"}
        return [k for k in now if k not in free and saved.get(k) != now[k]]


def _require(ok: bool, what: str, expected: str, found: object) -> None:
    if not ok:
        raise FactoEdgeError(f"{what} must be {expected}, found {found!r}")
