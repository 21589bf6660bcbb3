"""Accuracy study: facto-edge fine-tuning against PyTorch full fine-tuning, on real data.

    python tools/accuracy_study.py --epochs 10 --seeds 0 1 2 -o docs/accuracy.md

Per seed: simple_cnn (1 x 16 x 16) is pretrained in PyTorch on task A, scikit-learn's
digits turned a quarter turn, and given a fresh (zeroed) head; task B is the upright
digits. The same pretrained model is then fine-tuned on task B's training split by

- PyTorch, every parameter trainable, BatchNorm in training mode (full fine-tuning);
- PyTorch on the factorized model at rank 0.25 with facto-edge's trainable set (the
  `last` factors and the classifier; tools/torch_ref.py): the method without the runtime;
- facto-edge at rank 0.25 (the same trainable set), with the lossless fp32 codec and the
  lossy q4 and q2 codecs for the saved activations, and at rank 0.5 with q4;

with the same batches (`iterate_batches`, same seed), SGD with momentum 0.9, the same
cosine learning rate per step, the same epochs. Each run is a fresh process, so its peak
resident memory (VmHWM) is its own. Accuracy is on the held-out test split of task B.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facto_edge.budget import format_size
from facto_edge.demo import (
    INPUT_SHAPE,
    dense_saved_bytes,
    pretrained_model,
    train_in_fresh_process,
    write_digits_npz,
)

CODECS = ("fp32", "q4", "q2")
BATCH = 32


def facto_run(model_dir: Path, data: Path, out: Path, codec: str, args, seed: int) -> dict:
    options = {
        "epochs": args.epochs,
        "batch_size": BATCH,
        "optimizer": "sgd",
        "lr": args.lr,
        "schedule": "cosine",
        "codec": codec,
        "seed": seed,
        "val_split": 0.0,
    }
    started = time.perf_counter()
    _, peak, memory, accuracy, loss, _ = train_in_fresh_process(model_dir, data, out, options, [])
    return {
        "accuracy": accuracy,
        "loss": loss,
        "peak_rss": peak,
        "saved": memory["saved_bytes"],
        "arena": memory["arena_bytes"],
        "seconds": time.perf_counter() - started,
    }


def _torch_model(kind: str, path: str):
    """(model, its trainable tensors): the TorchScript model whole, or the factorized
    model with facto-edge's trainable set."""
    import torch

    if kind == "full":
        model = torch.jit.load(path)
        return model, list(model.parameters())
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_ref import TorchReference

    ref = TorchReference.load(path)
    return ref, ref.parameters()


def _torch_process(queue, kind: str, path: str, data: str, epochs: int, lr: float, seed: int):
    """Fine-tuning in PyTorch on the batches facto-edge sees; reports to `queue`."""
    import torch

    from facto_edge.data import iterate_batches, open_dataset
    from facto_edge.evaluate import cross_entropy
    from facto_edge.fit import peak_rss_bytes
    from facto_edge.runtime.schedules import make_schedule

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model, params = _torch_model(kind, path)
    norm = {"mean": [0.5], "std": [0.5]}
    train = open_dataset(data, INPUT_SHAPE, split="train", num_classes=10, **norm)
    test = open_dataset(data, INPUT_SHAPE, split="test", num_classes=10, **norm)
    schedule = make_schedule("cosine", lr, epochs * -(-len(train) // BATCH))
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    step = 0
    getattr(model, "train", lambda: None)()
    for epoch in range(epochs):
        for x, y in iterate_batches(train, BATCH, shuffle=True, seed=seed, epoch=epoch):
            opt.param_groups[0]["lr"] = schedule(step)
            logits = model(torch.from_numpy(x))
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    getattr(model, "eval", lambda: None)()
    x, y = test.get(np.arange(len(test)))
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    accuracy, loss = float((logits.argmax(1) == y).mean()), float(cross_entropy(logits, y).mean())
    queue.put({"accuracy": accuracy, "loss": loss, "peak_rss": peak_rss_bytes()})


def torch_run(kind: str, path: Path, data: Path, args, seed: int, saved: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    started = time.perf_counter()
    run_args = (queue, kind, str(path), str(data), args.epochs, args.lr, seed)
    proc = ctx.Process(target=_torch_process, args=run_args)
    proc.start()
    result = queue.get()
    proc.join()
    return result | {"seconds": time.perf_counter() - started, "saved": saved, "arena": None}


def one_seed(work: Path, args, seed: int) -> dict[str, dict]:
    from facto_edge.exporters.export import export

    out = work / f"seed{seed}"
    out.mkdir()
    model, pt, source = pretrained_model(out, seed, print)
    print(f"seed {seed}: pretrained on task A, test accuracy {source:.3f}")
    for rank in (0.25, 0.5):
        export(pt, out / f"r{rank}.facto", rank=rank, ort=False)
    data = write_digits_npz(out / "digits.npz")
    r25 = out / "r0.25.facto"
    dense = dense_saved_bytes(model, BATCH)
    results = {
        "PyTorch full fine-tuning": torch_run("full", pt, data, args, seed, dense),
        "PyTorch r0.25, facto-edge's trainable set": torch_run(
            "factorized", r25, data, args, seed, 0
        ),
    }
    for rank, codec in [(0.25, c) for c in CODECS] + [(0.5, "q4")]:
        model_dir = out / f"r{rank}.facto"
        name = f"facto-edge r{rank} {codec}"
        results[name] = facto_run(model_dir, data, out / f"r{rank}-{codec}", codec, args, seed)
    for name, r in results.items():
        print(f"  {name:<42} accuracy {r['accuracy']:.4f}  peak {format_size(r['peak_rss'])}")
    return results


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def table(runs: list[dict[str, dict]]) -> str:
    head = (
        "| method | test accuracy % (mean ± sd) | per seed | saved for backward per step "
        "| runtime buffers | peak RSS of the process | wall time |"
    )
    lines = [head, "|" + " --- |" * 7]
    for name in runs[0]:
        rs = [run[name] for run in runs]
        acc = [r["accuracy"] for r in rs]
        arena = format_size(rs[0]["arena"]) if rs[0]["arena"] else "-"
        lines.append(
            f"| {name} | {_mean_std(acc)} | {', '.join(f'{100 * a:.1f}' for a in acc)} | "
            f"{format_size(rs[0]['saved']) if rs[0]['saved'] else '-'} | {arena} | "
            f"{format_size(max(r['peak_rss'] for r in rs))} | "
            f"{statistics.mean(r['seconds'] for r in rs):.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("-o", "--output", type=Path, default=None, help="Markdown table file.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one_seed(Path(tmp), args, seed) for seed in args.seeds]
    text = table(runs)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
