"""Memory of a facto-edge training step against PyTorch dense training, side by side in one
run, written to docs/memory.md with a plot (docs/memory.png).

    python tools/bench_memory.py                        # the three CIFAR models, batch 32
    python tools/bench_memory.py --models resnet18_cifar --repeats 1

Figures (../shared/BENCHMARKS.md):
- saved-activation bytes per step: PyTorch's unique storages seen by
  saved_tensors_hooks, parameters and buffers excluded (facto_edge.bench.saved), against
  the arena's saved buffers, for the codecs asked for;
- peak RSS of a training process (3 steps at the batch) from wait4's getrusage of a
  forked child, each system in a fresh interpreter, rounds interleaved, median; facto-edge
  without a budget and under --budget (micro-batches);
- the planned arena against its lower bound and the linear plan;
- the share of step time spent in the activation codec (encode + decode);
- the safety margin: peak RSS beyond fixed cost + arena, per model, for a process
  driving a TrainingSession and for facto_edge.train (what budget.SAFETY_MARGIN covers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from facto_edge.bench.machine import load_average, versions
from facto_edge.runtime.budget import (
    SAFETY_MARGIN,
    format_size,
    measure_runtime_fixed_cost,
    measure_runtime_startup_peak,
    parse_size,
)

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]

# A fresh interpreter forks the workload and reports the child's peak from wait4: a forked
# child starts from this small interpreter, while an exec'ed one inherits its parent's
# peak in ru_maxrss on Linux.
_RUNNER = textwrap.dedent(
    """
    import json, os, sys
    spec = json.loads(sys.argv[1])

    def torch_dense():
        import numpy as np, torch
        import torch.nn.functional as F
        from facto_edge import zoo
        model = zoo.build(spec["model"], seed=0).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = torch.randn(spec["batch"], 3, 32, 32), torch.arange(spec["batch"]) % 10
        for _ in range(spec["steps"]):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return {}

    def facto():
        import numpy as np
        from facto_edge.runtime import TrainingSession
        s = TrainingSession(spec["dir"], batch_size=spec["batch"], codec=spec["codec"],
                            budget=spec["budget"])
        x = np.random.default_rng(0).standard_normal((spec["batch"], 3, 32, 32), np.float32)
        for _ in range(spec["steps"]):
            s.train_step(x, np.arange(spec["batch"]) % 10)
        return s.memory_report()

    def facto_train():
        from facto_edge.train import train
        out = spec["work"] + f"/run-{os.getpid()}"
        r = train(spec["dir"], spec["data"], out, epochs=1, batch_size=spec["batch"],
                  codec=spec["codec"], budget=spec["budget"], plot=False)
        return r.memory

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            report = {"torch_dense": torch_dense, "facto": facto, "train": facto_train}[
                spec["system"]]()
            print(json.dumps({k: v for k, v in report.items() if not isinstance(v, str)}))
            code = 0
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    print(json.dumps({"status": status, "peak": usage.ru_maxrss * 1024}))
    """
)


def run_peak(spec: dict) -> tuple[int, dict]:
    """(peak RSS in bytes, the workload's memory report) of one fresh training process."""
    run = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    lines = run.stdout.strip().splitlines()
    if run.returncode or len(lines) < 2 or json.loads(lines[-1])["status"]:
        raise RuntimeError(f"{spec['system']} failed: {run.stderr[-2000:]}")
    return json.loads(lines[-1])["peak"], json.loads(lines[-2])


def export_models(models: list[str], rank: float, work: Path) -> dict[str, Path]:
    """Each zoo model exported at `rank` into `work` (kept between runs)."""
    from facto_edge import export, zoo

    out = {}
    for name in models:
        out[name] = work / f"{name}-r{rank}.facto"
        if not (out[name] / "manifest.json").exists():
            export(
                zoo.build(name, seed=0), out[name], input_shape=(3, 32, 32), rank=rank, ort=False
            )
    return out


def torch_dense_saved(name: str, batch: int) -> int:
    """Bytes PyTorch dense training (BN in train mode) keeps for backward in one step."""
    import torch
    import torch.nn.functional as F

    from facto_edge import zoo
    from facto_edge.bench.saved import SavedTensorCounter

    model = zoo.build(name, seed=0).train()
    x, y = torch.randn(batch, 3, 32, 32), torch.arange(batch) % 10
    with SavedTensorCounter(exclude=[*model.parameters(), *model.buffers()]) as counter:
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return counter.nbytes


def facto_memory(model_dir: Path, batch: int, codec: str) -> dict:
    """The memory report of a session bound for `batch` with `codec` (no step run)."""
    from facto_edge.runtime import TrainingSession

    return TrainingSession(model_dir, batch_size=batch, codec=codec).memory_report()


def _timed(fn, spent: list[float]):
    def call(*args):
        t0 = time.perf_counter()
        fn(*args)
        spent[0] += time.perf_counter() - t0

    return call


def codec_share(
    model_dir: Path, batch: int, codec: str, steps: int = 5
) -> tuple[float, float, float]:
    """(median step seconds, median seconds in the codec's encode and decode per step,
    median CPU seconds of the step), timed inside real steps: the executors' codec is
    wrapped with a stopwatch. The lanes (session.py) run side by side, each with its own
    codec calls, so the codec's seconds add up over the lanes and are set against the
    step's CPU seconds (all threads), not its wall time."""
    from facto_edge.runtime import TrainingSession
    from facto_edge.runtime.codecs import Codec

    s = TrainingSession(model_dir, batch_size=batch, codec=codec)
    spent = [0.0]
    c = s.binding.spec.codec
    timed = Codec(c.name, c.nbytes, _timed(c.encode, spent), _timed(c.decode, spent))
    for ex in s.binding.executors.values():
        ex._codec = timed
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((batch, 3, 32, 32), np.float32), np.arange(batch) % 10
    step_times, codec_times, cpu_times = [], [], []
    for _ in range(steps + 1):
        spent[0] = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        s.train_step(x, y)
        step_times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        codec_times.append(spent[0])
    return tuple(statistics.median(t[1:]) for t in (step_times, codec_times, cpu_times))


def peaks(args, dirs: dict[str, Path]) -> dict[str, list[int]]:
    """Peak RSS per system at args.batch on args.peak_model, rounds interleaved."""
    base = {"batch": args.batch, "steps": 3}
    model_dir = str(dirs[args.peak_model])
    systems = {
        "PyTorch dense": {"system": "torch_dense", "model": args.peak_model},
        "facto-edge q4": {"system": "facto", "dir": model_dir, "codec": "q4", "budget": None},
        f"facto-edge q4, --budget {args.budget}": {
            "system": "facto", "dir": model_dir, "codec": "q4", "budget": args.budget,
        },
    }  # fmt: skip
    run_peak(base | systems["facto-edge q4"])  # fills Numba's cache, as the budget assumes
    out: dict[str, list] = {name: [] for name in systems}
    for _ in range(args.repeats):
        for name, spec in systems.items():
            out[name].append(run_peak(base | spec))
    return out


def margins(dirs: dict[str, Path], work: Path, fixed: int, startup: int) -> list[tuple]:
    """(model, path, batch, arena, peak, excess over the larger of fixed + arena and the
    start-up peak) per measured run."""
    data = work / "cifar_like.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, 256, (96, 32, 32, 3), np.uint8), y=np.arange(96) % 10)
    rows = []
    for name, model_dir in dirs.items():
        for system, batch in (("facto", 1), ("facto", 32), ("train", 32)):
            spec = {"system": system, "dir": str(model_dir), "batch": batch, "steps": 3}
            spec |= {"codec": "q4", "budget": None, "data": str(data), "work": str(work)}
            peak, report = run_peak(spec)
            arena = report["arena_bytes"]
            rows.append((name, system, batch, arena, peak, peak - max(fixed + arena, startup)))
    return rows


NOTES = [
    "## Notes",
    "",
    "- Under a budget the session fits its arena into what the budget leaves after the "
    "fixed cost and the safety margin, and reaches the batch asked for with micro-batches "
    "(gradient accumulation; the gradients are those of the whole batch): the budgeted row "
    "trains the same batch-32 steps as the others.",
    "- Without a budget, the arena at batch 32 holds the live activations, the saved "
    "buffers and one node's workspace at a time (each node has its own forward and backward "
    "workspace, live for that step only, so the planner lays it over dead activations).",
    "- The fixed cost is what the runtime keeps resident (numpy, numba and onnx imported, "
    "kernels loaded) after a session has loaded every kernel it needs and handed LLVM's "
    "pages back (runtime/preload.py); the start-up peak is the most the process holds "
    "while loading, before the arena exists. A budget must hold both (plus the margin). "
    "Numba's cache must be warm: a cold first run compiles, about 115 MiB more.",
    "- The codec's share is the seconds spent in encode and decode, added up over the "
    "lanes (the batch's slices, trained side by side on the cores), against the step's CPU "
    "seconds over all threads: set against wall time, two lanes' codec time would count "
    "twice.",
    "- `facto-edge train` holds about 3.5 MiB more than `facto_edge.train` (click, tqdm); "
    "it frees the arena before drawing metrics.png (matplotlib, about 46 MiB) and skips "
    "the plot, with a warning, where it would break the budget.",
    "",
]


def _mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def _saved_table(saved: dict, codecs: list[str]) -> list[str]:
    head = "| model | PyTorch dense | " + " | ".join(f"facto-edge {c}" for c in codecs) + " |"
    lines = [head, "| --- " * (2 + len(codecs)) + "|"]
    for name, row in saved.items():
        dense = row["dense"]
        cells = [f"{_mib(row[c])} ({100 * (1 - row[c] / dense):.1f}% less)" for c in codecs]
        lines.append(f"| {name} | {_mib(dense)} | " + " | ".join(cells) + " |")
    return lines


def _peak_table(peak: dict, fixed: int, startup: int) -> list[str]:
    dense = statistics.median(p for p, _ in peak["PyTorch dense"])
    lines = ["| system | peak RSS (median) | of PyTorch dense | arena | micro-batches |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for name, runs in peak.items():
        p = statistics.median(x for x, _ in runs)
        report = runs[0][1]
        arena = _mib(report["arena_bytes"]) if report else "n/a"
        parts = f"{report['accumulate']} x {report['micro_batch']}" if report else "n/a"
        lines.append(f"| {name} | {_mib(p)} | {100 * p / dense:.1f}% | {arena} | {parts} |")
    lines.append(
        f"\nThe runtime's measured fixed cost is {_mib(fixed)} (resident after loading), its "
        f"start-up peak {_mib(startup)}."
    )
    return lines


def _arena_table(arenas: dict) -> list[str]:
    lines = ["| model | arena | lower bound | arena / bound | every buffer apart | codec share |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for name, (m, step, codec, cpu) in arenas.items():
        ratio = m["arena_bytes"] / m["lower_bound"]
        share = (
            f"{100 * codec / cpu:.1f}% ({1000 * codec:.1f} of {1000 * cpu:.0f} ms CPU; "
            f"step {1000 * step:.0f} ms)"
        )
        lines.append(
            f"| {name} | {_mib(m['arena_bytes'])} | {_mib(m['lower_bound'])} | {ratio:.4f} | "
            f"{_mib(m['linear_bytes'])} | {share} |"
        )
    return lines


def _margin_table(rows: list[tuple]) -> list[str]:
    lines = ["| model | process | batch | arena | peak RSS | beyond the expected peak |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for name, system, batch, arena, peak, excess in rows:
        what = "TrainingSession" if system == "facto" else "facto_edge.train"
        lines.append(
            f"| {name} | {what} | {batch} | {_mib(arena)} | {_mib(peak)} | {_mib(excess)} |"
        )
    return lines


def plot(path: Path, saved: dict, codecs: list[str], peak: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    series = ["dense", *codecs]
    width = 0.8 / len(series)
    for i, key in enumerate(series):
        label = "PyTorch dense" if key == "dense" else f"facto-edge {key}"
        xs = np.arange(len(saved)) + i * width
        a.bar(xs, [row[key] / MiB for row in saved.values()], width, label=label)
    a.set_xticks(np.arange(len(saved)) + 0.4 - width / 2, list(saved))
    a.set_yscale("log")
    a.set_ylabel("saved for backward per step (MiB, log)")
    a.set_title("saved activations, batch 32, rank 0.25")
    a.legend(fontsize=8)
    names = list(peak)
    b.barh(names, [statistics.median(p for p, _ in peak[n]) / MiB for n in names])
    dense = statistics.median(p for p, _ in peak["PyTorch dense"]) / MiB
    b.axvline(0.3 * dense, color="red", ls="--", lw=1, label="30% of PyTorch dense")
    b.legend(fontsize=8, loc="lower right")
    b.set_xlabel("peak RSS of training (MiB)")
    b.set_title("peak RSS, resnet18_cifar, batch 32")
    b.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="resnet18_cifar,mobilenetv2_cifar,vgg11_bn_cifar")
    p.add_argument("--codecs", default="q4,q8,q2")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rank", type=float, default=0.25)
    p.add_argument("--peak-model", default="resnet18_cifar")
    p.add_argument("--budget", default="256MB", help="the budget of the budgeted peak run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work-dir", default="/tmp/bench_memory")
    p.add_argument("-o", "--output", default=str(ROOT / "docs" / "memory.md"))
    args = p.parse_args()
    started = datetime.now(timezone.utc)
    load0 = load_average()
    models, codecs = args.models.split(","), args.codecs.split(",")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    dirs = export_models(sorted({*models, args.peak_model, "simple_cnn"}), args.rank, work)
    # measured now, not an old cache entry; with q4's kernels, the codec the margins train
    fixed = measure_runtime_fixed_cost(refresh=True, codec="q4")
    startup = measure_runtime_startup_peak(codec="q4")
    saved = {
        name: {"dense": torch_dense_saved(name, args.batch)}
        | {c: facto_memory(dirs[name], args.batch, c)["saved_bytes"] for c in codecs}
        for name in models
    }
    arenas = {
        name: (
            facto_memory(dirs[name], args.batch, "q4"),
            *codec_share(dirs[name], args.batch, "q4"),
        )
        for name in models
    }
    peak = peaks(args, dirs)
    margin_rows = margins({n: dirs[n] for n in ["simple_cnn", *models]}, work, fixed, startup)
    out = Path(args.output)
    plot(out.with_suffix(".png"), saved, codecs, peak)
    command = "python tools/bench_memory.py " + " ".join(sys.argv[1:])
    lines = [
        "# Memory: saved activations, peak RSS, the arena",
        "",
        "Generated by `tools/bench_memory.py`; run it again rather than editing.",
        "",
        f"- Command: `{command.strip()}`",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; load average {load0} at the start, "
        f"{load_average()} at the end",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}",
        f"- Batch {args.batch}, rank {args.rank}, SGD momentum 0.9, peak runs x{args.repeats} "
        f"interleaved; budget {args.budget} = {format_size(parse_size(args.budget))}",
        "",
        "![saved activations and peak RSS](memory.png)",
        "",
        "## Saved activations per step",
        "",
        *_saved_table(saved, codecs),
        "",
        f"## Peak RSS of a {args.peak_model} training step at batch {args.batch}",
        "",
        *_peak_table(peak, fixed, startup),
        "",
        "## The arena against its lower bound; the codec's share of a step (q4)",
        "",
        *_arena_table(arenas),
        "",
        "## Safety margin",
        "",
        f"budget.SAFETY_MARGIN is {_mib(SAFETY_MARGIN)}; measured excess of peak RSS over "
        "the larger of the fixed cost plus the arena and the start-up peak:",
        "",
        *_margin_table(margin_rows),
        "",
        *NOTES,
    ]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
