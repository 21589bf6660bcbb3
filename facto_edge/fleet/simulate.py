"""`facto-edge fleet simulate`: a whole fleet on this machine, through Flower.

    from facto_edge.fleet import FleetConfig, simulate
    report = simulate(FleetConfig("model.facto", "digits:", clients=100), "run/")

backend "ray": Flower's Simulation Engine (flwr.simulation.run_simulation), each client a
ClientApp call in a Ray actor (one CPU each); "inprocess": the same apps served one
message after another in this process (grid.InProcessGrid), without Ray's start-up. Both
write RUN/fleet-state.npz every round, and at the end RUN/fleet.json (report.py) and
RUN/fleet.png. An existing run in RUN resumes from its last round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from facto_edge.fleet.config import FleetConfig
from facto_edge.fleet.report import FleetReport, build_report, write_report
from facto_edge.fleet.server import FleetCallback, Outcome, run_fleet, server_app

BACKENDS = ("ray", "inprocess")


def _ray_config(cfg: FleetConfig, cpus: int | None) -> dict:
    init = {"num_cpus": cpus} if cpus else {}
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init}


def simulate(
    cfg: FleetConfig,
    run_dir: str | Path,
    *,
    backend: str = "ray",
    callbacks: Sequence[FleetCallback] = (),
    client_app=None,
    cpus: int | None = None,
    plot: bool = True,
) -> FleetReport:
    """Simulate the fleet of `cfg` into `run_dir` and return its report. `client_app`
    replaces the fleet's ClientApp (e.g. one that wraps it); `cpus` caps Ray's CPUs
    (default: all)."""
    from facto_edge.fleet.client import client_app as make_client_app

    cfg.check()
    app = client_app or make_client_app(cfg)
    started = time.perf_counter()
    if backend == "inprocess":
        from facto_edge.fleet.grid import InProcessGrid

        state = run_fleet(InProcessGrid(app, cfg.clients), cfg, run_dir, callbacks)
    elif backend == "ray":
        state = _simulate_ray(cfg, Path(run_dir), app, callbacks, cpus)
    else:
        from facto_edge.errors import FactoEdgeError

        raise FactoEdgeError(f"--backend must be one of {BACKENDS}, found {backend!r}")
    report = build_report(cfg, state, backend, time.perf_counter() - started)
    write_report(Path(run_dir), report, plot=plot)
    return report


def _simulate_ray(cfg, run_dir: Path, app, callbacks, cpus):
    from flwr.simulation import run_simulation

    from facto_edge.errors import FactoEdgeError

    outcome = Outcome()
    server = server_app(cfg, run_dir, callbacks, outcome)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(
        server_app=server, client_app=app, num_supernodes=cfg.clients,
        backend_config=_ray_config(cfg, cpus),
    )  # fmt: skip
    if outcome.error is not None:
        raise outcome.error
    if outcome.state is None:
        raise FactoEdgeError(
            "the Flower simulation ended without finishing the server's rounds (see Flower's "
            f"log above); the rounds done are checkpointed in {run_dir}: run again to resume"
        )
    return outcome.state
