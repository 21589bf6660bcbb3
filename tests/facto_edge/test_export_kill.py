"""Fault test: `facto-edge export --force` over an existing model, killed with SIGKILL at
random moments, always leaves a complete, loadable model at the destination; the next
export cleans up what the killed one left.

A parent process that has imported torch and the exporter forks one child per export
(so each try costs an export, not an interpreter start); the test kills the child after
a random delay, half of them drawn over the whole export and half around its end, where
the old model is replaced."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

TRIES = 20
FORKER = r"""
import os, sys
import torch, tensorly, onnx  # noqa: F401 - loaded once, before the forks
import facto_edge.exporters.export  # noqa: F401
from facto_edge.cli import main

for line in sys.stdin:
    src, dst = line.split()
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1), os.dup2(null, 2)
        try:
            main(["export", src, "-o", dst, "--force", "--no-ort"])
        except SystemExit as e:
            os._exit(e.code if isinstance(e.code, int) else 1)
        os._exit(0)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(status, flush=True)
"""


def _model_bytes(model: Path) -> bytes:
    """What tells two exports apart, after checking that `model` loads."""
    from facto_edge.runtime.graph import load_graph

    graph = load_graph(model)
    assert graph.trainable and graph.nodes
    return (model / "model.onnx").read_bytes()


def _zoo(path: Path, seed: int) -> Path:
    from facto_edge import zoo

    return zoo.write("simple_cnn", path, seed=seed, input_shape=(1, 16, 16))


def test_kill_9_during_export_force_always_leaves_a_complete_model(tmp_path):
    sources = [_zoo(tmp_path / "a.pt", 0), _zoo(tmp_path / "b.pt", 1)]
    dst = tmp_path / "model.facto"
    forker = subprocess.Popen(
        [sys.executable, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

    def export(source: Path, kill_after: float | None = None) -> tuple[int, float]:
        started = time.perf_counter()
        forker.stdin.write(f"{source} {dst}\n")
        forker.stdin.flush()
        pid = int(forker.stdout.readline())
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        status = int(forker.stdout.readline())
        return status, time.perf_counter() - started

    try:
        status, seconds = export(sources[0])
        assert status == 0
        expected = [_model_bytes(dst), None]
        status, seconds = export(sources[1])
        assert status == 0
        expected[1] = _model_bytes(dst)
        rng = random.Random(13)
        outcomes = {"old kept": 0, "new in place": 0}
        current = 1
        for i in range(TRIES):
            source = 1 - current  # the destination holds the other model
            delay = rng.uniform(0, seconds) if i % 4 < 2 else rng.uniform(0.8, 1.1) * seconds
            export(sources[source], delay)
            found = _model_bytes(dst)  # complete and loadable, whatever the moment
            assert found in expected
            current = expected.index(found)
            outcomes["new in place" if current == source else "old kept"] += 1
        assert export(sources[0])[0] == 0
        assert _model_bytes(dst) == expected[0]
    finally:
        forker.stdin.close()
        forker.wait(timeout=60)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    print(f"kill -9 during export --force: {TRIES}/{TRIES} complete, {outcomes}")
