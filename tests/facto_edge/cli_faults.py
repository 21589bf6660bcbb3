"""Helpers of the reliability tests: run the CLI in-process or in a process with a file
size limit, make a folder read-only, and check that a command failed in one line."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from facto_edge.cli import main

FACTO_EDGE = Path(sys.executable).with_name("facto-edge")


def cli(*args) -> object:
    """`facto-edge ARGS` in this process (click's test runner)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_failure(code: int, stderr: str, *words: str) -> str:
    """A non-zero exit whose error is one `error: ...` line, the last on stderr, and no
    traceback; returns that line."""
    assert code not in (0, None), stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def assert_cli_failed(result, *words: str) -> str:
    """`assert_one_line_failure` for a click test-runner result."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return assert_one_line_failure(result.exit_code, result.stderr, *words)


def run_limited(args, file_limit: int, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`facto-edge ARGS` in a new process whose files may not grow past `file_limit`
    bytes (`ulimit -f`): a write past it fails with EFBIG, as on a full disk."""
    if not FACTO_EDGE.is_file():
        pytest.skip(f"no facto-edge console script beside {sys.executable}")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run(
        [str(FACTO_EDGE), *map(str, args)], capture_output=True, text=True, timeout=600,
        preexec_fn=limit, cwd=cwd,
    )  # fmt: skip


@contextmanager
def read_only(folder: Path):
    """`folder` made read-only: mode 0555, and immutable (chattr +i) for root, whom the
    mode does not stop; skips the test where neither holds."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    chattr = shutil.which("chattr") if os.geteuid() == 0 else None
    if chattr:
        subprocess.run([chattr, "+i", str(folder)], capture_output=True)
    try:
        probe = folder / ".probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("cannot make a folder read-only here")
        yield folder
    finally:
        if chattr:
            subprocess.run([chattr, "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (hidden lock files aside) with its bytes."""
    return {
        p.relative_to(folder): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".lock"
    }
