"""CIFAR accuracy study (issue 16): fine-tuning on real photos, facto-edge against PyTorch.

    python tools/cifar_study.py --work /tmp/acc3 --jobs 2 -o tables.md \\
        --plot docs/accuracy_cifar.png  # docs/accuracy.md

Data: a folder of CIFAR-10 photos, one class folder each (--data, default
../shared/data/cifar10-10k: 1,000 training photos per class).

- pretraining (task A), once, from --pretrain-seed: resnet20_cifar with five outputs,
  trained in PyTorch on classes 0-4 (airplane .. deer; crop and flip, SGD momentum 0.9,
  cosine) from 90 % of their photos, the other 10 % (stratified) held back to check it;
  its head is then zeroed, a fresh classifier for task B. Cached in the work directory;
  every seed fine-tunes it (one pretraining per seed did not fit the machine's time).
- fine-tuning (task B), per seed (10 epochs by default; the pretraining 30): classes 5-9
  (dog .. truck), 500 photos each (a stratified half, from the seed), random
  4-pixel-padded crop and horizontal flip, SGD momentum 0.9, cosine schedule per step,
  batch 32, the same epochs and the same batches in the same order for every method
  (`iterate_batches`, same seed); test accuracy on the other 500 photos of each class,
  never trained on.

Methods: PyTorch full fine-tuning (every parameter, BatchNorm in training mode); PyTorch
head only (the body frozen in eval mode); PyTorch biases and BatchNorm only (TinyTL's
baseline: BN scales and shifts, the biases and the head, BN in training mode); and
facto-edge through the runtime (`export` + `train` in a fresh process that imports only
the runtime) for FACTO_RUNS and LATER_RUNS, and the PyTorch reference of the --bn train
configurations of REFERENCE_RUNS (see there why).

Learning rate: tuned per method on a validation split of task B's training photos (20 %,
stratified, from the seed; the test photos are never seen) on the --tune-seeds, over
--lrs, with the same epochs, for the methods of TORCH_METHODS and TUNED (the others share
a rate, see TUNED); the best mean validation accuracy wins (the smaller rate on a tie).
PyTorch methods are tuned as they are; each facto-edge configuration through its
PyTorch reference (tools/torch_ref.py: the same factorized model, trainable set and
batches), whose rate its facto-edge runs use whatever the codec.

Saved bytes per step (batch 32): facto-edge's `memory_report()["saved_bytes"]`; for the
PyTorch methods the storages autograd keeps for their own trainable set (saved-tensor
hooks, parameters not counted). "Below dense" is against PyTorch full fine-tuning.

Every run writes its result as JSON in the work directory, and a later invocation reuses
it: an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_study import _in_process, _mean_std  # noqa: E402

from facto_edge.demo import train_in_fresh_process  # noqa: E402
from facto_edge.runtime.budget import format_size  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-10k"
SHAPE = (3, 32, 32)
MODEL = "resnet20_cifar"
CLASSES_A, CLASSES_B = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
HOLDOUT_A = 0.1  # of task A's photos, to check the pretraining
TEST_B = 0.5  # of task B's photos: 500 per class tested, 500 fine-tuned on
VAL_FRACTION = 0.2  # of task B's training photos, for the learning-rate tuning
BATCH = 32
LRS = (0.01, 0.03, 0.1)
PRETRAIN = {"epochs": 30, "threads": 1, "lr": 0.1, "batch": 64, "weight_decay": 5e-4}
TORCH_METHODS = {
    "full": "PyTorch full fine-tuning",
    "head": "PyTorch head only",
    "bias_bn": "PyTorch biases and BN only (TinyTL)",
}
# Export configurations: key -> export options (delta: frozen W plus a low-rank update).
TRAIN_SETS = {"last": "last", "cl": "core,last", "delta": "delta"}
CONFIGS = {
    f"r{rank}-{key}-{bn}": {"rank": rank, "train": train, "bn": bn}
    for key, train in TRAIN_SETS.items()
    for rank in (0.25, 0.5)
    for bn in ("fold", "train")
}
# Full rank (every factor of the Tucker-2 kept), core,last: the factorized model's whole
# capacity, a fine-tuning as wide as PyTorch's; the sparse update makes it fit.
CONFIGS["r1-cl-train"] = {"rank": 1.0, "train": "core,last", "bn": "train"}
CODECS = ("fp32", "q4", "q2")
# Runs, sized to fit about two hours of two shared cores (docs/accuracy.md says what was
# left out), every facto-edge row through the runtime: the export defaults (r0.25 last
# fold, q4); the residual update (delta) with BN folded and the head's rate at 10x (the
# best BN-folded row of the reduced study); delta with batch-statistics BN (--bn train) at
# both ranks with q2, the codec that puts --bn train at least 93 % below PyTorch dense; and
# the sparse update: q4 and the layers that matter most within 3.2 MiB saved per step
# (93.1 % below PyTorch dense's 46.4 MiB), --train-layers auto (runtime/importance.py).
# A fourth element is that limit in MiB. The plan's saved bytes are reported for every
# configuration of CONFIGS.
HEAD_X10 = {"head": 10.0}
FACTO_RUNS = [("r0.5-delta-train", "q2", None), ("r1-cl-train", "q2", None, 3.2)]
REFERENCE_RUNS: list[str] = []
# Run on the first seed only (--seeds 0 after the rows above: time ran short).
SEED0_RUNS = [("r0.25-last-fold", "q4", None), ("r0.25-delta-fold", "q4", HEAD_X10)]
SEED0_RUNS += [("r0.25-delta-train", "q2", None), ("r0.25-delta-train", "q4", None, 3.2)]
LATER_RUNS: list = []
LATER_REFERENCE_RUNS: list[str] = []
# Learning rates: tuned for TUNED; a rank 0.5 configuration takes its rank 0.25 sibling's,
# an untuned one the rate of SHARED's, a per-group rate the base rate of its configuration.
TUNED = ["r0.25-delta-fold", "r0.25-delta-train", "r1-cl-train"]
SHARED = {"r0.25-last-fold": "r0.25-delta-fold", "r0.25-cl-train": "r0.25-delta-train"}
GROUP_TUNED: dict[str, tuple[str, dict]] = {}
REPORT_ONLY = False  # --report: gather the cached results, run nothing


def label(key: str, lr_groups: dict | None = None, layers: float | None = None) -> str:
    o = CONFIGS[key]
    text = f"r{o['rank']} --train {o['train']} --bn {o['bn']}"
    if lr_groups:
        text += " --lr-groups " + ",".join(f"{g}={v:g}" for g, v in lr_groups.items())
    if layers:
        text += f" --train-layers auto:{layers:g}MiB"
    return text


def run_tag(lr_groups: dict | None, layers: float | None) -> str:
    """The file-name tag of a run's options beside configuration and codec."""
    return ("-head10" if lr_groups else "") + (f"-auto{layers:g}" if layers else "")


def rate_of(key: str, lr_groups: dict | None, lrs: dict[str, float]) -> float:
    """The learning rate of a configuration (see TUNED)."""
    base = key.replace("r0.5-", "r0.25-") if key.startswith("r0.5-") else key
    for name, (k, g) in GROUP_TUNED.items():
        if k == base and g == lr_groups:
            return lrs[name]
    return lrs[SHARED.get(base, base)]


# --- data ---------------------------------------------------------------------------


def photos(work: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NHWC images, labels) of every photo under `root`, cached in `work`."""
    cache = work / "photos.npz"
    if not cache.exists():
        from facto_edge.data import open_dataset

        ds = open_dataset(str(root), SHAPE, split="train", on_corrupt="fail")
        x, y = ds.get(np.arange(len(ds)))
        raw = np.round(x.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
        np.savez(cache, x=raw, y=y, classes=np.array(ds.classes))
    with np.load(cache) as f:
        return f["x"], f["y"]


def _task(x: np.ndarray, y: np.ndarray, classes: tuple[int, ...]):
    keep = np.isin(y, classes)
    return x[keep], np.searchsorted(classes, y[keep]).astype(np.int64)


def write_seed_data(out: Path, x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Path]:
    """Task A's (train, held back) and task B's (fine-tune, test) and (fine-tune minus
    validation, validation) as .npz archives (x, y, x_test, y_test) under `out`."""
    from facto_edge.data.split import stratified_split

    paths = {name: out / f"{name}.npz" for name in ("task_a", "task_b", "task_b_val")}
    if all(p.exists() for p in paths.values()):
        return paths
    xa, ya = _task(x, y, CLASSES_A)
    rest, held = stratified_split(ya, HOLDOUT_A, seed)
    np.savez(paths["task_a"], x=xa[rest], y=ya[rest], x_test=xa[held], y_test=ya[held])
    xb, yb = _task(x, y, CLASSES_B)
    train, test = stratified_split(yb, TEST_B, seed)
    np.savez(paths["task_b"], x=xb[train], y=yb[train], x_test=xb[test], y_test=yb[test])
    xt, yt = xb[train], yb[train]
    fit, val = stratified_split(yt, VAL_FRACTION, seed)
    np.savez(paths["task_b_val"], x=xt[fit], y=yt[fit], x_test=xt[val], y_test=yt[val])
    return paths


def _open(path: str, split: str):
    from facto_edge import zoo
    from facto_edge.data import open_dataset

    norm = zoo.metadata(SHAPE, 5)["normalization"]
    return open_dataset(path, SHAPE, split=split, num_classes=5, **norm)


# --- PyTorch ------------------------------------------------------------------------


def _pretrain_process(queue, data: str, out: str, seed: int, epochs: int) -> None:
    """Pretrain on task A (see the module docstring); writes pretrained.pt and
    pretrained.pth (state dict, head zeroed) under `out`."""
    import torch

    from facto_edge import zoo
    from facto_edge.pretrain import reset_classifier

    torch.set_num_threads(PRETRAIN["threads"])
    train, held = _open(data, "train"), _open(data, "test")
    model = zoo.build(MODEL, seed=seed, num_classes=5)
    opt = torch.optim.SGD(
        [{"params": model.parameters(), "scale": 1.0}], lr=PRETRAIN["lr"], momentum=0.9,
        weight_decay=PRETRAIN["weight_decay"],
    )  # fmt: skip
    _fit(model, opt, train, epochs, PRETRAIN["lr"], PRETRAIN["batch"], seed)
    accuracy = _accuracy(model, held)
    reset_classifier(model)
    torch.save(model.state_dict(), Path(out) / "pretrained.pth")
    zoo.save_torchscript(model, Path(out) / "pretrained.pt", zoo.metadata(SHAPE, 5))
    queue.put({"accuracy": accuracy, "epochs": epochs})


def _fit(model, opt, train, epochs: int, lr: float, batch: int, seed: int, set_mode=None):
    """Train with `opt` on the augmented batches of `train`, cosine schedule per step."""
    import torch

    from facto_edge.data import iterate_batches
    from facto_edge.runtime.schedules import make_schedule

    schedule = make_schedule("cosine", lr, epochs * -(-len(train) // batch))
    (set_mode or (lambda: model.train()))()
    step = 0
    for epoch in range(epochs):
        for x, y in iterate_batches(
            train, batch, shuffle=True, seed=seed, epoch=epoch, augment=True
        ):
            for group in opt.param_groups:
                group["lr"] = schedule(step) * group["scale"]
            loss = torch.nn.functional.cross_entropy(
                model(torch.from_numpy(x)), torch.from_numpy(y)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1


def _accuracy(model, ds) -> float:
    import torch

    model.eval()
    hits = 0
    with torch.no_grad():
        for start in range(0, len(ds), 500):
            x, y = ds.get(np.arange(start, min(start + 500, len(ds))))
            hits += int((model(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
    return hits / len(ds)


def _method(kind: str, prep: dict, config: str | None):
    """(model, trainable tensors, training-mode setter) of a PyTorch method."""
    import torch

    from facto_edge import zoo

    if kind == "ref":
        from torch_ref import TorchReference

        ref = TorchReference.load(prep["out"] / f"{config}.facto")
        return ref, ref.parameters(), ref.train
    model = zoo.build(MODEL, num_classes=5)
    model.load_state_dict(torch.load(prep["pretrained"] / "pretrained.pth"))
    if kind == "full":
        params = list(model.parameters())
    elif kind == "head":
        params = list(model.linear.parameters())
    else:  # bias_bn
        bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        params = [p for m in bn for p in m.parameters()]
        seen = {id(p) for p in params}
        biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
        params += [p for p in [model.linear.weight, *biases] if id(p) not in seen]
    chosen = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    set_mode = model.eval if kind == "head" else model.train
    return model, params, set_mode


def saved_bytes(model, params, set_mode) -> int:
    """Bytes autograd keeps for backward in one step at batch BATCH, each storage once,
    the parameters not at all."""
    import torch

    skip = {p.untyped_storage().data_ptr() for p in params}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip and not (isinstance(t, torch.nn.Parameter)):
            kept[s.data_ptr()] = s.nbytes()
        return t

    set_mode()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.zeros(BATCH, *SHAPE)).sum().backward()
    return sum(kept.values())


def _groups(params: list, names: list[str] | None, model_dir: Path, lr_groups: dict | None):
    """SGD parameter groups, each with the `scale` of its learning rate: the runtime's
    groups (runtime/param_groups.py) for a reference with `lr_groups`, else one."""
    if not lr_groups:
        return [{"params": params, "scale": 1.0}]
    from facto_edge.runtime.graph import load_graph
    from facto_edge.runtime.param_groups import param_groups

    role = param_groups(load_graph(model_dir))
    scale = [lr_groups.get(role[n], 1.0) for n in names]
    return [{"params": [p for p, s in zip(params, scale, strict=True) if s == v], "scale": v}
            for v in sorted(set(scale))]  # fmt: skip


def _torch_process(queue, kind, prep, config, lr_groups, data: str, epochs, lr, seed) -> None:
    """One PyTorch fine-tuning on `data`'s train split, scored on its test split."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model, params, set_mode = _method(kind, prep, config)
    saved = saved_bytes(model, params, set_mode) if kind != "ref" else None
    for p in params:
        p.grad = None
    names = model.trainable if kind == "ref" else None
    groups = _groups(params, names, prep["out"] / f"{config}.facto", lr_groups)
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    started = time.perf_counter()
    _fit(model, opt, _open(data, "train"), epochs, lr, BATCH, seed, set_mode)
    seconds = time.perf_counter() - started
    queue.put({"accuracy": _accuracy(model, _open(data, "test")), "saved": saved, "lr": lr,
               "seconds": seconds})  # fmt: skip


# --- runs ---------------------------------------------------------------------------


def cached(path: Path, compute: Callable[[], dict]) -> dict:
    """The JSON result at `path`, computed and written first if missing."""
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def facto_run(
    prep: dict, config: str, codec: str, lr_groups, lr: float, epochs: int, layers=None
) -> dict:
    from facto_edge.layer_select import AutoLayers

    run_dir = prep["out"] / "runs" / f"{config}-{codec}{run_tag(lr_groups, layers)}-e{epochs}"
    options = {
        "epochs": epochs, "batch_size": BATCH, "optimizer": "sgd", "lr": lr,
        "schedule": "cosine", "codec": codec, "seed": prep["seed"], "val_split": 0.0,
        "augment": True, "lr_groups": lr_groups,
        "train_layers": AutoLayers(int(layers * 2**20)) if layers else None,
    }  # fmt: skip
    started = time.perf_counter()
    model_dir, data = prep["out"] / f"{config}.facto", prep["data"]["task_b"]
    _, peak, memory, accuracy, _, _ = train_in_fresh_process(model_dir, data, run_dir, options, [])
    return {"accuracy": accuracy, "saved": memory["saved_bytes"], "arena": memory["arena_bytes"],
            "peak_rss": peak, "lr": lr, "seconds": time.perf_counter() - started}  # fmt: skip


def torch_run(prep: dict, kind: str, config, lr_groups, data: Path, lr: float, epochs: int):
    started = time.perf_counter()
    args = (kind, prep, config, lr_groups, str(data), epochs, lr, prep["seed"])
    result = _in_process(_torch_process, args)
    return result | {"wall": time.perf_counter() - started}


def _plan_process(queue, model_dirs: dict[str, str]) -> None:
    """The runtime plan's saved bytes per step at batch BATCH, {config: {codec: bytes}}."""
    from facto_edge.runtime import TrainingSession

    found = {}
    for key, model_dir in model_dirs.items():
        found[key] = {}
        for codec in CODECS:
            session = TrainingSession(model_dir, batch_size=BATCH, codec=codec)
            found[key][codec] = session.memory_report()["saved_bytes"]
            session.close()
    queue.put(found)


def plan_bytes(prep: dict) -> dict[str, dict[str, int]]:
    """Saved bytes per configuration and codec (the same for every seed)."""
    dirs = {key: str(prep["out"] / f"{key}.facto") for key in CONFIGS}
    return cached(
        prep["out"].parent / "plan_bytes.json", lambda: _in_process(_plan_process, (dirs,))
    )


def pretrain(work: Path, x: np.ndarray, y: np.ndarray, args) -> dict:
    """Pretrain on task A once (seed --pretrain-seed), cached; every seed fine-tunes it."""
    seed, epochs = args.pretrain_seed, args.pretrain_epochs
    out = work / f"pretrain-seed{seed}-e{epochs}"
    out.mkdir(parents=True, exist_ok=True)
    data = write_seed_data(out, x, y, seed)
    args_a = (str(data["task_a"]), str(out), seed, epochs)
    pre = cached(out / "pretrain.json", lambda: _in_process(_pretrain_process, args_a))
    print(f"pretrained on task A, held-back accuracy {pre['accuracy']:.3f}", flush=True)
    return pre | {"dir": str(out)}


def prepare_seed(work: Path, x: np.ndarray, y: np.ndarray, seed: int, pre: dict) -> dict:
    """Data and exports of one seed, each made once and cached."""
    from facto_edge.exporters.export import export

    out = work / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    data = write_seed_data(out, x, y, seed)
    pretrained = Path(pre["dir"])
    for key, options in CONFIGS.items():
        if not (out / f"{key}.facto" / "manifest.json").exists():
            export(pretrained / "pretrained.pt", out / f"{key}.facto", ort=False, **options)
    return {"seed": seed, "out": out, "data": data, "pretrain": pre, "pretrained": pretrained}


def _pool(jobs: int, tasks: list[Callable[[], dict]]) -> list[dict]:
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda task: task(), tasks))


def _tuned_methods() -> dict[str, tuple[str, str | None, dict | None]]:
    """{name: (kind, configuration, lr_groups)} of every method tuned."""
    methods = {kind: (kind, None, None) for kind in TORCH_METHODS}
    methods |= {key: ("ref", key, None) for key in TUNED}
    return methods | {name: ("ref", key, g) for name, (key, g) in GROUP_TUNED.items()}


def tune(preps: list[dict], args, also: list) -> tuple[dict[str, float], dict]:
    """The learning rate of each tuned method and every validation accuracy
    {(name, lr): [per seed]}; the tasks `also` run in the same pool."""
    methods = _tuned_methods()
    tasks, keys = [], []
    for prep in preps:
        data = prep["data"]["task_b_val"]
        for name, (kind, config, groups) in methods.items():
            for lr in args.lrs:
                path = prep["out"] / "tune" / f"{name}-lr{lr:g}-e{args.epochs}.json"
                keys.append((name, lr))
                run = partial(torch_run, prep, kind, config, groups, data, lr, args.epochs)
                tasks.append(_logged(path, run, f"tune seed {prep['seed']} {name} lr {lr:g}"))
    scores: dict = {}
    for key, result in zip(keys, _pool(args.jobs, also + tasks)[len(also) :], strict=True):
        if result is not None:
            scores.setdefault(key, []).append(result["accuracy"])
    chosen = {}
    for name in methods:
        means = [(statistics.mean(scores[(name, lr)]), -lr) for lr in args.lrs
                 if (name, lr) in scores]  # fmt: skip
        chosen[name] = -max(means)[1]  # the best mean; the smaller rate on a tie
    return chosen, scores


def _logged(path: Path, compute, what: str):
    def task() -> dict | None:
        if REPORT_ONLY and not path.exists():
            return None
        result = cached(path, compute)
        print(f"  {what:<78} accuracy {result['accuracy']:.4f}", flush=True)
        return result

    return task


def study_tasks(prep: dict, lrs: dict[str, float], args, later: bool) -> dict:
    """{method name: task} of one seed's final runs, the LATER ones with `later`."""
    tasks, res, seed, e = {}, prep["out"] / "results", prep["seed"], args.epochs
    data = prep["data"]["task_b"]
    for kind, name in TORCH_METHODS.items() if not later else ():
        run = partial(torch_run, prep, kind, None, None, data, lrs[kind], e)
        tasks[name] = _logged(res / f"{kind}-e{e}.json", run, f"seed {seed} {name}")
    rows = LATER_RUNS if later else FACTO_RUNS + (SEED0_RUNS if seed == args.seeds[0] else [])
    for key, codec, groups, *rest in rows:
        layers = rest[0] if rest else None  # --train-layers auto: MiB
        name = f"facto-edge {label(key, groups, layers)}, {codec}"
        lr, tag = rate_of(key, groups, lrs), run_tag(groups, layers)
        run = partial(facto_run, prep, key, codec, groups, lr, e, layers)
        tasks[name] = _logged(res / f"{key}-{codec}{tag}-e{e}.json", run, f"seed {seed} {name}")
    for key in LATER_REFERENCE_RUNS if later else REFERENCE_RUNS:
        name = reference_name(key)
        run = partial(torch_run, prep, "ref", key, None, data, rate_of(key, None, lrs), e)
        tasks[name] = _logged(res / f"ref-{key}-e{e}.json", run, f"seed {seed} {name}")
    return tasks


def reference_name(key: str) -> str:
    return f"PyTorch reference of facto-edge {label(key)} (fp32)"


# --- report -------------------------------------------------------------------------


def _bytes_cells(r: dict, dense: int) -> tuple[str, str]:
    """(saved per step, share below dense): a reference row gives every codec's."""
    if "plan" not in r:
        return format_size(r["saved"]), f"{100 * (1 - r['saved'] / dense):.1f} %"
    plan = r["plan"]
    saved = " / ".join(f"{c} {format_size(plan[c])}" for c in CODECS)
    return saved, " / ".join(f"{100 * (1 - plan[c] / dense):.1f} %" for c in CODECS)


def table(runs: list[dict[str, dict]]) -> str:
    dense = runs[0][TORCH_METHODS["full"]]["saved"]
    head = ("| method | lr | test accuracy % (mean ± sd) | per seed | saved per step "
            "| below PyTorch dense | train time per run |")  # fmt: skip
    lines = [head, "|" + " --- |" * 7]
    for name in runs[0]:
        rs = [run[name] for run in runs if run.get(name)]
        if not rs:
            continue
        acc = [r["accuracy"] for r in rs]
        saved, below = _bytes_cells(rs[0], dense)
        lines.append(
            f"| {name} | {rs[0]['lr']:g} | {_mean_std(acc)} | "
            f"{', '.join(f'{100 * a:.1f}' for a in acc)} | {saved} | {below} | "
            f"{statistics.mean(r['seconds'] for r in rs):.0f} s |"
        )
    return "\n".join(lines)


def tuning_table(scores: dict, chosen: dict[str, float], lrs: list[float]) -> str:
    """Mean validation accuracy per method and learning rate; the chosen one in bold."""
    names = dict(TORCH_METHODS) | {k: f"{label(k)} (PyTorch reference)" for k in TUNED}
    names |= {n: f"{label(k, g)} (PyTorch reference)" for n, (k, g) in GROUP_TUNED.items()}
    lines = ["| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |"]
    lines.append("|" + " --- |" * (len(lrs) + 1))
    for key, name in names.items():
        cells = []
        for lr in lrs:
            if not scores.get((key, lr)):
                cells.append("-")
                continue
            cell = f"{100 * statistics.mean(scores[(key, lr)]):.1f}"
            cells.append(f"**{cell}**" if lr == chosen[key] else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plan_table(plans: dict[str, dict[str, int]], dense: int) -> str:
    """Saved bytes per step of every configuration at every codec, and the share below
    PyTorch dense."""
    lines = ["| configuration | " + " | ".join(CODECS) + " |", "|" + " --- |" * (len(CODECS) + 1)]
    for key, by_codec in plans.items():
        cells = [
            f"{format_size(b)} ({100 * (1 - b / dense):.1f} % below)" for b in by_codec.values()
        ]
        lines.append(f"| {label(key)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict[str, dict]], path: Path) -> None:
    """Test accuracy (mean, sd as error bars) against saved bytes per step, log scale;
    a reference row at its q4 plan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5))
    dense = runs[0][TORCH_METHODS["full"]]["saved"]
    for i, name in enumerate(runs[0]):
        acc = [100 * run[name]["accuracy"] for run in runs if run.get(name)]
        if not acc:
            continue
        r = runs[0][name]
        saved = r["plan"]["q4"] if "plan" in r else r["saved"]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        marker = "s" if name.startswith("PyTorch ") and "plan" not in r else "o^vD<>p*hX"[i % 10]
        text = f"{name} (at q4 bytes)" if "plan" in r else name
        ax.errorbar(max(saved, 1) / 2**10, statistics.mean(acc), yerr=sd, fmt=marker, capsize=3,
                    label=text, mfc="none" if "plan" in r else None)  # fmt: skip
    ax.axvline(0.07 * dense / 2**10, color="grey", linestyle="--", label="93 % below PyTorch dense")
    ax.set_xscale("log")
    ax.set_xlabel("saved activations per step, batch 32 (KiB, log scale)")
    ax.set_ylabel("test accuracy % (mean over the seeds, sd bars)")
    ax.set_title("Fine-tuning resnet20_cifar to CIFAR-10 classes 5-9 (500 photos each)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=5.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, required=True, help="Cache of every result.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pretrain-seed", type=int, default=0)
    parser.add_argument("--pretrain-epochs", type=int, default=PRETRAIN["epochs"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--jobs", type=int, default=1, help="Runs at once (one thread each).")
    parser.add_argument("-o", "--output", type=Path, default=None, help="Markdown tables.")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of accuracy vs bytes.")
    parser.add_argument("--report", action="store_true", help="Only gather cached results.")
    args = parser.parse_args()
    global REPORT_ONLY
    REPORT_ONLY = args.report
    if args.jobs > 1:  # every child process runs one thread
        os.environ.update(NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args.work.mkdir(parents=True, exist_ok=True)
    x, y = photos(args.work, args.data)
    pre = pretrain(args.work, x, y, args)
    preps = {s: prepare_seed(args.work, x, y, s, pre) for s in args.seeds}
    plans: dict = {}

    def plan_task() -> dict:
        plans.update(plan_bytes(preps[args.seeds[0]]))
        return {}

    lrs, scores = tune([preps[s] for s in args.tune_seeds], args, [])
    print(f"learning rates: {lrs}", flush=True)
    per_seed = [study_tasks(preps[s], lrs, args, later=False) for s in args.seeds]
    later = [study_tasks(preps[s], lrs, args, later=True) for s in args.seeds]
    flat = [task for tasks in per_seed + later for task in tasks.values()]
    results = iter(_pool(args.jobs, [*flat, plan_task]))
    runs = [{name: next(results) for name in tasks} for tasks in per_seed]
    for run, tasks in zip(runs, later, strict=True):
        run.update({name: next(results) for name in tasks})
        for key in REFERENCE_RUNS + LATER_REFERENCE_RUNS:
            if run.get(reference_name(key)):
                run[reference_name(key)]["plan"] = plans[key]
    text = table(runs) + f"\n\nPretrained on task A (seed {args.pretrain_seed}, "
    text += f"{args.pretrain_epochs} epochs): held-back accuracy {100 * pre['accuracy']:.1f} %.\n"
    text += "\nValidation accuracy % per learning rate (seeds "
    text += f"{', '.join(map(str, args.tune_seeds))}); the chosen rate in bold:\n\n"
    text += tuning_table(scores, lrs, args.lrs)
    dense = runs[0][TORCH_METHODS["full"]]["saved"]
    text += "\n\nSaved bytes per step (runtime plan, batch 32):\n\n" + plan_table(plans, dense)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    if args.plot:
        plot(runs, args.plot)
    (args.work / "runs.json").write_text(json.dumps(runs))


if __name__ == "__main__":
    main()
