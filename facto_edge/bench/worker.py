"""One measurement in a fresh process, so that its peak RSS is its own.

    python -m facto_edge.bench.worker '{"system": "facto-edge", "model": ..., ...}'

The argument is a `WorkerArgs` as JSON. The worker builds the system (importing only what
that system needs), trains on one seeded random batch for `warmup` steps and then
`steps` timed steps, and prints one JSON line: `ok`, `first_step_end` (wall-clock time
when the first step finished; the driver subtracts the launch time), `step_s` (each timed
step), `losses`, `saved_bytes` (counted on the last warm-up step when `count_saved`),
`peak_rss` (bytes, this process's own peak) and `info` (threads, memory report, ...).
On failure it prints `{"ok": false, "error": "..."}` and exits 1.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time

import numpy as np

from facto_edge.bench.machine import peak_rss_of
from facto_edge.bench.systems import Trainer, WorkerArgs, load_system


def random_batch(args: WorkerArgs) -> tuple[np.ndarray, np.ndarray]:
    """The seeded random batch every system trains on: N(0, 1) images, uniform labels."""
    manifest = args.manifest
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch, *manifest["input_shape"]), dtype=np.float32)
    y = rng.integers(0, manifest["num_classes"], args.batch).astype(np.int64)
    return x, y


def peak_rss() -> int:
    """Peak resident set size of this process in bytes: VmHWM of /proc/self/status where
    there is one. Linux carries getrusage's ru_maxrss over fork and exec, so a worker
    started by a large driver would report the driver's peak; VmHWM starts afresh at exec.
    """
    hwm = peak_rss_of("self")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def run_steps(trainer: Trainer, x: np.ndarray, y: np.ndarray, args: WorkerArgs) -> dict:
    """Warm-up steps (the first one timed to the wall clock), then the timed steps."""
    losses, saved, first_end = [], None, 0.0
    for i in range(args.warmup):
        if args.count_saved and i == args.warmup - 1:
            loss, saved = trainer.counted_step(x, y)
        else:
            loss = trainer.step(x, y)
        losses.append(loss)
        first_end = first_end or time.time()
    step_s = []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(trainer.step(x, y))
        step_s.append(time.perf_counter() - start)
    return {"first_step_end": first_end, "step_s": step_s, "losses": losses, "saved_bytes": saved}


def measure(args: WorkerArgs) -> dict:
    """Build the system, run its steps, and gather what the driver records."""
    trainer = load_system(args.system).build(args)
    x, y = random_batch(args)
    result = run_steps(trainer, x, y, args)
    bad = [v for v in result["losses"] if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"loss became {bad[0]} during training")
    return {"ok": True, **result, "peak_rss": peak_rss(), "info": trainer.info()}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m facto_edge.bench.worker ARGS_JSON`."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        out = measure(WorkerArgs(**json.loads(argv[0])))
    except Exception as e:  # every failure becomes an error row of the report
        out = {"ok": False, "error": f"{type(e).__name__}: {e}", "peak_rss": peak_rss()}
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
