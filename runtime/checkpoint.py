"""Checkpoints of a training run, written atomically, and validated when read back.

A checkpoint is one `.npz` file holding everything a run needs to continue exactly:

- `param/<name>`: every trainable tensor of the session;
- `buffer/<name>`: tensors the session updates that are not trained (BatchNormalization
  running statistics under `--bn train`);
- `opt/<key>`: the optimizer's state arrays (momentum, Adam moments);
- `meta`: JSON bytes with the format version, the progress (epoch, batch within the
  epoch, global step), the run's config, the model's fingerprint, the optimizer's scalar
  state, the metrics history and the running sums of an unfinished epoch.

There is no random generator state to keep: data order and augmentation derive from
(seed, epoch, batch) and codec rounding from (seed, step), so the progress is the state.

`save_checkpoint` writes a temporary file in the same folder, fsyncs it, renames it over
the previous checkpoint and fsyncs the folder: a crash at any moment leaves either the old
checkpoint or the new one, never a torn file; it refuses (NumericalError) a checkpoint
whose tensors, optimizer state or last losses are not finite, so the checkpoint kept is
always the last finite one. `load_checkpoint` raises CheckpointError for a file that is
unreadable, truncated, from another format version, holds NaN/Inf (tensors, optimizer
state, losses), or metadata of the wrong types (a negative epoch, say).
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError, NumericalError

FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.npz"
_PARAM, _BUFFER, _OPT = "param/", "buffer/", "opt/"


@dataclass
class Progress:
    """Where a run stands: `epoch` (0-based, the one under way or next), `batch` (batches
    of that epoch already trained) and `step` (optimizer steps taken in all)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


@dataclass
class Checkpoint:
    """Everything saved of a run; see the module docstring for the file layout."""

    params: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]
    optimizer: dict[str, Any]
    progress: Progress
    config: dict
    fingerprint: str
    history: list[dict] = field(default_factory=list)
    partial: dict = field(default_factory=dict)

    def meta(self) -> dict:
        scalars = {k: v for k, v in self.optimizer.items() if not isinstance(v, np.ndarray)}
        return {
            "format_version": FORMAT_VERSION,
            "progress": vars(self.progress),
            "config": self.config,
            "fingerprint": self.fingerprint,
            "optimizer_scalars": scalars,
            "history": self.history,
            "partial": self.partial,
        }


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (this process included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete `.NAME.tmp-PID` files beside `path` left by processes that were killed."""
    prefix = f".{path.name}.tmp-"
    try:
        entries = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(prefix) :]
        if pid.isdigit() and not pid_alive(int(pid)):
            entry.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write `path` through `write(file)` into a temporary sibling, fsync, rename over.
    An OSError while writing names `path` (a full disk's has no file name otherwise)."""
    path = Path(path)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`write_atomic` for a UTF-8 text file."""
    return write_atomic(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write `ckpt` to `path` atomically; the previous file stays until the rename.
    NumericalError, writing nothing, when a tensor, the optimizer state or the last
    epoch's loss is not finite: only a checkpoint that can be resumed is kept."""
    check_finite(ckpt, Path(path), NumericalError)
    arrays = {f"{_PARAM}{k}": v for k, v in ckpt.params.items()}
    arrays |= {f"{_BUFFER}{k}": v for k, v in ckpt.buffers.items()}
    arrays |= {f"{_OPT}{k}": v for k, v in ckpt.optimizer.items() if isinstance(v, np.ndarray)}
    meta = json.dumps(ckpt.meta()).encode()
    arrays["meta"] = np.frombuffer(meta, dtype=np.uint8)
    return write_atomic(path, lambda f: np.savez(f, **arrays))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError as e:
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume") from e
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt ({type(e).__name__}: {e}); it cannot be resumed: "
            "start a new run in another directory"
        ) from e


def _parse_meta(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    try:
        meta = json.loads(arrays.pop("meta").tobytes())
        meta["progress"] = Progress(**meta["progress"])
        for key in ("config", "fingerprint", "optimizer_scalars", "history", "partial"):
            meta[key]  # noqa: B018 - presence check
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path} has no readable metadata ({e}): corrupt") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {meta.get('format_version')!r}, expected "
            f"{FORMAT_VERSION}: it was written by another facto-edge version"
        )
    _check_meta(path, meta)
    return meta


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_meta(path: Path, meta: dict) -> None:
    """Raise CheckpointError naming the first field of the metadata that makes no run."""
    p = meta["progress"]
    checks = [
        (all(_is_count(v) for v in (p.epoch, p.batch, p.step)), "progress (epoch, batch, step)",
         "integers >= 0", vars(p)),
        (isinstance(meta["fingerprint"], str), "fingerprint", "a string", meta["fingerprint"]),
        (isinstance(meta["config"], dict), "config", "a mapping", meta["config"]),
        (isinstance(meta["partial"], dict), "partial", "a mapping", meta["partial"]),
        (isinstance(meta["optimizer_scalars"], dict), "optimizer_scalars", "a mapping",
         meta["optimizer_scalars"]),
        (isinstance(meta["history"], list) and all(isinstance(h, dict) for h in meta["history"]),
         "history", "a list of epoch rows", meta["history"]),
    ]  # fmt: skip
    for ok, what, expected, found in checks:
        if not ok:
            raise CheckpointError(
                f"checkpoint {path}: {what} must be {expected}, found {found!r}: corrupt; "
                "resume from another checkpoint or start a new run"
            )
    scalars = meta["optimizer_scalars"]
    if "step_count" in scalars and not _is_count(scalars["step_count"]):
        raise CheckpointError(
            f"checkpoint {path}: optimizer step_count must be an integer >= 0, found "
            f"{scalars['step_count']!r}: corrupt"
        )


def _not_finite(ckpt: Checkpoint) -> str | None:
    """What in `ckpt` is not finite (tensor, optimizer state or the last epoch's losses)."""
    arrays = {f"tensor {k!r}": v for k, v in (ckpt.params | ckpt.buffers).items()}
    arrays |= {
        f"optimizer state {k!r}": v for k, v in ckpt.optimizer.items() if isinstance(v, np.ndarray)
    }
    for what, a in arrays.items():
        if a.dtype.kind != "f" or not np.isfinite(a).all():
            return f"{what} is not finite float data"
    lr = ckpt.optimizer.get("lr", 0.0)
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr >= 0):
        return f"the optimizer's learning rate is {lr!r}"
    last = ckpt.history[-1] if ckpt.history else {}
    for key in ("loss", "val_loss"):
        value = last.get(key)
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
            return f"epoch {last.get('epoch')}'s {key} is {value!r}"
    return None


def check_finite(ckpt: Checkpoint, path: Path, error: type[Exception] = CheckpointError) -> None:
    """Raise `error` when something in `ckpt` is not finite: it cannot be resumed."""
    bad = _not_finite(ckpt)
    if bad is not None:
        raise error(f"checkpoint {path}: {bad}; a run cannot continue from it")


def _with_prefix(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint file; CheckpointError if it is missing or corrupt."""
    path = Path(path)
    arrays = _read_npz(path)
    meta = _parse_meta(path, arrays)
    optimizer: dict[str, Any] = dict(meta["optimizer_scalars"])
    optimizer |= _with_prefix(arrays, _OPT)
    ckpt = Checkpoint(
        params=_with_prefix(arrays, _PARAM),
        buffers=_with_prefix(arrays, _BUFFER),
        optimizer=optimizer,
        progress=meta["progress"],
        config=meta["config"],
        fingerprint=meta["fingerprint"],
        history=meta["history"],
        partial=meta["partial"],
    )
    check_finite(ckpt, path)
    return ckpt


def check_matches(
    path: Path, expected: dict[str, np.ndarray], found: dict[str, np.ndarray], what: str
) -> None:
    """Raise CheckpointError unless `found` has exactly the names and shapes of `expected`."""
    if expected.keys() != found.keys():
        missing = sorted(expected.keys() - found.keys())
        extra = sorted(found.keys() - expected.keys())
        raise CheckpointError(
            f"checkpoint {path} does not fit this model: {what} missing {missing[:3]}, "
            f"unexpected {extra[:3]}; it belongs to another model"
        )
    for name, a in expected.items():
        if found[name].shape != a.shape:
            raise CheckpointError(
                f"checkpoint {path} does not fit this model: {what} {name!r} has shape "
                f"{list(found[name].shape)}, the model's is {list(a.shape)}"
            )


def host_copy(a) -> np.ndarray:
    """A host numpy copy of a session tensor (a numpy array, or a CUDA device array)."""
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a.copy()


def write_into(live, saved: np.ndarray) -> None:
    """Copy `saved` into the session tensor `live`, on the host or the device."""
    if hasattr(live, "copy_to_device"):
        live.copy_to_device(np.ascontiguousarray(saved, live.dtype))
    else:
        np.copyto(live, saved)


def capture(
    session, progress: Progress, config: dict, fingerprint: str, history: list[dict], partial: dict
) -> Checkpoint:
    """A checkpoint of `session` now: copies of its tensors and optimizer state."""
    return Checkpoint(
        params={k: host_copy(v) for k, v in session.parameters().items()},
        buffers={k: host_copy(v) for k, v in session.buffers().items()},
        optimizer=session.optimizer.state_dict(),
        progress=Progress(**vars(progress)),
        config=config,
        fingerprint=fingerprint,
        history=[dict(h) for h in history],
        partial=dict(partial),
    )


def _checked_tensors(session, ckpt: Checkpoint, path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(live array, saved array) pairs, every name and shape checked first."""
    params, buffers = session.parameters(), session.buffers()
    check_matches(path, params, ckpt.params, "trainable tensor")
    check_matches(path, buffers, ckpt.buffers, "running statistic")
    saved = ckpt.params | ckpt.buffers
    return [(live, saved[name]) for name, live in (params | buffers).items()]


def restore(session, ckpt: Checkpoint, path: Path) -> None:
    """Load `ckpt` into `session` (tensors, optimizer state, step) to continue the run;
    everything is checked before anything changes, so a mismatch changes nothing."""
    pairs = _checked_tensors(session, ckpt, path)
    session.optimizer.load_state_dict(ckpt.optimizer)
    for live, saved in pairs:
        write_into(live, saved)
    session.step = ckpt.progress.step


def load_weights(session, ckpt: Checkpoint, path: Path) -> None:
    """Load only the trained tensors of `ckpt` into `session` (for evaluation)."""
    for live, saved in _checked_tensors(session, ckpt, path):
        write_into(live, saved)
