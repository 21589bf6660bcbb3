"""Training throughput of the facto-edge runtime against PyTorch training the same
factorized model (same frozen factors, same trainable tensors, SGD with momentum),
measured side by side: rounds alternate the two systems (A B A B ...), and the median
step time of each is reported.

    python tools/bench_runtime.py resnet18_cifar --batch 32 --rank 0.25
    python tools/bench_runtime.py --model-dir model.facto --codec q4
"""

from __future__ import annotations

import argparse
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


def _ours(model_dir: Path, batch: int, codec: str):
    s = TrainingSession(model_dir, batch_size=batch, lr=0.01, momentum=0.9, codec=codec)
    return lambda x, y: s.train_step(x, y), s


def _torch(model_dir: Path):
    ref = TorchReference.load(model_dir)
    opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9)

    def step(x: np.ndarray, y: np.ndarray) -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        return loss.item()

    return step


def _time(step, x, y, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step(x, y)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", nargs="?", default="resnet18_cifar")
    p.add_argument("--model-dir", type=Path, help="an existing export (skips exporting)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rank", type=float, default=0.25)
    p.add_argument("--codec", default="fp32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per system per round")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or _export(args.model, args.rank, Path(tmp) / "m.facto")
        t0 = time.perf_counter()
        ours, session = _ours(model_dir, args.batch, args.codec)
        rng = np.random.default_rng(0)
        shape = tuple(session._graph.input_shape)
        x = rng.standard_normal((args.batch, *shape)).astype(np.float32)
        y = rng.integers(0, session._graph.num_classes, args.batch).astype(np.int64)
        ours(x, y)
        first = time.perf_counter() - t0
        theirs = _torch(model_dir)
        theirs(x, y)
        times: dict[str, list[float]] = {"facto-edge": [], "pytorch": []}
        for _ in range(args.rounds):
            times["facto-edge"] += _time(ours, x, y, args.steps)
            times["pytorch"] += _time(theirs, x, y, args.steps)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.model} batch {args.batch} codec {args.codec} threads {torch.get_num_threads()}")
    print(f"facto-edge time to first step: {first:.2f} s")
    for name, m in med.items():
        print(f"{name:11s} {m * 1000:8.1f} ms/step  {args.batch / m:7.1f} img/s")
    print(f"ratio facto-edge / pytorch throughput: {med['pytorch'] / med['facto-edge']:.2f}")
    r = session.memory_report()
    print(f"saved {r['saved_bytes'] / 2**20:.1f} MiB, arena {r['arena_bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
