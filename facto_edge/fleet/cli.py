"""`facto-edge fleet ...`: simulate a fleet on this machine, or run its server and clients
as real processes through Flower's deployment (deploy.py). Loaded by facto_edge/cli.py
only when the `fleet` command runs, so flwr is imported by nothing else."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from facto_edge.cli_errors import FactoGroup
from facto_edge.fleet.config import WIRE_NAMES
from facto_edge.runtime.codec_names import CODEC_NAMES


def _fleet_options(fn):
    """The options a FleetConfig takes, shared by `simulate` and `server`."""
    options = [
        click.option("--data", required=True, help="Data the clients partition ('digits:', ...)."),
        click.option("--clients", default=100, show_default=True, help="Clients (partitions)."),
        click.option("--rounds", default=20, show_default=True, help="Rounds in all."),
        click.option("--fraction", default=0.5, show_default=True, help="Share sampled per round."),
        click.option("--min-clients", default=2, show_default=True, help="Fewest sampled a round."),
        click.option("--min-available", default=2, show_default=True,
                     help="Clients that must be connected before a round."),
        click.option("--partition", default="dirichlet:0.5", show_default=True,
                     help="iid or dirichlet:ALPHA (non-IID by label)."),
        click.option("--budget", default="256MB", show_default=True, help="Peak RSS per client."),
        click.option("--local-epochs", default=10, show_default=True),
        click.option("--batch-size", default=8, show_default=True),
        click.option("--lr", default=0.05, show_default=True, help="Clients' learning rate."),
        click.option("--lr-decay", default=0.95, show_default=True,
                     help="Clients' lr in round r: lr x lr-decay^(r-1)."),
        click.option("--momentum", default=0.9, show_default=True),
        click.option("--codec", default="q2", show_default=True,
                     type=click.Choice(CODEC_NAMES)),
        click.option("--wire", default="fp16", show_default=True, type=click.Choice(WIRE_NAMES),
                     help="Encoding of the tensors on the wire, both ways."),
        click.option("--strategy", default="fedavgm", show_default=True,
                     type=click.Choice(["fedavg", "fedavgm", "fedadam", "fedprox"])),
        click.option("--server-lr", default=0.0, show_default=True,
                     help="FedAvgM's server learning rate, FedAdam's eta (0: 1.0, 0.1)."),
        click.option("--server-momentum", default=0.5, show_default=True,
                     help="FedAvgM's server momentum."),
        click.option("--proximal-mu", default=0.01, show_default=True, help="FedProx's mu."),
        click.option("--seed", default=0, show_default=True),
        click.option("--timeout", default=600.0, show_default=True,
                     help="Seconds a round waits for replies."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def _config(model: str, options: dict):
    from facto_edge.fleet.config import FleetConfig

    return FleetConfig(model=str(Path(model).resolve()), **options).check()


class _Progress:
    """A tqdm bar over the rounds, with warnings above it."""

    def __init__(self) -> None:
        self.bar = None

    def on_start(self, cfg, state) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=cfg.rounds, initial=state.round, unit="round", desc="fleet")
        self.bar.set_postfix_str(f"acc {100 * state.history[-1]['accuracy']:.1f}%")

    def on_round_end(self, record: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix_str(
            f"acc {100 * record['accuracy']:.1f}% ok {record['finished']}/{record['sampled']}"
        )

    def on_warning(self, message: str) -> None:
        (self.bar.write if self.bar else click.echo)(f"warning: {message}", file=None)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _callbacks():
    from facto_edge.fleet.server import FleetCallback

    class Bar(_Progress, FleetCallback):
        pass

    return Bar()


@click.group(cls=FactoGroup)
def fleet() -> None:
    """Fine-tune one model on a fleet of devices with Flower (needs facto-edge[fleet])."""
    try:
        import flwr  # noqa: F401
    except ImportError as e:
        raise click.ClickException(
            "the fleet commands need Flower: pip install 'facto-edge[fleet]' (Python >= 3.11)"
        ) from e
    logging.getLogger("flwr").setLevel(logging.ERROR)


def format_summary(report, baseline: dict | None) -> str:
    """The closing lines of `fleet simulate`."""
    first, last = report.rounds[0], report.final
    lines = [
        f"global accuracy {100 * first['accuracy']:.1f}% -> {100 * last['accuracy']:.1f}% "
        f"after {last['round']} rounds (held-out loss {last['loss']:.3f})",
        f"bytes per client per round: {report.trainable_bytes:,} each way = "
        f"{report.share('dense'):.2%} of the dense model ({report.full_model_bytes['dense']:,}), "
        f"{report.share('factorized'):.2%} of the factorized one "
        f"({report.full_model_bytes['factorized']:,})",
        f"failed {sum(r.get('failed', 0) for r in report.rounds)}, rejected "
        f"{sum(r.get('rejected', 0) for r in report.rounds)} client updates in all",
        f"wall {report.wall_seconds:.0f} s; peak RSS: server {report.server_peak_rss / 2**20:.0f} "
        f"MiB, largest client {(report.client_peak_rss or 0) / 2**20:.0f} MiB",
    ]
    if baseline:
        lines.append(
            f"centralized on the pooled data, {baseline['epochs']} epochs: "
            f"{100 * baseline['accuracy']:.1f}% (fleet - centralized: "
            f"{100 * (last['accuracy'] - baseline['accuracy']):+.1f} points)"
        )
    return "\n".join(lines)


@fleet.command()
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@_fleet_options
@click.option("-o", "--output", required=True, type=click.Path(), help="The run directory.")
@click.option("--backend", default="ray", show_default=True,
              type=click.Choice(["ray", "inprocess"]),
              help="Flower's Ray simulation, or every client in this process.")  # fmt: skip
@click.option("--cpus", default=None, type=int, help="CPUs Ray may use (default: all).")
@click.option("--baseline", is_flag=True,
              help="Also train centrally on the pooled data (equivalent epochs).")  # fmt: skip
def simulate(model, output, backend, cpus, baseline, **options) -> None:
    """Simulate a fleet fine-tuning MODEL (*.facto) on this machine; writes
    OUTPUT/fleet.json and fleet.png, and resumes a run already in OUTPUT."""
    from facto_edge.fleet.simulate import simulate as run

    cfg = _config(model, options)
    bar = _callbacks()
    try:
        report = run(cfg, output, backend=backend, callbacks=[bar], cpus=cpus, baseline=baseline)
    finally:
        bar.close()
    click.echo(format_summary(report, report.centralized))
    click.echo(f"wrote {output}/fleet.json, fleet.png")


def _require_insecure(insecure: bool) -> None:
    if not insecure:
        raise click.UsageError(
            "pass --insecure: only plain-HTTP connections are wired (loopback or a trusted "
            "network); for TLS start flower-superlink and flower-supernode with their "
            "certificate options (docs/fleet.md)"
        )


@fleet.command()
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@_fleet_options
@click.option("-o", "--output", required=True, type=click.Path(), help="The run directory.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address the SuperLink listens on (0.0.0.0: every interface).",
)
@click.option("--port", default=8000, show_default=True, help="The SuperLink's port.")
@click.option("--insecure", is_flag=True,
              help="Plain HTTP (required: TLS is not wired).")  # fmt: skip
def server(model, output, host, port, insecure, **options) -> None:
    """Run the fleet's server through Flower's deployment: a SuperLink on HOST:PORT and
    the run submitted to it; waits for `facto-edge fleet client`s (SuperNodes), writes
    OUTPUT/fleet.json and fleet.png, and resumes a run already in OUTPUT."""
    from facto_edge.fleet.deploy import serve

    _require_insecure(insecure)
    cfg = _config(model, options)
    echo = lambda line: click.echo(line) if "fleet:" in line or "ERROR" in line else None  # noqa: E731
    report = serve(cfg, output, host=host, port=port, on_line=echo)
    click.echo(format_summary(report, None))
    click.echo(f"wrote {output}/fleet.json, fleet.png")


@fleet.command()
@click.option("--superlink", required=True, help="The server's HOST:PORT.")
@click.option("--partition", required=True, type=int, help="This device's client index.")
@click.option("--clients", required=True, type=int, help="Clients in the fleet.")
@click.option(
    "--parts",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Directory holding this device's part-NNNNN.npz (default: the run's).",
)
@click.option(
    "--port",
    default=9094,
    show_default=True,
    help="This SuperNode's own port (one per SuperNode on a machine).",
)
@click.option("--insecure", is_flag=True,
              help="Plain HTTP (required: TLS is not wired).")  # fmt: skip
def client(superlink, partition, clients, parts, port, insecure) -> None:
    """Run one device of the fleet: a Flower SuperNode connected to SUPERLINK that trains
    client PARTITION's part under the run's budget, until stopped."""
    from facto_edge.fleet.deploy import join

    _require_insecure(insecure)
    code = join(superlink, partition, clients, parts=parts, port=port)
    if code:
        raise click.ClickException(f"flower-supernode exited with code {code}")
