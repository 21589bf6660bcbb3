"""Training throughput of the facto-edge runtime against PyTorch training the same
factorized model (same frozen factors, same trainable tensors, SGD with momentum),
measured side by side: rounds alternate the two systems (A B A B ...), and the median
step time of each is reported, with the process CPU time per step (on a busy machine a
system that spins shows CPU time well above its share) and the fastest step.

`--profile` then times one lane of facto-edge node by node (forward, codec encode,
decode, backward, gradient sums, optimizer), summed by op type, beside PyTorch's own
per-op profile of the same steps.

    python tools/bench_runtime.py resnet18_cifar --batch 32 --rank 0.25
    python tools/bench_runtime.py --model-dir model.facto --codec q4 --profile
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_ref import TorchReference  # noqa: E402

from facto_edge.runtime import TrainingSession  # noqa: E402


def _export(name: str, rank: float, out: Path) -> Path:
    from facto_edge import zoo
    from facto_edge.exporters.export import export

    export(zoo.build(name, seed=0), out, rank=rank, ort=False)
    return out


def _ours(model_dir: Path, batch: int, codec: str, layers: list[str] | None = None):
    s = TrainingSession(
        model_dir, batch_size=batch, lr=0.01, momentum=0.9, codec=codec, train_layers=layers
    )
    return lambda x, y: s.train_step(x, y), s


def _torch(model_dir: Path, layers: list[str] | None = None):
    ref = TorchReference.load(model_dir, layers)
    opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)

    def step(x: np.ndarray, y: np.ndarray) -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        return loss.item()

    return step


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _time(step, x, y, steps: int) -> list[tuple[float, float]]:
    """(wall, process CPU) seconds of each of `steps` steps."""
    times = []
    for _ in range(steps):
        c, t = _cpu(), time.perf_counter()
        step(x, y)
        times.append((time.perf_counter() - t, _cpu() - c))
    return times


def _profile_ours(session, x, y, steps: int) -> dict[str, float]:
    """Seconds per step by (phase, op type) of lane 0's executor on its slice of (x, y),
    run alone on this thread (serial kernels when the session has lanes, one BLAS thread,
    as each lane runs)."""
    from facto_edge.runtime.kernels import blas
    from facto_edge.runtime.kernels.dispatch import serial_in_this_thread

    lane, a, b = session.binding.slices(x.shape[0])[0]
    ex = session.binding.executor(b - a, lane)
    session.binding.feed_x(ex, x[a:b])
    session.binding.io.put(ex.values["facto:labels"], y[a:b])
    session.binding.io.fill(ex.grads["facto:loss"], (b - a) / x.shape[0])
    acc: dict[str, float] = collections.defaultdict(float)
    clock, codec = time.perf_counter, session.binding.spec.codec

    def timed(key: str, fn, *args) -> None:
        t = clock()
        fn(*args)
        acc[key] += clock() - t

    serial_in_this_thread(session.binding.lanes > 1)
    with blas.threads(1):
        for _ in range(steps):
            for k, st in enumerate(ex._forward):
                op = st.b.site.node.op_type
                st.b.ws = st.ws_fwd
                timed(f"forward {op}", st.op.forward, ex._k, st.b, True)
                for xa, buf in st.encode:
                    timed(f"encode {op}", codec.encode, xa, buf, k)
            for st in ex._backward:
                op = st.b.site.node.op_type
                st.b.ws = st.ws_bwd
                for buf, out in st.decode:
                    timed(f"decode {op}", codec.decode, buf, out)
                timed(f"backward {op}", st.op.backward, ex._k, st.b)
                for scratch, g in st.accumulate:
                    timed(f"grad sum {op}", ex._accumulate, g, scratch)
            timed("optimizer", session.optimizer.step, session.binding.grads)
    serial_in_this_thread(False)
    return {k: v / steps for k, v in acc.items()}


def _profile_torch(step, x, y, steps: int) -> list[tuple[str, float]]:
    """Seconds per step by aten op (self CPU time) of PyTorch's steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(x, y)
    rows = [(e.key, e.self_cpu_time_total / 1e6 / steps) for e in prof.key_averages()]
    return sorted(rows, key=lambda r: -r[1])


def _print_profiles(ours: dict[str, float], theirs: list[tuple[str, float]], lane_share: str):
    total = sum(ours.values())
    print(f"\nfacto-edge, one lane ({lane_share}), ms per step by phase and op type:")
    for key, sec in sorted(ours.items(), key=lambda kv: -kv[1])[:20]:
        print(f"  {key:40s} {sec * 1000:8.2f}  {100 * sec / total:5.1f}%")
    print(f"  {'total':40s} {total * 1000:8.2f}")
    total = sum(sec for _, sec in theirs)
    print("\nPyTorch, ms per step by op (self CPU time, all threads):")
    for key, sec in theirs[:20]:
        print(f"  {key:40s} {sec * 1000:8.2f}  {100 * sec / total:5.1f}%")
    print(f"  {'total':40s} {total * 1000:8.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", nargs="?", default="resnet18_cifar")
    p.add_argument("--model-dir", type=Path, help="an existing export (skips exporting)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rank", type=float, default=0.25)
    p.add_argument("--codec", default="fp32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per system per round")
    p.add_argument("--profile", action="store_true", help="then profile both, op by op")
    p.add_argument(
        "--train-layers", type=Path, default=None, metavar="RUN_DIR",
        help="train only the layers a run trained (its run.json: --train-layers auto)",
    )  # fmt: skip
    args = p.parse_args()
    layers = None
    if args.train_layers is not None:
        run = json.loads((args.train_layers / "run.json").read_text())
        layers = run["config"].get("train_layers") or None

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or _export(args.model, args.rank, Path(tmp) / "m.facto")
        t0 = time.perf_counter()
        ours, session = _ours(model_dir, args.batch, args.codec, layers)
        rng = np.random.default_rng(0)
        shape = tuple(session.input_shape)
        x = rng.standard_normal((args.batch, *shape)).astype(np.float32)
        y = rng.integers(0, session.num_classes, args.batch).astype(np.int64)
        ours(x, y)
        first = time.perf_counter() - t0
        theirs = _torch(model_dir, layers)
        theirs(x, y)
        times: dict[str, list[tuple[float, float]]] = {"facto-edge": [], "pytorch": []}
        for _ in range(args.rounds):
            times["facto-edge"] += _time(ours, x, y, args.steps)
            times["pytorch"] += _time(theirs, x, y, args.steps)
        if args.profile:
            profiles = (
                _profile_ours(session, x, y, args.steps),
                _profile_torch(theirs, x, y, args.steps),
            )

    med = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    name = args.model_dir.name if args.model_dir else args.model
    print(f"{name} batch {args.batch} codec {args.codec} threads {torch.get_num_threads()}")
    print(f"facto-edge time to first step: {first:.2f} s, lanes {session.binding.lanes}")
    for name, m in med.items():
        cpu = statistics.median(c for _, c in times[name])
        fastest = min(w for w, _ in times[name])
        print(
            f"{name:11s} {m * 1000:8.1f} ms/step  {args.batch / m:7.1f} img/s  "
            f"(cpu {cpu * 1000:.1f} ms/step, fastest {fastest * 1000:.1f} ms)"
        )
    print(f"ratio facto-edge / pytorch throughput: {med['pytorch'] / med['facto-edge']:.2f}")
    r = session.memory_report()
    print(f"saved {r['saved_bytes'] / 2**20:.1f} MiB, arena {r['arena_bytes'] / 2**20:.1f} MiB")
    if args.profile:
        lane = -(-args.batch // session.binding.lanes)
        _print_profiles(*profiles, f"{lane} of {args.batch} samples")


if __name__ == "__main__":
    main()
