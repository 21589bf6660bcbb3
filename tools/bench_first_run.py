"""The first run on a fresh machine, per zoo model: from an empty kernel cache, the one-time
preparation (`facto-edge compile`: wall time, the peak resident memory of its children
together and of the largest one), then a fresh budgeted training process (wall time to its
first finished step, that step's own time, its peak resident memory against the budget and
the kernels it compiled in-process, which must be 0). Beside it, today's path: the same
first step with an empty cache and the session compiling in-process (no budget: a
budgeted session now refuses to).

Systems run side by side, model by model, each round A (prepare, then budgeted step)
B (in-process compile; the first `--baseline-rounds` rounds only); medians over the
rounds. Each measurement runs in a fresh process with its own empty NUMBA_CACHE_DIR and
XDG_CACHE_HOME. Beside the wall times: the CPU seconds of the preparation's process tree
(GNU time: user + system, children included) and the load average before each
measurement, since the wall times of a shared machine follow its load.

    python tools/bench_first_run.py --rounds 2 -o docs/first_run.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("simple_cnn", "resnet18_cifar", "mobilenetv2_cifar", "vgg11_bn_cifar")
BUDGET = "256MB"

# Runs in the training process: a budgeted session (or, with "inprocess", an unbudgeted one
# that compiles what it needs), one step at batch 32; prints JSON.
STEP = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from facto_edge.runtime import TrainingSession, kernelset
from facto_edge.runtime.rss import peak_rss_bytes
count = kernelset.count_compilations()
model, budget = sys.argv[1], (None if sys.argv[2] == "none" else sys.argv[2])
s = TrainingSession(model, batch_size=32, codec="q4", lr=0.01, budget=budget)
shape = (32, *s.input_shape)
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
y = np.arange(32) % s.num_classes
t1 = time.perf_counter()
s.train_step(x, y)
t2 = time.perf_counter()
print(json.dumps({"construct_s": t1 - t0, "step_s": t2 - t1, "to_first_step_s": t2 - t0,
                  "peak": peak_rss_bytes(), "compiled": count.count,
                  "parallel": s.memory_report()["parallel_builds"]}))
"""


PREPARE = """
import sys, json
from facto_edge.runtime.prepare import prepare_kernels
print(json.dumps(prepare_kernels(sys.argv[1]).__dict__))
"""


def _env(tmp: Path) -> dict:
    return dict(
        os.environ, NUMBA_CACHE_DIR=str(tmp / "numba"), XDG_CACHE_HOME=str(tmp / "cache"),
        OPENBLAS_NUM_THREADS="1",
    )  # fmt: skip


def _export(name: str, out: Path) -> Path:
    from facto_edge import zoo
    from facto_edge.exporters.export import export

    export(zoo.build(name, seed=0), out, input_shape=(3, 32, 32), rank=0.25, ort=False)
    return out


def _time_v(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, int]:
    """Run under GNU time: (result, wall seconds, max RSS bytes of the process tree);
    the result's `cpu` is the tree's user + system seconds."""
    t = time.perf_counter()
    run = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if run.returncode:
        raise RuntimeError(run.stderr[-2000:])
    kib = [ln for ln in run.stderr.splitlines() if "Maximum resident set size" in ln]
    run.cpu = sum(
        float(ln.split()[-1]) for ln in run.stderr.splitlines()
        if ln.strip().startswith(("User time", "System time"))
    )  # fmt: skip
    return run, wall, int(kib[-1].split()[-1]) * 1024


def prepared(model: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = _env(Path(tmp))
        prep = [sys.executable, "-c", PREPARE, str(model)]
        load = os.getloadavg()[0]
        run, wall, tree_peak = _time_v(prep, env)
        report = json.loads(run.stdout.strip().splitlines()[-1])
        step_load = os.getloadavg()[0]
        step, _, step_peak = _time_v([sys.executable, "-c", STEP, str(model), BUDGET], env)
        first = json.loads(step.stdout.strip().splitlines()[-1])
    return {"load": load, "prepare_s": wall, "prepare_cpu_s": run.cpu,
            "prepare_tree_peak": tree_peak,
            "prepare_children_peak": report["peak_together"],
            "prepare_compiled": report["compiled"],
            "needed": report["needed"], "jobs": report["jobs"], **first,
            "step_load": step_load, "step_tree_peak": step_peak}  # fmt: skip


def in_process(model: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        load = os.getloadavg()[0]
        step, _, peak = _time_v([sys.executable, "-c", STEP, str(model), "none"], _env(Path(tmp)))
        first = json.loads(step.stdout.strip().splitlines()[-1])
        return first | {"load": load, "step_tree_peak": peak}


def _medians(rounds: list[dict]) -> dict:
    """The median of every numeric field over the rounds (flags from the first round)."""
    out = {}
    for f, v in (rounds[0] if rounds else {}).items():
        numeric = isinstance(v, int | float) and not isinstance(v, bool)
        out[f] = statistics.median(r[f] for r in rounds) if numeric else v
    return out


def table(path: Path) -> str:
    """The markdown table of docs/first_run.md from a results file."""
    data = json.loads(path.read_text())
    mib = 1 << 20
    lines = [
        "| model | rounds | prepare wall (CPU) | load | prepare peak (largest process) "
        "| kernels compiled / needed | budgeted process: to first step | first step | peak "
        "| compiled in it | in-process compile: to first step | its peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in data["results"].items():
        a, b = r["prepared"], r["in_process"]
        walls = ", ".join(f"{x['prepare_s']:.1f}" for x in a["rounds"])
        lines.append(
            f"| {name} | {len(a['rounds'])} | {a['prepare_s']:.1f} s ({walls}; CPU "
            f"{a['prepare_cpu_s']:.1f} s) | {a['load']:.1f} "
            f"| {a['prepare_tree_peak'] / mib:.1f} MiB "
            f"| {a['prepare_compiled']:.0f} / {a['needed']:.0f} | {a['to_first_step_s']:.2f} s "
            f"| {a['step_s']:.2f} s | {a['step_tree_peak'] / mib:.1f} MiB | {a['compiled']:.0f} "
            f"| {b['to_first_step_s']:.1f} s | {b['step_tree_peak'] / mib:.1f} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--baseline-rounds",
        type=int,
        default=1,
        help="Rounds that also measure the in-process compile (the slow one).",
    )
    ap.add_argument("-o", "--output", type=Path, default=Path("docs/first_run.json"))
    ap.add_argument("--table", action="store_true", help="Print the table of --output; exit.")
    args = ap.parse_args()
    if args.table:
        print(table(args.output))
        return
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = _export(name, Path(tmp) / f"{name}.facto")
            rounds = {"prepared": [], "in_process": []}
            for i in range(args.rounds):
                rounds["prepared"].append(prepared(model))
                if i < args.baseline_rounds:
                    rounds["in_process"].append(in_process(model))
            results[name] = {k: _medians(v) | {"rounds": v} for k, v in rounds.items()}
            print(name, json.dumps({k: {f: v[f] for f in v if f != "rounds"}
                                    for k, v in results[name].items()}), flush=True)  # fmt: skip
    args.output.write_text(json.dumps({"budget": BUDGET, "results": results}, indent=1))


if __name__ == "__main__":
    main()
