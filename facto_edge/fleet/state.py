"""The server's checkpoint of a fleet run: RUN/fleet-state.npz, rewritten atomically
after every round (runtime/checkpoint.py's write_atomic: a crash leaves the previous
round's file or this one's, never a torn one).

It holds the global trainable tensors (`global/<name>`), the strategy's arrays (FedAdam's
moments, `strategy/<key>`), and JSON `meta`: the rounds done, the config, the model's
fingerprint and the per-round history. A restarted server reads it and continues with the
next round, so an interrupted run ends with the same global tensors as one that ran
straight through.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facto_edge.errors import CheckpointError
from facto_edge.runtime.checkpoint import write_atomic

STATE_FILE = "fleet-state.npz"
FORMAT_VERSION = 1
_GLOBAL, _STRATEGY = "global/", "strategy/"


@dataclass
class FleetState:
    """Where a fleet run stands after `round` rounds (0: the initial model)."""

    round: int
    tensors: dict[str, np.ndarray]
    config: dict
    fingerprint: str
    history: list[dict] = field(default_factory=list)
    strategy: dict[str, np.ndarray] = field(default_factory=dict)


def save_state(run_dir: Path, state: FleetState) -> Path:
    """Write `state` to RUN/fleet-state.npz atomically."""
    arrays = {f"{_GLOBAL}{k}": v for k, v in state.tensors.items()}
    arrays |= {f"{_STRATEGY}{k}": v for k, v in state.strategy.items()}
    meta = {
        "format_version": FORMAT_VERSION, "round": state.round, "config": state.config,
        "fingerprint": state.fingerprint, "history": state.history,
    }  # fmt: skip
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return write_atomic(Path(run_dir) / STATE_FILE, lambda f: np.savez(f, **arrays))


def load_state(run_dir: Path) -> FleetState | None:
    """The saved state of the run in `run_dir`, None if it has none; CheckpointError if
    the file is unreadable or from another format version."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays.pop("meta").tobytes())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"{path} is corrupt ({type(e).__name__}: {e}): it cannot be resumed; start the "
            "run in another -o directory"
        ) from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {meta.get('format_version')!r}, expected "
            f"{FORMAT_VERSION}: written by another facto-edge version"
        )
    pick = lambda p: {k[len(p) :]: v for k, v in arrays.items() if k.startswith(p)}  # noqa: E731
    return FleetState(
        round=meta["round"], tensors=pick(_GLOBAL), config=meta["config"],
        fingerprint=meta["fingerprint"], history=meta["history"], strategy=pick(_STRATEGY),
    )  # fmt: skip
