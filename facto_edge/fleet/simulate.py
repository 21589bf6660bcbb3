"""`facto-edge fleet simulate`: a whole fleet on this machine, through Flower.

    from facto_edge.fleet import FleetConfig, simulate
    report = simulate(FleetConfig("model.facto", "digits:", clients=100), "run/")

backend "ray": Flower's Simulation Engine (flwr.simulation.run_simulation), each client a
ClientApp call in a Ray actor (one CPU each); "inprocess": the same apps served one
message after another in this process (grid.InProcessGrid), without Ray's start-up. Both
read their parts of the data from RUN/parts/ (parts.py: written here first, so that
a client process needs neither the data source nor scikit-learn), prepare the kernels
the clients' budgeted sessions load (runtime/prepare.py: compiled in child processes,
once per machine), write
RUN/fleet-state.npz every round, and at the end RUN/fleet.json (report.py) and
RUN/fleet.png. An existing run in RUN resumes from its last round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from facto_edge.child import run_in_child
from facto_edge.errors import FactoEdgeError
from facto_edge.fleet.config import FleetConfig
from facto_edge.fleet.parts import write_parts
from facto_edge.fleet.report import FleetReport, build_report, write_report
from facto_edge.fleet.server import FleetCallback, Outcome, run_fleet, server_app
from facto_edge.fleet.state import load_state
from facto_edge.runtime.rss import peak_rss_bytes

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
    baseline: bool = False,
) -> FleetReport:
    """Simulate the fleet of `cfg` into `run_dir` and return its report. `client_app`
    replaces the fleet's ClientApp (e.g. one that wraps it; in-process only); `cpus` caps Ray's CPUs
    (default: all). `baseline` also trains the centralized reference (baseline.py)
    and adds it to the report."""
    cfg.check()
    started = time.perf_counter()
    if not cfg.parts:
        cfg = replace(cfg, parts=str(write_parts(cfg, Path(run_dir) / "parts")))
    _prepare_kernels(cfg)
    if backend == "inprocess":
        from facto_edge.fleet.client import client_app as make_client_app
        from facto_edge.fleet.grid import InProcessGrid

        app = client_app or make_client_app(cfg)
        state = run_fleet(InProcessGrid(app, cfg.clients), cfg, run_dir, callbacks)
        driver_peak = peak_rss_bytes()
    elif backend == "ray":
        if client_app is not None:
            raise FactoEdgeError("a custom client_app runs only with backend 'inprocess'")
        state, driver_peak = _simulate_ray(cfg, Path(run_dir), callbacks, cpus)
    else:
        raise FactoEdgeError(f"--backend must be one of {BACKENDS}, found {backend!r}")
    report = build_report(cfg, state, backend, time.perf_counter() - started, driver_peak)
    if baseline:
        from facto_edge.fleet.baseline import centralized

        report.centralized = centralized(cfg)
    write_report(Path(run_dir), report, plot=plot)
    return report


def _prepare_kernels(cfg: FleetConfig) -> None:
    """Compile what the clients' budgeted sessions need, in child processes, before any
    client starts: a budgeted session loads its kernels from numba's cache and compiles
    none (runtime/prepare.py), and every simulated client shares this machine's cache.
    Nothing to do on a machine already prepared."""
    from facto_edge.runtime.prepare import prepare_kernels

    prepare_kernels(cfg.model, (cfg.codec,), "sgd")  # the clients' optimizer (client.py)


class _Forward(FleetCallback):
    """In the simulation's process: sends every callback event to the caller."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def on_start(self, cfg, state) -> None:
        self.queue.put(("on_start", cfg, state))

    def on_round_end(self, record: dict) -> None:
        self.queue.put(("on_round_end", record))

    def on_warning(self, message: str) -> None:
        self.queue.put(("on_warning", message))


def _ray_process(queue, cfg: FleetConfig, run_dir: str, cpus: int | None) -> None:
    """The simulation's process: Flower's run_simulation, the server loop in its thread."""
    from flwr.simulation import run_simulation

    from facto_edge.fleet.client import client_app
    from facto_edge.runtime.rss import peak_rss_bytes

    outcome = Outcome()
    server = server_app(cfg, run_dir, [_Forward(queue)], outcome)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    try:
        run_simulation(
            server_app=server, client_app=client_app(cfg), num_supernodes=cfg.clients,
            backend_config=_ray_config(cfg, cpus),
        )  # fmt: skip
    except BaseException as e:  # noqa: BLE001 - relayed to the caller, with its text
        outcome.error = outcome.error or e
    if outcome.error is None and outcome.state is None:
        outcome.error = FactoEdgeError(
            "the Flower simulation ended without finishing the server's rounds; the rounds "
            f"done are checkpointed in {run_dir}: run again to resume"
        )
    if outcome.error is not None:
        e = outcome.error
        relayed = e if isinstance(e, FactoEdgeError | KeyboardInterrupt) else None
        queue.put(("error", relayed or RuntimeError(f"{type(e).__name__}: {e}")))
    else:
        queue.put(("done", peak_rss_bytes()))


def _simulate_ray(cfg: FleetConfig, run_dir: Path, callbacks, cpus: int | None):
    """Run the Ray simulation in a fresh process (spawned): its server thread then is the
    only caller of the runtime's parallel kernels there, which numba's workqueue threading
    layer requires (a process whose main thread ran them hangs when another thread does),
    and Ray's start-up and memory stay out of the caller. Returns (state, driver peak)."""
    message = run_in_child(_ray_process, (cfg, str(run_dir), cpus), "simulation process", callbacks)
    return load_state(run_dir), message[1]
