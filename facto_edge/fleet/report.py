"""RUN/fleet.json and RUN/fleet.png: what a fleet run did, round by round.

fleet.json holds the config, once the bytes a full-model exchange would take
(`full_model_bytes`: every initializer of the factorized model, and the original dense
model's weights), the bytes of the trainable tensors one way (`trainable_bytes`), and per
round (round 0 is the initial model): global `accuracy` and `loss` on the held-out set,
clients `sampled`, `finished` (merged), `failed` (error or no reply) and `rejected` (bad
update) with their reasons, `bytes_to_client` (the same for every sampled client) and
`bytes_from_client` per client, the mean `train_loss`, seconds, and peak memory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from facto_edge.fleet.config import FleetConfig
from facto_edge.fleet.state import FleetState
from facto_edge.fleet.tensors import full_model_bytes, record_bytes
from facto_edge.fleet.wire import encode
from facto_edge.runtime.checkpoint import write_text_atomic

REPORT_FILE, PLOT_FILE = "fleet.json", "fleet.png"


@dataclass
class FleetReport:
    config: dict
    backend: str
    rounds: list[dict]
    trainable: list[str]
    trainable_bytes: int  # one way, one client, one round, as encoded on the wire
    full_model_bytes: dict  # {"factorized": ..., "dense": ...}, one way
    wall_seconds: float  # of this invocation (a resumed run: the rounds it ran)
    server_peak_rss: int  # of the server's process (with Ray: the simulation's driver)
    client_peak_rss: int | None  # the largest any client reported
    centralized: dict | None = None  # baseline.centralized, when asked for

    @property
    def final(self) -> dict:
        return self.rounds[-1]

    def share(self, of: str = "dense") -> float:
        """Bytes per client per round (to and from) over a full-model exchange's."""
        return self.trainable_bytes / self.full_model_bytes[of]


def build_report(
    cfg: FleetConfig, state: FleetState, backend: str, seconds: float, server_peak: int
) -> FleetReport:
    """The report of a finished run; `server_peak`: the server process's peak RSS."""
    peaks = [r["client_peak_rss"] for r in state.history if r.get("client_peak_rss")]
    return FleetReport(
        config=asdict(cfg), backend=backend, rounds=state.history,
        trainable=sorted(state.tensors),
        trainable_bytes=record_bytes(encode(state.tensors, cfg.wire)),
        full_model_bytes=full_model_bytes(cfg.model), wall_seconds=seconds,
        server_peak_rss=server_peak, client_peak_rss=max(peaks, default=None),
    )  # fmt: skip


def write_report(run_dir: Path, report: FleetReport, plot: bool = True) -> Path:
    """Write RUN/fleet.json atomically, and RUN/fleet.png when `plot` (needs matplotlib)."""
    data = asdict(report)
    data["share_of_full_exchange"] = {k: report.share(k) for k in report.full_model_bytes}
    path = write_text_atomic(run_dir / REPORT_FILE, json.dumps(data, indent=2))
    if plot:
        plot_rounds(run_dir / PLOT_FILE, report.rounds, report.centralized)
    return path


def plot_rounds(path: Path, rounds: list[dict], centralized: dict | None = None) -> Path:
    """Global accuracy and loss per round, with the clients that failed or were rejected,
    and the centralized baseline's accuracy where there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["round"] for r in rounds]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(x, [100 * r["accuracy"] for r in rounds], marker="o", label="fleet")
    if centralized:
        label = f"centralized, {centralized['epochs']} epochs"
        ax1.axhline(100 * centralized["accuracy"], color="gray", linestyle="--", label=label)
        ax1.legend(loc="lower right")
    ax1.set(xlabel="round", ylabel="held-out accuracy (%)", title="global model")
    ax2.plot(x, [r["loss"] for r in rounds], marker="o", label="held-out loss")
    bad = [r.get("failed", 0) + r.get("rejected", 0) for r in rounds]
    if any(bad):
        ax3 = ax2.twinx()
        ax3.bar(x, bad, alpha=0.3, color="red", label="failed + rejected")
        ax3.set_ylabel("clients")
    ax2.set(xlabel="round", ylabel="loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
