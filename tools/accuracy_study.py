"""Accuracy study: facto-edge fine-tuning against PyTorch full fine-tuning, on real data.

    python tools/accuracy_study.py --epochs 10 --seeds 0 1 2 -o tables.md  # docs/accuracy.md

Per seed: simple_cnn (1 x 16 x 16) is pretrained in PyTorch on task A, scikit-learn's
digits turned a quarter turn, and given a fresh (zeroed) head; task B is the upright
digits. The same pretrained model is then fine-tuned on task B's training split by

- PyTorch, every parameter trainable, BatchNorm in training mode (full fine-tuning);
- PyTorch on the factorized model with facto-edge's trainable set (tools/torch_ref.py):
  the method without the runtime, for each export configuration (CONFIGS);
- facto-edge, for each configuration at rank 0.25 with the lossless fp32 codec and the
  lossy q4 and q2 codecs for the saved activations, and at rank 0.5 with q4;

with the same batches (`iterate_batches`, same seed), SGD with momentum 0.9, the same
cosine learning-rate schedule per step, the same epochs. Each run is a fresh process, so
its peak resident memory (VmHWM) is its own. Accuracy is on the held-out test split of
task B.

Learning rate: unless --lr fixes one for all, every method gets the same tuning: each
learning rate of --lrs is tried on every seed, training on 80 % of task B's training split
and scoring on the other 20 % (stratified, from the seed; the test split is never seen),
and the method keeps the rate with the best mean validation accuracy. Full fine-tuning is
tuned in PyTorch; each factorized configuration is tuned with its PyTorch reference
(same model, same trainable set, same batches: the runtime matches it, see the table),
and its facto-edge runs, whatever the codec, use that rate.
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

from facto_edge.child import next_message
from facto_edge.demo import (
    INPUT_SHAPE,
    dense_saved_bytes,
    pretrained_model,
    train_in_fresh_process,
    write_digits_npz,
)
from facto_edge.runtime.budget import format_size

CODECS = ("fp32", "q4", "q2")
BATCH = 32
VAL_FRACTION = 0.2
LRS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
# Export configurations: (label, export options). The first is the exporter's default.
CONFIGS = {
    "r0.25": ("r0.25 (export defaults: last factor, BN folded)", {"rank": 0.25}),
    "r0.25-bn": ("r0.25 --bn train", {"rank": 0.25, "bn": "train"}),
    "r0.25-cl-bn": (
        "r0.25 --train core,last --bn train",
        {"rank": 0.25, "train": "core,last", "bn": "train"},
    ),
    "r0.5": ("r0.5 (last factor, BN folded)", {"rank": 0.5}),
}
# facto-edge runs: (configuration, codec)
FACTO_RUNS = [("r0.25", c) for c in CODECS] + [("r0.25-bn", "q4")]
FACTO_RUNS += [("r0.25-cl-bn", c) for c in CODECS] + [("r0.5", "q4")]
REFERENCES = ("r0.25", "r0.25-cl-bn")  # PyTorch reference runs in the final table


def facto_run(model_dir: Path, data: Path, out: Path, codec: str, lr: float, args, seed: int):
    options = {
        "epochs": args.epochs,
        "batch_size": BATCH,
        "optimizer": "sgd",
        "lr": lr,
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
        "lr": lr,
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


def _datasets(data: str, seed: int, validate: bool):
    """(train, test) of task B, or with `validate` (80 % of train, the other 20 %)."""
    from facto_edge.data import open_dataset
    from facto_edge.data.split import split_validation

    norm = {"mean": [0.5], "std": [0.5]}
    train = open_dataset(data, INPUT_SHAPE, split="train", num_classes=10, **norm)
    if validate:
        return split_validation(train, VAL_FRACTION, seed)
    return train, open_dataset(data, INPUT_SHAPE, split="test", num_classes=10, **norm)


def _torch_finetune(kind: str, path: str, train, test, epochs: int, lr: float, seed: int):
    """(accuracy, loss) on `test` after fine-tuning in PyTorch on the batches facto-edge
    sees."""
    import torch

    from facto_edge.data import iterate_batches
    from facto_edge.evaluate import cross_entropy
    from facto_edge.runtime.schedules import make_schedule

    torch.manual_seed(seed)
    model, params = _torch_model(kind, path)
    schedule = make_schedule("cosine", lr, epochs * -(-len(train) // BATCH))
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    step = 0
    model.train()
    for epoch in range(epochs):
        for x, y in iterate_batches(train, BATCH, shuffle=True, seed=seed, epoch=epoch):
            opt.param_groups[0]["lr"] = schedule(step)
            logits = model(torch.from_numpy(x))
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    model.eval()
    x, y = test.get(np.arange(len(test)))
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    return float((logits.argmax(1) == y).mean()), float(cross_entropy(logits, y).mean())


def _torch_process(queue, kind: str, path: str, data: str, epochs: int, lr: float, seed: int):
    """One fine-tuning in PyTorch, scored on the test split; reports to `queue`."""
    import torch

    from facto_edge.runtime.rss import peak_rss_bytes

    torch.set_num_threads(1)
    train, test = _datasets(data, seed, validate=False)
    accuracy, loss = _torch_finetune(kind, path, train, test, epochs, lr, seed)
    queue.put({"accuracy": accuracy, "loss": loss, "peak_rss": peak_rss_bytes(), "lr": lr})


def _tuning_process(queue, runs: list, data: str, epochs: int, seed: int):
    """Validation accuracy of each (name, kind, path, lr) in `runs`; reports to `queue`."""
    import torch

    torch.set_num_threads(1)
    train, val = _datasets(data, seed, validate=True)
    results = {}
    for name, kind, path, lr in runs:
        results[(name, lr)] = _torch_finetune(kind, path, train, val, epochs, lr, seed)[0]
        print(f"  seed {seed} {name:<16} lr {lr:<5} validation {results[(name, lr)]:.4f}")
    queue.put(results)


def _in_process(target, args: tuple):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(queue, *args))
    proc.start()
    try:
        return next_message(queue, proc, f"child process of {target.__name__}")
    finally:
        proc.join()


def torch_run(kind: str, path: Path, data: Path, lr: float, args, seed: int, saved: int):
    started = time.perf_counter()
    result = _in_process(_torch_process, (kind, str(path), str(data), args.epochs, lr, seed))
    return result | {"seconds": time.perf_counter() - started, "saved": saved, "arena": None}


def prepare_seed(work: Path, seed: int) -> dict:
    """Pretrain, export every configuration and write the data of one seed."""
    from facto_edge.exporters.export import export

    out = work / f"seed{seed}"
    out.mkdir()
    model, pt, source = pretrained_model(out, seed, print)
    print(f"seed {seed}: pretrained on task A, test accuracy {source:.3f}")
    for key, (_, options) in CONFIGS.items():
        export(pt, out / f"{key}.facto", ort=False, **options)
    data = write_digits_npz(out / "digits.npz")
    return {"seed": seed, "out": out, "pt": pt, "data": data,
            "dense": dense_saved_bytes(model, BATCH)}  # fmt: skip


def _kinds(prep: dict) -> list[tuple[str, str, Path]]:
    """(name, kind, path) of every method tuned in PyTorch."""
    kinds = [("full", "full", prep["pt"])]
    return kinds + [(key, "factorized", prep["out"] / f"{key}.facto") for key in CONFIGS]


def tune(preps: list[dict], args) -> tuple[dict[str, float], dict]:
    """The learning rate of each method (best mean validation accuracy over the seeds)
    and every validation accuracy, {(name, lr): [per seed]}."""
    scores: dict = {}
    for prep in preps:
        runs = [(name, kind, str(path), lr) for name, kind, path in _kinds(prep) for lr in args.lrs]
        found = _in_process(_tuning_process, (runs, str(prep["data"]), args.epochs, prep["seed"]))
        for key, acc in found.items():
            scores.setdefault(key, []).append(acc)
    chosen = {}
    for name, _, _ in _kinds(preps[0]):
        means = [(statistics.mean(scores[(name, lr)]), -lr) for lr in args.lrs]
        chosen[name] = -max(means)[1]  # the best mean; the smaller rate on a tie
    return chosen, scores


def one_seed(prep: dict, lrs: dict[str, float], args) -> dict[str, dict]:
    seed, out, data = prep["seed"], prep["out"], prep["data"]
    results = {
        "PyTorch full fine-tuning": torch_run(
            "full", prep["pt"], data, lrs["full"], args, seed, prep["dense"]
        )
    }
    for key in REFERENCES:
        name = f"PyTorch {CONFIGS[key][0]}, facto-edge's trainable set"
        results[name] = torch_run("factorized", out / f"{key}.facto", data, lrs[key], args, seed, 0)
    for key, codec in FACTO_RUNS:
        name = f"facto-edge {CONFIGS[key][0]}, {codec}"
        run_dir = out / f"{key}-{codec}"
        results[name] = facto_run(out / f"{key}.facto", data, run_dir, codec, lrs[key], args, seed)
    for name, r in results.items():
        print(f"  {name:<72} accuracy {r['accuracy']:.4f}  peak {format_size(r['peak_rss'])}")
    return results


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def table(runs: list[dict[str, dict]]) -> str:
    head = (
        "| method | lr | test accuracy % (mean ± sd) | per seed | saved for backward per step "
        "| runtime buffers | peak RSS of the process | wall time |"
    )
    lines = [head, "|" + " --- |" * 8]
    for name in runs[0]:
        rs = [run[name] for run in runs]
        acc = [r["accuracy"] for r in rs]
        arena = format_size(rs[0]["arena"]) if rs[0]["arena"] else "-"
        lines.append(
            f"| {name} | {rs[0]['lr']:g} | {_mean_std(acc)} | "
            f"{', '.join(f'{100 * a:.1f}' for a in acc)} | "
            f"{format_size(rs[0]['saved']) if rs[0]['saved'] else '-'} | {arena} | "
            f"{format_size(max(r['peak_rss'] for r in rs))} | "
            f"{statistics.mean(r['seconds'] for r in rs):.0f} s |"
        )
    return "\n".join(lines)


def tuning_table(scores: dict, chosen: dict[str, float], lrs: list[float]) -> str:
    """Mean validation accuracy per method and learning rate; the chosen one in bold."""
    names = {"full": "PyTorch full fine-tuning"} | {k: v[0] for k, v in CONFIGS.items()}
    lines = ["| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |"]
    lines.append("|" + " --- |" * (len(lrs) + 1))
    for key, label in names.items():
        cells = []
        for lr in lrs:
            cell = f"{100 * statistics.mean(scores[(key, lr)]):.1f}"
            cells.append(f"**{cell}**" if lr == chosen[key] else cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=None, help="One rate for all: no tuning.")
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("-o", "--output", type=Path, default=None, help="Markdown table file.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        preps = [prepare_seed(Path(tmp), seed) for seed in args.seeds]
        if args.lr is None:
            lrs, scores = tune(preps, args)
            tuned = tuning_table(scores, lrs, args.lrs)
        else:
            lrs, tuned = {name: args.lr for name, _, _ in _kinds(preps[0])}, ""
        print(f"learning rates: {lrs}")
        runs = [one_seed(prep, lrs, args) for prep in preps]
    text = table(runs)
    if tuned:
        text += "\n\nValidation accuracy % (mean over the seeds) per learning rate:\n\n" + tuned
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
