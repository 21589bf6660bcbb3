"""On-device adaptation to a shifted input distribution, the way an app embeds facto-edge.

Desktop side (PyTorch, once): pretrain the zoo's simple_cnn on the upright digits, export
it factorized (rank 0.25, `last` factors and the head train), and write the *shifted*
digits (at 60% of the contrast: another sensor) to an .npz.

Device side (a fresh process importing only numpy and facto_edge.runtime, checked in
sys.modules): load the model, measure accuracy on the shifted test images, adapt with a
StreamingTrainer (small camera batches mixed with a reservoir replay buffer), measure
again, and report the process's peak resident memory.

    python tools/examples/adapt_shift.py OUT_DIR [--tiny]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SHAPE = (1, 16, 16)
HEAVY = ("torch", "tensorly", "onnxruntime", "sklearn")


def desktop(out: Path, epochs: int, seed: int = 0) -> None:
    """Pretrain on upright digits, export factorized, write the shifted data (torch)."""
    import torch

    from facto_edge import zoo
    from facto_edge.demo import _digits
    from facto_edge.exporters.export import export
    from facto_edge.pretrain import accuracy_torch, train_torch

    torch.manual_seed(seed)
    norm = zoo.metadata(SHAPE, 10)["normalization"]
    x, y = _digits(SHAPE, norm["mean"], norm["std"], "train")
    x_test, y_test = _digits(SHAPE, norm["mean"], norm["std"], "test")
    model = zoo.build("simple_cnn", seed=seed, in_channels=SHAPE[0])
    train_torch(model, x, y, epochs=epochs, batch_size=32, lr=0.05, seed=seed)
    upright = accuracy_torch(model, x_test, y_test)
    export(model, out / "model.facto", input_shape=SHAPE, rank=0.25, ort=False, force=True)
    np.savez(
        out / "shifted.npz",
        x=shift(x), y=y, x_test=shift(x_test), y_test=y_test,
        upright_accuracy=upright,
    )  # fmt: skip


def shift(x: np.ndarray) -> np.ndarray:
    """The new input distribution: 60% of the contrast (another sensor)."""
    return (0.6 * x).astype(np.float32)


def rss() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes (Linux /proc/self/status)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def device(out: Path, epochs: int, batch: int) -> dict:
    """Adapt the exported model to the shifted digits with the runtime alone."""
    from facto_edge.runtime import StreamingTrainer, TrainingSession

    data = np.load(out / "shifted.npz")
    x, y, x_test, y_test = data["x"], data["y"], data["x_test"], data["y_test"]
    session = TrainingSession(out / "model.facto", batch_size=2 * batch, lr=0.01)
    before = session.evaluate(x_test, y_test)
    trainer = StreamingTrainer(session, capacity=256, replay=batch)
    order = np.random.default_rng(0).permutation(len(x))
    for _ in range(epochs):
        for start in range(0, len(x) - batch + 1, batch):  # the camera loop
            idx = order[start : start + batch]
            trainer.step(x[idx], y[idx])
    after = session.evaluate(x_test, y_test)
    return {
        "upright_accuracy": float(data["upright_accuracy"]),
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "steps": trainer.steps,
        "arena_bytes": session.memory_report()["arena_bytes"],
        "replay_bytes": trainer.buffer.nbytes,
        "peak_rss": rss()["VmHWM"],
        "heavy_modules": sorted(m for m in HEAVY if m in sys.modules),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--tiny", action="store_true", help="a quick setting (tests)")
    p.add_argument("--device-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    epochs, pre_epochs, batch = (1, 2, 8) if args.tiny else (3, 4, 16)
    if args.device_only:
        report = device(args.out, epochs, batch)
        print(json.dumps(report))
        return report
    args.out.mkdir(parents=True, exist_ok=True)
    desktop(args.out, pre_epochs)
    cmd = [sys.executable, __file__, str(args.out), "--device-only"] + ["--tiny"] * args.tiny
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"upright accuracy {report['upright_accuracy']:.3f}; shifted before "
        f"{report['accuracy_before']:.3f} -> after {report['accuracy_after']:.3f} "
        f"({report['steps']} steps); device peak RSS {report['peak_rss'] / 2**20:.1f} MiB, "
        f"arena {report['arena_bytes'] / 2**10:.0f} KiB, "
        f"replay {report['replay_bytes'] / 2**10:.0f} KiB"
    )
    return report


if __name__ == "__main__":
    main()
