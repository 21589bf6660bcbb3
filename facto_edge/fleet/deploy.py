"""`facto-edge fleet server` and `facto-edge fleet client`: the fleet's apps as real
processes through Flower's own deployment runtime (flwr 1.42), not a protocol of ours.

    serve(cfg, "run/", port=8000)                         # the server machine
    join("SERVER:8000", partition=7, clients=100)          # each device

`serve` writes a Flower App for the run (RUN/app/pyproject.toml: the components
`facto_edge.fleet.apps:serverapp` and `:clientapp`, and the FleetConfig as its run config),
the clients' parts of the data (RUN/parts/, parts.py) and a Flower CLI home
(RUN/flwr-home/config.toml: one SuperLink connection, "fleet"). It starts
`flower-superlink`, submits the app with `flwr run RUN/app fleet --stream`, waits for the
run to end, stops the SuperLink and writes RUN/fleet.json and fleet.png from the
checkpoint, as `fleet simulate` does. A server restarted on the same RUN resumes from the
last round checkpointed.

`join` runs `flower-supernode` until it is stopped: its node config gives the device's
partition-id and, where the device holds its part elsewhere than the run config says,
`parts` (a directory with its part-NNNNN.npz). Flower runs the ClientApp of each run in a
`flwr-clientapp` process that the SuperNode's SuperExec spawns.

Only insecure (plain HTTP) connections are wired, for loopback or a trusted network;
for TLS, start Flower's processes by hand with its certificate options (docs/fleet.md).
Runtime installation of app dependencies (`uv sync`) is off: every node runs the
facto-edge it has installed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from facto_edge.errors import FactoEdgeError
from facto_edge.fleet.config import FleetConfig
from facto_edge.fleet.parts import write_parts
from facto_edge.fleet.report import FleetReport, build_report, write_report
from facto_edge.fleet.state import load_state

CONNECTION = "fleet"  # the SuperLink connection's name in RUN/flwr-home/config.toml
SUPERNODE_PORT = 9094  # Flower's default port of a SuperNode's own runtime API


def _toml(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def write_app(cfg: FleetConfig, run_dir: Path) -> Path:
    """RUN/app: the Flower App of this run (pyproject.toml only; the code is facto-edge's)."""
    app = run_dir / "app"
    app.mkdir(parents=True, exist_ok=True)
    config = cfg.to_run_config() | {"run-dir": str(run_dir)}
    lines = [
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n',
        '[project]\nname = "facto-fleet"\nversion = "1.0.0"',
        'description = "facto-edge fleet fine-tuning"\nlicense = "Apache-2.0"',
        "dependencies = []\n",
        '[tool.hatch.build.targets.wheel]\npackages = ["."]\n',
        '[tool.flwr.app]\npublisher = "facto-edge"\n',
        "[tool.flwr.app.components]",
        'serverapp = "facto_edge.fleet.apps:serverapp"',
        'clientapp = "facto_edge.fleet.apps:clientapp"\n',
        "[tool.flwr.app.config]",
        *(f"{k} = {_toml(v)}" for k, v in config.items()),
    ]
    (app / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return app


def write_flower_home(run_dir: Path, address: str) -> Path:
    """RUN/flwr-home: the Flower CLI's config, with one insecure SuperLink connection."""
    home = run_dir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{address}"\ninsecure = true\n'
    )
    return home


def _env(home: Path | None = None) -> dict[str, str]:
    """The environment of Flower's processes: this Python's scripts first on PATH (the
    SuperLink and SuperNode spawn flower-superexec and flwr-*app by name)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if home is not None:
        env["FLWR_HOME"] = str(home)
    return env


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, log: Path, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FactoEdgeError(
                f"flower-superlink exited with code {proc.returncode} before listening on "
                f"{host}:{port}: {_tail(log)}"
            )
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise FactoEdgeError(f"flower-superlink did not listen on {host}:{port} in {timeout:.0f} s")


def _tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(text[-lines:]) or "no output"


def serve(
    cfg: FleetConfig,
    run_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_line: Callable[[str], None] = lambda line: None,
    startup_timeout: float = 60.0,
) -> FleetReport:
    """Run (or resume) the fleet of `cfg` on a SuperLink at host:port until its rounds are
    done; the report, also written to RUN/fleet.json and fleet.png. `on_line` receives
    each line Flower streams from the run (the ServerApp's log)."""
    cfg.check()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not cfg.parts:
        cfg = replace(cfg, parts=str(write_parts(cfg, run_dir / "parts")))
    app = write_app(cfg, run_dir)
    home = write_flower_home(run_dir, f"{host}:{port}")
    log = run_dir / "superlink.log"
    with log.open("w") as out:
        link = subprocess.Popen(
            [_script("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
             "--host", host, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=_env(home),
        )  # fmt: skip
    try:
        _wait_for_port(host, port, link, log, startup_timeout)
        run = subprocess.Popen(
            [_script("flwr"), "run", str(app), CONNECTION, "--stream"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(home),
        )  # fmt: skip
        lines = []
        for line in run.stdout:
            lines.append(line.rstrip())
            on_line(line.rstrip())
        run.wait()
    finally:
        link.terminate()
        link.wait(timeout=30)
    state = load_state(run_dir)
    if state is None or state.round < cfg.rounds:
        done = 0 if state is None else state.round
        raise FactoEdgeError(
            f"the Flower run ended after {done} of {cfg.rounds} rounds (flwr run exit code "
            f"{run.returncode}): {' | '.join(lines[-3:]) or 'no output'}; the rounds done are "
            f"checkpointed in {run_dir}: start the server again to resume"
        )
    peak = max((r.get("server_peak_rss") or 0 for r in state.history), default=0)
    report = build_report(cfg, state, "deployment", time.perf_counter() - started, peak)
    write_report(run_dir, report)
    return report


def node_config(partition: int, clients: int, parts: str | None) -> str:
    """The SuperNode's --node-config of client `partition` of `clients`."""
    text = f"partition-id={partition} num-partitions={clients}"
    return text + (f" parts={json.dumps(str(Path(parts).resolve()))}" if parts else "")


def join(
    superlink: str, partition: int, clients: int, *, parts: str | None = None,
    port: int = SUPERNODE_PORT,
) -> int:  # fmt: skip
    """Run a SuperNode for client `partition` against the SuperLink at `superlink`
    (HOST:PORT) until it is stopped (SIGTERM or Ctrl-C here stop it too); its exit code."""
    if not 0 <= partition < clients:
        raise FactoEdgeError(f"--partition must be in [0, {clients}), found {partition}")
    config = node_config(partition, clients, parts)
    cmd = [_script("flower-supernode"), "--insecure", "--superlink", superlink,
           "--port", str(port), "--node-config", config]  # fmt: skip
    node = subprocess.Popen(cmd, env=_env())
    # a SIGTERM to this process (a service manager stopping the client) stops the SuperNode
    previous = signal.signal(signal.SIGTERM, lambda *_: node.terminate())
    try:
        return node.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if node.poll() is None:
            node.terminate()
            node.wait(timeout=30)
