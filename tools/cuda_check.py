"""The CUDA backend on a machine with an NVIDIA GPU (a Jetson, or any CUDA card): run the
CUDA tests on the device (no simulator), then train the same factorized model with
facto-edge (device="cuda") and with PyTorch on CUDA, and write the figures to
docs/cuda.md: test results, images/s, and device memory (facto-edge's planned arena and
the device memory its process holds; PyTorch's peak allocated and reserved bytes).

    python tools/cuda_check.py                                 # resnet18_cifar, batch 32
    python tools/cuda_check.py --model-dir model.facto --batch 64 --codec q4
    python tools/cuda_check.py --skip-tests --out /tmp/cuda.md

Needs the cuda extra (`pip install 'facto-edge[cuda]'`), and for the PyTorch column a
CUDA build of torch (the column is left out without one). Exits non-zero when the tests
fail or CUDA is missing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from facto_edge.errors import DeviceError  # noqa: E402
from facto_edge.runtime.device import resolve_device  # noqa: E402

MiB = 2**20


@dataclass
class Result:
    """One system's figures: median step time, images/s, memory in bytes."""

    system: str
    step_s: float
    images_per_s: float
    memory: dict[str, int]


def run_tests() -> tuple[bool, str]:
    """pytest on tests/runtime/test_cuda.py on the device: (passed, summary line)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]
    cmd.append(str(ROOT / "tests" / "runtime" / "test_cuda.py"))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    summary = lines[-1].strip("= ") if lines else proc.stdout[-2000:] + proc.stderr[-2000:]
    if proc.returncode:
        print(proc.stdout[-8000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
    return proc.returncode == 0, summary


def _export(name: str, rank: float, out: Path) -> Path:
    from facto_edge import zoo
    from facto_edge.exporters.export import export

    export(zoo.build(name, seed=0), out, rank=rank, ort=False)
    return out


def _median_step(step, x, y, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step(x, y)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step(x, y)  # returns the loss as a float: the device has finished the step
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_ours(model_dir: Path, batch: int, codec: str, warmup: int, steps: int, data):
    from numba import cuda

    from facto_edge.runtime import TrainingSession

    free0 = cuda.current_context().get_memory_info()[0]
    s = TrainingSession(model_dir, batch_size=batch, lr=0.01, codec=codec, device="cuda")
    x, y = data(s)
    step_s = _median_step(s.train_step, x, y, warmup, steps)
    report = s.memory_report()
    used = free0 - cuda.current_context().get_memory_info()[0]
    memory = {
        "device arena": report["device_arena_bytes"],
        "device held by the session": used,
        "host peak RSS": report["host_peak_rss_bytes"],
    }
    return Result("facto-edge (numba.cuda)", step_s, batch / step_s, memory), s


def bench_torch(model_dir: Path, batch: int, warmup: int, steps: int, x, y) -> Result | None:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from torch_ref import TorchReference

    ref = TorchReference.load(model_dir)
    ref.tensors = {
        k: v.detach().to("cuda").requires_grad_(v.requires_grad) for k, v in ref.tensors.items()
    }
    opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

    def step(_x, _y) -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ref(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    torch.cuda.reset_peak_memory_stats()
    step_s = _median_step(step, x, y, warmup, steps)
    memory = {
        "peak allocated": torch.cuda.max_memory_allocated(),
        "peak reserved": torch.cuda.max_memory_reserved(),
    }
    return Result(f"PyTorch {torch.__version__} CUDA", step_s, batch / step_s, memory)


def _versions() -> str:
    import numba
    from numba import cuda

    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
    try:
        from importlib.metadata import version

        nc = version("numba-cuda")
    except Exception:  # noqa: BLE001 - only for the report
        nc = "not installed"
    cc = ".".join(map(str, dev.compute_capability))
    return (
        f"GPU: {name} (compute capability {cc}); numba {numba.__version__}, numba-cuda "
        f"{nc}; Python {platform.python_version()} on {platform.machine()}"
    )


def write_doc(out: Path, args, tests: tuple[bool, str] | None, results: list[Result]) -> None:
    lines = [
        "# facto-edge on CUDA",
        "",
        f"Written by `tools/cuda_check.py` on {datetime.date.today()}. {_versions()}.",
        "",
        "## Tests",
        "",
    ]
    if tests is None:
        lines.append("Not run (`--skip-tests`).")
    else:
        lines.append(
            f"`tests/runtime/test_cuda.py` on the device: **{'pass' if tests[0] else 'FAIL'}** "
            f"({tests[1]})."
        )
    lines += [
        "",
        f"## Training throughput: {args.model_label}, batch {args.batch}, codec {args.codec}",
        "",
        f"Median of {args.steps} steps after {args.warmup} warm-up steps, SGD momentum 0.9.",
        "",
        "| system | ms/step | images/s | memory |",
        "| --- | ---: | ---: | --- |",
    ]
    for r in results:
        mem = ", ".join(f"{k} {v / MiB:.1f} MiB" for k, v in r.memory.items())
        lines.append(f"| {r.system} | {r.step_s * 1e3:.1f} | {r.images_per_s:.1f} | {mem} |")
    if len(results) == 1:
        lines += ["", "PyTorch CUDA was not available: no comparison."]
    else:
        ratio = results[0].images_per_s / results[1].images_per_s
        lines += ["", f"facto-edge / PyTorch throughput: {ratio:.2f}."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", nargs="?", default="resnet18_cifar")
    p.add_argument("--model-dir", type=Path, help="an existing export (skips exporting)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rank", type=float, default=0.25)
    p.add_argument("--codec", default="q4")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "cuda.md")
    args = p.parse_args()
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print("NUMBA_ENABLE_CUDASIM=1 is set: this tool measures a real GPU", file=sys.stderr)
        return 2
    try:
        resolve_device("cuda")
    except DeviceError as e:
        print(f"cuda_check: {e}", file=sys.stderr)
        return 2
    tests = None if args.skip_tests else run_tests()
    args.model_label = str(args.model_dir) if args.model_dir else f"{args.model} rank {args.rank}"
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or _export(args.model, args.rank, Path(tmp) / "m.facto")
        rng = np.random.default_rng(0)

        def data(session):
            shape = tuple(session.input_shape)
            x = rng.standard_normal((args.batch, *shape)).astype(np.float32)
            y = rng.integers(0, session.num_classes, args.batch).astype(np.int64)
            return x, y

        ours, session = bench_ours(model_dir, args.batch, args.codec, args.warmup, args.steps, data)
        x, y = data(session)
        theirs = bench_torch(model_dir, args.batch, args.warmup, args.steps, x, y)
    results = [ours] + ([theirs] if theirs else [])
    write_doc(args.out, args, tests, results)
    print(args.out.read_text())
    return 0 if tests is None or tests[0] else 1


if __name__ == "__main__":
    sys.exit(main())
