"""The first run on a fresh machine (../shared/DESIGN.md, "The first run"): no kernel is
compiled inside a budgeted process. `facto-edge train --budget` with an empty kernel cache
compiles in child processes first, says so, and stays inside its budget, measured from
outside; a budgeted session on an unprepared machine refuses, naming the command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from facto_edge.errors import BudgetError, FactoEdgeError
from facto_edge.report import read_metrics_csv
from facto_edge.runtime import cachedirs, prepare
from facto_edge.runtime.budget import parse_size

BUDGET = "256MB"
TIME = shutil.which("time") or "/usr/bin/time"


def fresh_env(tmp_path: Path) -> dict:
    """A machine that never ran facto-edge: an empty kernel cache and user cache, and
    the default compile policy (refuse)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), OPENBLAS_NUM_THREADS="1")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env.pop("FACTO_EDGE_COMPILE", None)
    return env


@pytest.mark.skipif(not os.path.exists(TIME), reason="needs GNU time for the peak")
def test_train_with_a_budget_and_an_empty_cache_stays_inside_it(digits_model, small_npz, tmp_path):
    cli = [sys.executable, "-m", "facto_edge.cli", "train", str(digits_model), "--data",
           str(small_npz), "-o", str(tmp_path / "run"), "--budget", BUDGET, "--epochs", "1",
           "--batch-size", "20"]  # fmt: skip
    run = subprocess.run(
        [TIME, "-v", *cli], env=fresh_env(tmp_path), capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"compiling \d+ kernel\(s\) for .* in child processes", run.stderr)
    # GNU time: the largest resident set of the process tree (training and compile children)
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)[1])
    assert peak_kib * 1024 <= parse_size(BUDGET)
    (row,) = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert row["over_budget"] == 0 and 0 < row["peak_rss"] <= parse_size(BUDGET)
    assert "OVER" not in run.stderr
    # prepared now: a second run compiles nothing and says nothing about compiling
    again = subprocess.run(
        [*cli[:8], str(tmp_path / "again"), *cli[9:]], env=fresh_env(tmp_path),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "compiling" not in again.stderr


def test_a_budgeted_session_refuses_to_compile_and_names_the_command(
    digits_model, tmp_path, monkeypatch
):
    from facto_edge.runtime import TrainingSession

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no kernel set was ever stored
    monkeypatch.delenv("FACTO_EDGE_COMPILE")
    with pytest.raises(BudgetError, match=r"facto-edge compile .*model\.facto --codec q4") as e:
        TrainingSession(digits_model, batch_size=8, codec="q4", budget="1GiB")
    assert "compile='prepare'" in str(e.value) and "never prepared" in str(e.value)


# A budgeted session in a fresh interpreter: "ok", or the BudgetError's message.
_BUDGETED = """
import sys
from facto_edge.errors import BudgetError
from facto_edge.runtime import TrainingSession
try:
    TrainingSession(sys.argv[1], batch_size=8, codec="q4", budget="1GiB").close()
    print("ok")
except BudgetError as e:
    print(e)
"""


def test_a_budgeted_session_refuses_where_numbas_runtime_library_is_not_stored(
    digits_model, tmp_path
):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))  # the in-tree kernel cache stays
    env.pop("FACTO_EDGE_COMPILE", None)

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, *args], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    compile_cli = ("-m", "facto_edge.cli", "compile", str(digits_model), "--codec", "q4")
    run(*compile_cli)
    assert run("-c", _BUDGETED, str(digits_model)) == "ok"
    shutil.rmtree(tmp_path / "facto-edge" / "nrt")
    refused = run("-c", _BUDGETED, str(digits_model))
    assert "not wholly (1 kernels missing)" in refused and "facto-edge compile" in refused
    run(*compile_cli)  # prepares the library again, though every kernel is cached
    assert run("-c", _BUDGETED, str(digits_model)) == "ok"


DISCOVER = """
import sys
from facto_edge.runtime import kernelset
counted = kernelset.count_compilations()
a, b = (kernelset.discover(sys.argv[1], "q4", opt) for opt in ("sgd", "adamw"))
print(counted.count, a.key != b.key, *sorted({e.function for e in a.entries}))
"""


def test_discovery_lists_kernels_without_compiling_any(digits_model):
    out = subprocess.run(
        [sys.executable, "-c", DISCOVER, str(digits_model)], capture_output=True, text=True,
        check=True, timeout=300, env=dict(os.environ, NUMBA_DISABLE_JIT="0"),
    ).stdout.split()  # fmt: skip
    compiled, other_key, functions = int(out[0]), out[1], set(out[2:])
    assert compiled == 0 and other_key == "True"
    assert {"codec_kernels.block_encode[serial]", "codec_kernels.block_encode[parallel]"} <= (
        functions
    )
    assert any(f.startswith("optimizer_kernels.sgd") for f in functions)
    # the codec's kernels only, the probe's included: no other codec's
    assert not {f for f in functions if f.startswith(("codec_kernels.fp16", "codec_kernels.fp32"))}


def test_a_kernel_still_missing_after_its_compile_child_is_reported():
    pool = prepare._Pool(1, parse_size("256MB"), None)
    assert pool._on_line(None, "missing conv.im2col[serial](float32)\n")
    assert pool.still_missing == ["conv.im2col[serial](float32)"]


def test_discovery_refuses_a_process_with_loaded_kernels(digits_model):
    from facto_edge.runtime import TrainingSession, kernelset

    TrainingSession(digits_model, batch_size=2, codec="q4").close()  # loads kernels here
    with pytest.raises(FactoEdgeError, match="fresh process"):
        kernelset.discover(digits_model, "q4", "sgd")


def test_work_is_split_by_kernel_and_children_fit_the_memory():
    m = [prepare.Missing(f, b, f"{f}[{b}]", b"") for f, b in
         [("a", "parallel"), ("b", "serial"), ("a", "parallel"), ("c", "serial")]]  # fmt: skip
    groups = prepare.split_by_kernel(m)
    assert [g[0].function for g in groups] == ["a", "b", "c"] and len(groups[0]) == 2
    assert prepare.child_count(parse_size("256MB"), jobs=8) == 1
    assert prepare.child_count(parse_size("1GB"), jobs=2) == 2
    assert prepare.child_count(1, jobs=4) == 1  # one child at least


def test_a_read_only_runtime_caches_kernels_in_the_user_cache(tmp_path, monkeypatch):
    runtime = tmp_path / "site-packages" / "runtime"
    (runtime / "kernels").mkdir(parents=True)
    monkeypatch.setattr(cachedirs, "RUNTIME_DIR", runtime)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert cachedirs.use_user_kernel_cache() is None  # writable: numba's __pycache__
    for d in (runtime / "kernels", runtime):
        d.chmod(0o555)
    try:
        if os.access(runtime, os.W_OK):
            pytest.skip("running as a user who can write read-only directories")
        import numba.core.config

        monkeypatch.setattr(numba.core.config, "CACHE_DIR", numba.core.config.CACHE_DIR)
        got = cachedirs.use_user_kernel_cache()
        assert got == str(tmp_path / "cache" / "facto-edge" / "numba")
        assert os.environ["NUMBA_CACHE_DIR"] == got == numba.core.config.CACHE_DIR
    finally:
        for d in (runtime, runtime / "kernels"):
            d.chmod(0o755)
