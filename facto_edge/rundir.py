"""The run directory of `facto-edge train` (RUN_DIR): what it holds and who owns it.

    RUN_DIR/run.json          the config and the model's fingerprint, written at the start
    RUN_DIR/model.facto/      a copy of the model trained (model.onnx, manifest.json)
    RUN_DIR/checkpoint.npz    the latest checkpoint (every epoch, and on Ctrl-C)
    RUN_DIR/metrics.csv       one row per epoch;  RUN_DIR/metrics.png  loss and accuracy
    RUN_DIR/.lock             held (fcntl) by the one process training in RUN_DIR

A directory holding a run belongs to that run: training into it again needs `--resume`
and the same model and options (only `epochs` may change). `prepare_run` enforces that
before anything is written, so a refused command loses nothing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from facto_edge.errors import CheckpointError
from facto_edge.runtime.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    fsync_dir,
    load_checkpoint,
    write_text_atomic,
)
from facto_edge.runtime.session_io import MODEL_FILES, model_fingerprint
from facto_edge.safe_io import LOCK_FILE

__all__ = ["RunDir", "model_fingerprint", "prepare_run", "resolve_trained"]

RUN_FILE = "run.json"
MODEL_COPY = "model.facto"
RESUMABLE_CHANGES = ("epochs",)


@dataclass(frozen=True)
class RunDir:
    """Paths inside a run directory."""

    path: Path

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def model(self) -> Path:
        return self.path / MODEL_COPY

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def plot(self) -> Path:
        return self.path / "metrics.png"

    def is_run(self) -> bool:
        return self.run_file.is_file()

    def read_run(self) -> dict:
        try:
            return json.loads(self.run_file.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.run_file} is unreadable ({e}): corrupt run") from e


def config_changes(saved: dict, now: dict) -> list[str]:
    """`key: saved -> now` for every option that differs, except those a resume may change."""
    keys = sorted((saved.keys() | now.keys()) - set(RESUMABLE_CHANGES))
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def _clean_leftovers(run: RunDir) -> None:
    """Remove the temporaries of killed writers: the caller holds the run's lock, so no
    other process is writing them (a hidden `.model.facto.*` folder or `.*.tmp*` file)."""
    for entry in run.path.iterdir():
        if entry.name.startswith(f".{MODEL_COPY}.") and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(".") and ".tmp" in entry.name and entry.is_file():
            entry.unlink(missing_ok=True)


def _refuse_fresh_start(run: RunDir, config: dict, fingerprint: str) -> None:
    """Raise unless starting a new run in `run.path` loses nothing of another run."""
    if not run.path.exists() or not [p for p in run.path.iterdir() if p.name != LOCK_FILE]:
        return
    if not run.is_run():
        raise CheckpointError(
            f"{run.path} exists and is not empty, and holds no facto-edge run: "
            "choose a new output directory"
        )
    saved = run.read_run()
    if saved.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{run.path} holds a run of another model ({saved.get('model')}): "
            "choose a new output directory"
        )
    changes = config_changes(saved.get("config", {}), config)
    if changes:
        raise CheckpointError(
            f"{run.path} holds another run (options differ: {'; '.join(changes)}): "
            "choose a new output directory, or pass the same options with --resume"
        )
    if run.checkpoint.exists():
        raise CheckpointError(
            f"{run.path} already holds this run with a checkpoint: pass --resume to "
            "continue it, or choose a new output directory"
        )


def _start(run: RunDir, model_dir: Path, config: dict, fingerprint: str) -> None:
    """Create the run directory: the model's copy, then run.json."""
    run.path.mkdir(parents=True, exist_ok=True)
    if run.model.exists():
        shutil.rmtree(run.model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_COPY}.", dir=run.path))
    tmp.chmod(0o755)
    try:
        for name in MODEL_FILES:
            shutil.copyfile(model_dir / name, tmp / name)
        tmp.rename(run.model)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(run.path)
    record = {"model": str(model_dir.resolve()), "fingerprint": fingerprint, "config": config}
    write_text_atomic(run.run_file, json.dumps(record, indent=2))


def _resume(run: RunDir, config: dict, fingerprint: str) -> Checkpoint:
    if not run.is_run():
        raise CheckpointError(f"{run.path} holds no facto-edge run: nothing to resume")
    ckpt = load_checkpoint(run.checkpoint)
    if ckpt.fingerprint != fingerprint:
        raise CheckpointError(
            f"the checkpoint in {run.path} was trained from another model "
            f"({run.read_run().get('model')}): resume it with that model"
        )
    changes = config_changes(ckpt.config, config)
    if changes:
        raise CheckpointError(
            f"cannot resume {run.path} with other options ({'; '.join(changes)}): "
            "pass the options it was started with"
        )
    return ckpt


def prepare_run(
    out_dir: str | Path, model_dir: str | Path, config: dict, resume: bool
) -> tuple[RunDir, Checkpoint | None]:
    """Check and set up the run directory: the checkpoint to resume from, or None for a
    new run. Raises CheckpointError, having written nothing, when the directory holds
    another run, or (with `resume`) no run, a corrupt checkpoint or a mismatched one.
    The caller holds the directory's lock (`safe_io.run_lock`): leftovers of a killed run
    are removed first."""
    run = RunDir(Path(out_dir))
    fingerprint = model_fingerprint(model_dir)
    if run.path.is_dir():
        _clean_leftovers(run)
    if resume:
        return run, _resume(run, config, fingerprint)
    _refuse_fresh_start(run, config, fingerprint)
    _start(run, Path(model_dir), config, fingerprint)
    return run, None


def resolve_trained(path: str | Path) -> tuple[Path, Path | None]:
    """(model directory, checkpoint or None) for a RUN_DIR or a `*.facto` directory."""
    path = Path(path)
    run = RunDir(path)
    if run.is_run():
        if not run.checkpoint.is_file():
            raise CheckpointError(
                f"{path} holds a run with no checkpoint yet: train at least one epoch"
            )
        return run.model, run.checkpoint
    if (path / "manifest.json").is_file():
        return path, None
    raise CheckpointError(
        f"{path} is neither a run directory (no {RUN_FILE}) nor an exported model "
        "(no manifest.json): pass the -o directory of `facto-edge train` or a *.facto"
    )
