"""The fleet's ServerApp: rounds of sampling, local training, checks and aggregation of
the trainable tensors, a held-out evaluation and a checkpoint.

One round (`_Rounds.run_round`):

1. wait until `min_available` clients are known (a "query" message asks each new node
   for its partition-id);
2. sample cfg.sampled partitions from (seed, round), and send each a "train" message
   with the global trainable tensors (an ArrayRecord keyed by initializer name, built by
   the strategy: FedAvg, FedAdam or FedProx; encoded for cfg.wire, wire.py);
3. sort the replies: an error reply, or no reply within `timeout`, is a failure; an update
   with the wrong names, shapes or encoding, or NaN/Inf, is rejected (tensors.check_update);
   neither stops the round or reaches the aggregate. An accepted one is decoded to the
   fp32 client tensors it stands for (wire.decode_up), which the strategy aggregates;
4. aggregate the accepted updates in partition order (the same sums in every run) and
   merge them by name into the global tensors; the frozen factors never travel and stay
   as exported on both sides. With no accepted update the global model stays;
5. evaluate the global model on the held-out set, checkpoint (state.py), report.

Progress goes to `FleetCallback`s; the loop never prints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from facto_edge.errors import CheckpointError, FactoEdgeError
from facto_edge.fleet.client import PARTITION_KEY, travelling
from facto_edge.fleet.config import FleetConfig
from facto_edge.fleet.data import held_out
from facto_edge.fleet.grid import SampledGrid
from facto_edge.fleet.state import FleetState, load_state, save_state
from facto_edge.fleet.strategy import make_strategy, restore_strategy, start_round, strategy_state
from facto_edge.fleet.tensors import check_update, from_record, record_bytes, to_record
from facto_edge.fleet.wire import decode_up, encode
from facto_edge.rundir import model_fingerprint
from facto_edge.runtime.checkpoint import write_into
from facto_edge.runtime.rss import peak_rss_bytes

_SAMPLE = 4  # rng stream of the per-round sampling: (seed, 4, round)


class FleetCallback:
    """Hooks of the server loop; override what you need."""

    def on_start(self, cfg: FleetConfig, state: FleetState) -> None:
        """Before the first round to run (state.round rounds are already done)."""

    def on_round_end(self, record: dict) -> None:
        """After each round's checkpoint; `record` is its fleet.json entry."""

    def on_warning(self, message: str) -> None:
        """Something the user should know that does not stop the run."""


class LogRounds(FleetCallback):
    """Each round's outcome as one line of Flower's log: what `flwr run --stream` shows
    of a deployed ServerApp (`facto-edge fleet server` prints it)."""

    def on_start(self, cfg: FleetConfig, state: FleetState) -> None:
        acc = 100 * state.history[-1]["accuracy"]
        _log(f"fleet: round {state.round} of {cfg.rounds} done, accuracy {acc:.1f}%")

    def on_round_end(self, record: dict) -> None:
        _log(f"fleet: round {record['round']} accuracy {100 * record['accuracy']:.1f}% "
             f"ok {record['finished']}/{record['sampled']} failed {record['failed']} "
             f"rejected {record['rejected']}")  # fmt: skip

    def on_warning(self, message: str) -> None:
        _log(f"fleet: warning: {message}")


def _log(line: str) -> None:
    from flwr.common.logger import log

    log(logging.INFO, line)


class Evaluator:
    """The server's session of the model: initial tensors and held-out evaluation."""

    def __init__(self, cfg: FleetConfig) -> None:
        from facto_edge.runtime import TrainingSession

        self.session = TrainingSession(cfg.model, batch_size=64, codec="fp32", threads=1)
        self.x, self.y = held_out(cfg)

    def initial(self) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in travelling(self.session).items()}

    def evaluate(self, tensors: dict[str, np.ndarray]) -> dict:
        for name, live in travelling(self.session).items():
            write_into(live, tensors[name])
        return self.session.evaluate(self.x, self.y)


def sample_partitions(cfg: FleetConfig, server_round: int, known: list[int]) -> list[int]:
    """The partitions that train in `server_round`: cfg.sampled of the `known` ones (all
    if fewer), drawn from (seed, round)."""
    rng = np.random.default_rng([cfg.seed, _SAMPLE, server_round])
    pool = sorted(known)
    size = min(cfg.sampled, len(pool))
    return sorted(int(p) for p in rng.choice(pool, size=size, replace=False))


class _Nodes:
    """Which node holds which partition, learnt by "query" messages to new nodes."""

    def __init__(self, grid: Grid, cfg: FleetConfig) -> None:
        self.grid, self.cfg = grid, cfg
        self.partition: dict[int, int] = {}  # node id -> partition id

    def refresh(self) -> None:
        new = [n for n in self.grid.get_node_ids() if n not in self.partition]
        if not new:
            return
        msgs = [Message(RecordDict(), n, MessageType.QUERY) for n in new]
        for reply in self.grid.send_and_receive(msgs, timeout=self.cfg.timeout):
            if not reply.has_error():
                p = reply.content["metrics"][PARTITION_KEY]
                self.partition[reply.metadata.src_node_id] = int(p)

    def wait_for(self, needed: int) -> None:
        """Refresh until `needed` partitions are known; FactoEdgeError after the timeout."""
        deadline = time.monotonic() + self.cfg.timeout
        while True:
            self.refresh()
            if len(set(self.partition.values())) >= needed:
                return
            if time.monotonic() > deadline:
                raise FactoEdgeError(
                    f"only {len(self.partition)} client(s) connected after "
                    f"{self.cfg.timeout:.0f} s, {needed} needed (--min-available): start more "
                    "clients or lower --min-available"
                )
            time.sleep(1.0)

    def node_of(self) -> dict[int, int]:
        return {p: n for n, p in sorted(self.partition.items())}


class _Rounds:
    """The server's loop over rounds, from a fresh start or a checkpoint."""

    def __init__(self, grid: Grid, cfg: FleetConfig, run_dir: Path, callbacks) -> None:
        self.grid, self.cfg, self.run_dir = grid, cfg, Path(run_dir)
        self.callbacks = list(callbacks)
        self.strategy = make_strategy(cfg)
        self.evaluator = Evaluator(cfg)
        self.nodes = _Nodes(grid, cfg)
        self.state = self._start_or_resume()

    def _start_or_resume(self) -> FleetState:
        fingerprint = model_fingerprint(self.cfg.model)
        saved = load_state(self.run_dir)
        if saved is None:
            tensors = self.evaluator.initial()
            state = FleetState(0, tensors, asdict(self.cfg), fingerprint)
            state.history.append(self._record(0, self.evaluator.evaluate(tensors), {}, 0.0))
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_state(self.run_dir, state)
            return state
        changed = self.cfg.resume_changes(saved.config)
        if saved.fingerprint != fingerprint or changed:
            what = f"options {changed}" if changed else "the model"
            raise CheckpointError(
                f"{self.run_dir} holds a fleet run with other {what}: resume it with the same "
                "options, or start a new run in another -o directory"
            )
        restore_strategy(self.strategy, saved.strategy)
        return saved

    def run(self) -> FleetState:
        for cb in self.callbacks:
            cb.on_start(self.cfg, self.state)
        for r in range(self.state.round + 1, self.cfg.rounds + 1):
            record = self.run_round(r)
            self.state.round = r
            self.state.history.append(record)
            self.state.strategy = strategy_state(self.strategy)
            save_state(self.run_dir, self.state)
            for cb in self.callbacks:
                cb.on_round_end(record)
        return self.state

    def run_round(self, r: int) -> dict:
        started = time.perf_counter()
        self.nodes.wait_for(self.cfg.min_available)
        node_of = self.nodes.node_of()
        chosen = sample_partitions(self.cfg, r, list(node_of))
        arrays = to_record(self.state.tensors)
        sub = SampledGrid(self.grid, [node_of[p] for p in chosen])
        start_round(self.strategy, arrays)
        wired = encode(self.state.tensors, self.cfg.wire)
        msgs = []
        for msg in self.strategy.configure_train(r, arrays, ConfigRecord(), sub):
            msg.content["arrays"] = wired  # the strategy sees fp32, the clients the wire's
            msgs.append(msg)
        replies = list(self.grid.send_and_receive(msgs, timeout=self.cfg.timeout))
        outcome = self._sort(replies, chosen, record_bytes(wired))
        accepted = outcome.pop("_accepted")
        if accepted:
            merged, _ = self.strategy.aggregate_train(r, accepted)
            self._merge(merged)
        else:
            self._warn(f"round {r}: no client update was accepted; the global model stays")
        metrics = self.evaluator.evaluate(self.state.tensors)
        return self._record(r, metrics, outcome, time.perf_counter() - started)

    def _sort(self, replies: list[Message], chosen: list[int], bytes_to: int) -> dict:
        """Failures, rejections, bytes and the accepted replies (in partition order)."""
        partition_of = {n: p for p, n in self.nodes.node_of().items()}
        failures: dict[str, str] = {}
        rejected: dict[str, str] = {}
        bytes_from: dict[str, int] = {}
        good: dict[int, Message] = {}
        losses, peaks = [], []
        for reply in replies:
            p = partition_of.get(reply.metadata.src_node_id)
            if p is None or p not in chosen:
                continue
            if reply.has_error():
                failures[str(p)] = _reason(reply.error.reason)
                continue
            content = reply.content
            record = content.array_records.get("arrays")
            if record is None:
                rejected[str(p)] = "no ArrayRecord 'arrays' in the reply"
                continue
            bytes_from[str(p)] = record_bytes(record)
            why = check_update(record, self.state.tensors, self.cfg.wire)
            if why := why or _check_metrics(content):
                rejected[str(p)] = why
                continue
            # the strategy aggregates the fp32 client tensors the update stands for
            content["arrays"] = to_record(decode_up(record, self.state.tensors, self.cfg.wire))
            good[p] = reply
            losses.append(float(content["metrics"]["train-loss"]))
            peaks.append(int(content["metrics"]["peak-rss"]))
        for p in chosen:
            if str(p) not in failures and str(p) not in rejected and p not in good:
                failures[str(p)] = f"no reply within {self.cfg.timeout:.0f} s (dropped)"
        for p, why in (failures | rejected).items():
            self._warn(f"client {p}: {why}")
        return {
            "sampled": len(chosen), "finished": len(good), "failed": len(failures),
            "rejected": len(rejected), "failures": failures, "rejections": rejected,
            "clients": chosen, "bytes_to_client": bytes_to, "bytes_from_client": bytes_from,
            "train_loss": float(np.mean(losses)) if losses else None,
            "client_peak_rss": max(peaks, default=None),
            "_accepted": [good[p] for p in sorted(good)],
        }  # fmt: skip

    def _merge(self, merged) -> None:
        """Merge the aggregate by name, in the global tensors' dtype (FedAdam's arithmetic
        returns float64); one that fails the checks (an overflow) is refused, with a
        warning."""
        tensors = self.state.tensors
        cast = {k: v.astype(tensors[k].dtype) for k, v in from_record(merged).items()}
        why = check_update(to_record(cast), tensors)
        if why:
            self._warn(f"the aggregate was refused ({why}): the global model stays; lower --lr")
            return
        self.state.tensors = tensors | cast

    def _record(self, r: int, metrics: dict, outcome: dict, seconds: float) -> dict:
        return {
            "round": r, "accuracy": metrics["accuracy"], "loss": metrics["loss"],
            "eval_samples": metrics["samples"], **outcome, "seconds": seconds,
            "server_peak_rss": peak_rss_bytes(),
        }  # fmt: skip

    def _warn(self, message: str) -> None:
        for cb in self.callbacks:
            cb.on_warning(message)


def _reason(text: str | None) -> str:
    """One line of a client's error: the last "...Error: ..." line of its traceback (Ray
    wraps the ClientApp's exception in its own), else the first line."""
    lines = [line.strip() for line in (text or "client error").splitlines() if line.strip()]
    named = [line for line in lines if "Error: " in line or "Exception: " in line]
    return named[-1] if named else lines[0]


def _check_metrics(content: RecordDict) -> str | None:
    metrics = content.metric_records.get("metrics")
    if metrics is None:
        return "no MetricRecord 'metrics' in the reply"
    for key in ("num-examples", "train-loss", "peak-rss"):
        if key not in metrics:
            return f"metrics lack {key!r}"
    n = metrics["num-examples"]
    if not isinstance(n, int) or n < 1:
        return f"num-examples must be a positive integer, found {n!r}"
    if not np.isfinite(metrics["train-loss"]):
        return "train-loss is not finite"
    return None


def run_fleet(
    grid: Grid, cfg: FleetConfig, run_dir: str | Path, callbacks: Sequence[FleetCallback] = ()
) -> FleetState:
    """Run (or resume) the fleet rounds of `cfg` over `grid`, checkpointing into `run_dir`;
    returns the final state (global tensors, history)."""
    return _Rounds(grid, cfg.check(), Path(run_dir), callbacks).run()


class Outcome:
    """Where a ServerApp run in a thread leaves its result or its error."""

    def __init__(self) -> None:
        self.state: FleetState | None = None
        self.error: BaseException | None = None


def server_app(
    config: FleetConfig | None = None,
    run_dir: str | Path | None = None,
    callbacks: Sequence[FleetCallback] = (),
    outcome: Outcome | None = None,
) -> ServerApp:
    """The fleet's ServerApp. Without `config` and `run_dir` it reads them from the run
    config ("run-dir" beside FleetConfig's keys: a deployment) and logs each round
    (LogRounds). With `outcome` the final state or the error is kept there instead of
    raised (a simulation's server thread)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            cfg = config or FleetConfig.from_run_config(dict(context.run_config))
            out = run_dir or context.run_config.get("run-dir", "fleet-run")
            hooks = list(callbacks) if config is not None else [*callbacks, LogRounds()]
            state = run_fleet(grid, cfg, str(out), hooks)
        except BaseException as e:
            if outcome is None:
                raise
            outcome.error = e
            return
        if outcome is not None:
            outcome.state = state

    return app
