"""Writing outputs without losing anything: what an output may replace, directories
replaced atomically, leftovers of killed processes, and the lock of a run directory.

    check_output_file(path, force, is_ours, what, command)   before writing a file
    build = new_build_dir(out)          a fresh hidden sibling to fill ...
    replace_dir(build, out)             ... then put in the place of `out`
    clean_leftovers(out, is_complete)   at the start of the next write
    with run_lock(run_dir): ...         one writer per run directory

Replacing a directory: on Linux, renameat2(RENAME_EXCHANGE) swaps the finished build
and the old output in one step, so `out` always holds a complete directory; the old one,
now at the build's name, is then removed. Where the exchange is not available the old
output is renamed aside (`.NAME.old-PID-TAG`), the build renamed in and the aside one
removed. Hidden siblings carry the writer's process id: `clean_leftovers` removes those
of processes that no longer run and, when a crash came between the two renames of the
fallback (no `out`, a complete aside copy), renames the aside copy back.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from facto_edge.errors import FactoEdgeError
from facto_edge.runtime.checkpoint import fsync_dir, pid_alive

LOCK_FILE = ".lock"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_SOFTWARE = "facto-edge"


def check_output_file(
    path: Path, force: bool, is_ours: Callable[[Path], bool], what: str, command: str
) -> None:
    """Raise unless writing the file `path` loses nothing: it must not exist, or be
    `what`, a previous output of `facto-edge command`, and `force` given."""
    if path.is_dir():
        raise FactoEdgeError(
            f"{path} is a directory: expected the path of a file to write; choose another -o"
        )
    if not path.exists():
        return
    if is_ours(path) and not force:
        raise FactoEdgeError(f"{path} already exists; pass --force to replace it")
    if not is_ours(path):
        raise FactoEdgeError(
            f"{path} exists and is not {what}: --force replaces only a previous output of "
            f"`facto-edge {command}`; choose another -o path"
        )


def is_facto_png(path: Path) -> bool:
    """Whether `path` is a PNG that facto-edge drew (its Software text chunk says so)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(PNG_MAGIC) and PNG_SOFTWARE.encode() in head


def check_plot_path(path: Path) -> None:
    """Raise unless a plot may be written at `path`: new, or a plot facto-edge drew."""
    if path.is_dir():
        raise FactoEdgeError(f"{path} is a directory: expected the path of a .png to write")
    if path.exists() and not is_facto_png(path):
        raise FactoEdgeError(
            f"{path} exists and is not a plot facto-edge drew: choose another path for "
            "the PNG, or remove that file"
        )


def _sibling(out: Path, kind: str) -> Path:
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def aside_path(out: Path) -> Path:
    """Where this process may move `out` aside while it writes a new one."""
    return _sibling(out, "old")


def _leftovers(out: Path) -> Iterator[tuple[str, Path]]:
    """(kind, path) of the hidden siblings of `out` left by processes no longer running."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(new|old)-(\d+)-[0-9a-f]+$")
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        m = pattern.match(entry.name)
        if m and not pid_alive(int(m.group(2))):
            yield m.group(1), entry


def clean_leftovers(out: Path, is_complete: Callable[[Path], bool]) -> list[Path]:
    """Remove what killed writers of `out` left beside it; where `out` is missing and an
    aside copy is complete, rename that copy back. Returns the paths dealt with."""
    done = []
    for kind, path in _leftovers(out):
        if kind == "old" and not out.exists() and is_complete(path):
            os.rename(path, out)
        else:
            _remove(path)
        done.append(path)
    return done


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def new_build_dir(out: Path) -> Path:
    """A new empty hidden directory beside `out` (mode from the umask, as mkdir gives)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    build = _sibling(out, "new")
    build.mkdir()
    return build


def _exchange(a: Path, b: Path) -> bool:
    """Swap `a` and `b` in one step (Linux renameat2); False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(build: Path, out: Path) -> None:
    """Put the finished directory `build` (from `new_build_dir(out)`) in the place of
    `out`, replacing what is there (the caller checked that it may)."""
    if out.exists() and _exchange(build, out):
        fsync_dir(out.parent)
        shutil.rmtree(build)  # it holds the old output now
        return
    aside = None
    if out.exists():
        aside = _sibling(out, "old")
        os.rename(out, aside)
    os.rename(build, out)
    fsync_dir(out.parent)
    if aside is not None:
        shutil.rmtree(aside)


@contextmanager
def run_lock(directory: Path, command: str = "") -> Iterator[None]:
    """Hold the lock of `directory` (created if missing) while the block runs; raise
    FactoEdgeError naming the process that holds it. A directory this call created is
    removed again when the block leaves nothing else in it."""
    if directory.exists() and not directory.is_dir():
        raise FactoEdgeError(
            f"{directory} is a file: expected a run directory (new, or one `facto-edge "
            "train` wrote); choose another -o"
        )
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FactoEdgeError(
                f"{directory} is in use by {_holder(fd)}: wait for it to finish (or stop "
                "it), or choose another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": command}).encode())
        yield
    finally:
        if created and {p.name for p in directory.iterdir()} <= {LOCK_FILE}:
            lock.unlink(missing_ok=True)
            directory.rmdir()
        os.close(fd)


def _holder(fd: int) -> str:
    """Who holds a lock, from what it wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    if "pid" not in info:
        return "another process"
    command = f" ({info['command']})" if info.get("command") else ""
    return f"process {info['pid']}{command}"
