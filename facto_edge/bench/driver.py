"""Run the plan of `facto_edge.bench.protocol`: export each model once, then every
measurement in its own `python -m facto_edge.bench.worker` process, one at a time.

A watchdog reads the worker's peak RSS (VmHWM in /proc) while it runs: in the batch-size
sweep a worker that passes the budget is stopped there, as a device would run out of
memory, and the larger batch sizes of that system are skipped. facto-edge runs whose
session raises BudgetError count as running out too.

Per model the driver also counts each system's FLOPs of a training step from its graph
(facto_edge/bench/flops.py), and once per benchmark it measures the machine's sgemm rate
in a child process with the workers' thread settings (facto_edge/bench/sgemm.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from facto_edge.bench.flops import StepFlops, all_trainable, count_flops
from facto_edge.bench.machine import load_average, machine_info, peak_rss_of, wait_until_idle
from facto_edge.bench.protocol import BenchConfig, RunSpec, plan_runs
from facto_edge.bench.systems import WorkerArgs
from facto_edge.errors import FactoEdgeError
from facto_edge.runtime.budget import format_size
from facto_edge.runtime.preload import release_compiler_pages

Progress = Callable[[int, int, str], None]
POLL_S = 0.05
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class Run:
    """The outcome of one RunSpec. `first_step_s` runs from the launch of the process to
    the end of its first training step."""

    spec: RunSpec
    ok: bool
    error: str | None = None
    over_budget: bool = False
    skipped: bool = False
    first_step_s: float | None = None
    step_s: list[float] = field(default_factory=list)
    saved_bytes: int | None = None
    peak_rss: int | None = None
    info: dict = field(default_factory=dict)
    load: float | None = None
    busy: float | None = None
    waited_s: float = 0.0

    @property
    def images_per_s(self) -> float | None:
        """Batch size over the median timed step."""
        return self.spec.batch / statistics.median(self.step_s) if self.step_s else None


@dataclass
class BenchResult:
    """A whole benchmark: its configuration, the machine (its sgemm rate under
    "sgemm"), every run in order, and `flops[model][system]`: the StepFlops of one
    training step per image, as a dict."""

    config: BenchConfig
    machine: dict
    runs: list[Run]
    started: str
    finished: str = ""
    flops: dict[str, dict[str, dict]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> BenchResult:
        d = json.loads(text)
        cfg = BenchConfig(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in d["config"].items()})  # fmt: skip
        runs = [Run(**(r | {"spec": RunSpec(**r["spec"])})) for r in d["runs"]]
        return cls(cfg, d["machine"], runs, d["started"], d["finished"], d.get("flops", {}))

    @classmethod
    def read(cls, path: Path) -> BenchResult:
        """A results.json written by `facto-edge bench`; FactoEdgeError if it is not one."""
        try:
            return cls.from_json(path.read_text())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FactoEdgeError(
                f"{path} is not a results.json written by `facto-edge bench` "
                f"({type(e).__name__}: {e}): pass the results.json of an earlier run"
            ) from e


def export_model(cfg: BenchConfig, model: str, work_dir: Path) -> Path:
    """The `*.facto` export of zoo model `model` (seeded as the dense system builds it),
    reused when `work_dir` already holds one made with the same settings."""
    shape = "x".join(map(str, cfg.input_shape))
    ort = "ort-training" in cfg.systems
    how = f"r{cfg.rank}-{cfg.train.replace(',', '+')}-bn{cfg.bn}-{shape}-s{cfg.seed}"
    out = work_dir / f"{model}-{how}{'-ort' if ort else ''}.facto"
    if (out / "manifest.json").is_file():
        return out
    from facto_edge import export, zoo

    net = zoo.build(model, seed=cfg.seed, in_channels=cfg.input_shape[0])
    export(net, out, input_shape=cfg.input_shape, rank=cfg.rank, train=cfg.train, bn=cfg.bn,
           ort=ort, force=True)  # fmt: skip
    return out


def system_flops(cfg: BenchConfig, model: str, model_dir: Path) -> dict[str, StepFlops]:
    """Each system's FLOPs of a training step per image: the factorized systems train
    model.onnx with the manifest's trainable tensors; PyTorch dense trains the zoo model
    before factorization (its ONNX export, unnormalized), every parameter trainable."""
    import onnx

    from facto_edge.runtime.manifest import Manifest

    factorized = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    counted = count_flops(factorized, Manifest.load(model_dir).trainable)
    out = {s: counted for s in cfg.systems if s != "pytorch-dense"}
    if "pytorch-dense" in cfg.systems:
        from facto_edge import zoo
        from facto_edge.exporters.to_onnx import to_onnx

        net = zoo.build(model, seed=cfg.seed, in_channels=cfg.input_shape[0])
        dense = to_onnx(net, cfg.input_shape)
        out["pytorch-dense"] = count_flops(dense, all_trainable(dense))
    return out


def worker_env(cfg: BenchConfig) -> dict:
    """The environment of a worker: this one, with the thread count when one is set."""
    env = dict(os.environ)
    if cfg.threads:
        env.update({var: str(cfg.threads) for var in THREAD_VARIABLES})
    return env


def measure_sgemm(cfg: BenchConfig) -> dict:
    """The machine's sgemm rate (facto_edge/bench/sgemm.py) in a child process with the
    workers' thread settings, after the same wait for a quiet machine; an "error" entry
    instead when the child fails."""
    if cfg.max_busy is not None:
        wait_until_idle(cfg.max_busy, cfg.max_wait_s)
    cmd = [sys.executable, "-m", "facto_edge.bench.sgemm"]
    done = subprocess.run(cmd, env=worker_env(cfg), capture_output=True, text=True,
                          timeout=cfg.timeout_s)  # fmt: skip
    try:
        rate = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"sgemm probe exited with code {done.returncode}: {tail[0]}"}
    return rate | {"threads": cfg.threads or "default"}


def _watch(proc: subprocess.Popen, timeout_s: float, rss_limit: int | None) -> dict | None:
    """Wait for `proc`; kill it past `timeout_s` or past `rss_limit` bytes of peak RSS.
    Returns the error record of a killed worker, None when it exited by itself."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        rss = peak_rss_of(proc.pid) if rss_limit else None
        if rss is not None and rss > rss_limit:
            record = {"error": f"over budget: peak RSS reached {format_size(rss)}, stopped",
                      "over_budget": True, "peak_rss": rss}  # fmt: skip
        elif time.monotonic() > deadline:
            record = {"error": f"timed out after {timeout_s:.0f} s"}
        else:
            time.sleep(POLL_S)
            continue
        proc.kill()
        proc.wait()
        return {"ok": False, **record}
    return None


def run_worker(args: WorkerArgs, env: dict | None, timeout_s: float, rss_limit: int | None) -> dict:
    """Run one worker process; its JSON line, or an error record. Adds `first_step_s`."""
    payload = json.dumps(dataclasses.asdict(args))
    cmd = [sys.executable, "-m", "facto_edge.bench.worker", payload]
    release_compiler_pages()  # LLVM pages this process holds would stay in the worker's RSS
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        launched = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        killed = _watch(proc, timeout_s, rss_limit)
        out.seek(0)
        err.seek(0)
        lines = out.read().decode(errors="replace").strip().splitlines()
        stderr = err.read().decode(errors="replace").strip().splitlines()
    if killed:
        return killed
    try:
        record = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = stderr[-1] if stderr else "no output"
        return {"ok": False, "error": f"worker exited with code {proc.returncode}: {tail}"}
    if record.get("first_step_end"):
        record["first_step_s"] = record.pop("first_step_end") - launched
    return record


def _to_run(spec: RunSpec, record: dict, budget: int | None) -> Run:
    rss = record.get("peak_rss")
    error = record.get("error")
    over = bool(record.get("over_budget")) or bool(error and error.startswith("BudgetError"))
    over = over or (budget is not None and rss is not None and rss > budget)
    return Run(
        spec, bool(record.get("ok")), error, over_budget=over,
        first_step_s=record.get("first_step_s"), step_s=record.get("step_s", []),
        saved_bytes=record.get("saved_bytes"), peak_rss=rss, info=record.get("info", {}),
    )  # fmt: skip


class Driver:
    """Executes the plan of each model with the settings of one BenchConfig."""

    def __init__(self, cfg: BenchConfig, work_dir: Path, progress: Progress) -> None:
        self.cfg, self.work_dir, self.progress = cfg, work_dir, progress
        self.plans = {m: plan_runs(cfg, m) for m in cfg.models}
        self.total = sum(len(p) + 1 for p in self.plans.values())
        self.done = 0
        self.runs: list[Run] = []
        self.flops: dict[str, dict[str, dict]] = {}

    def tick(self, text: str) -> None:
        self.done += 1
        self.progress(self.done, self.total, text)

    def run_model(self, model: str) -> None:
        self.progress(self.done, self.total, f"{model}: exporting at rank {self.cfg.rank}")
        model_dir = export_model(self.cfg, model, self.work_dir)
        self.tick(f"{model}: exported")
        try:
            counted = system_flops(self.cfg, model, model_dir)
        except FactoEdgeError as e:  # a shape ONNX cannot infer: the row says n/a
            self.progress(self.done, self.total, f"{model}: FLOPs not counted ({e})")
            counted = {}
        self.flops[model] = {system: dataclasses.asdict(f) for system, f in counted.items()}
        if "facto-edge" in self.cfg.systems:  # its budgeted workers load kernels, compile none
            from facto_edge.runtime.prepare import prepare_kernels

            self.progress(self.done, self.total, f"{model}: preparing facto-edge's kernels")
            prepare_kernels(model_dir, self.cfg.codecs, "sgd")
        ran_out: dict[str, int] = {}
        for spec in self.plans[model]:
            run = self.measure(spec, model_dir, ran_out)
            if spec.kind == "sweep" and run.over_budget:
                ran_out.setdefault(spec.system, spec.batch)
            self.runs.append(run)
            self.tick(f"{describe(spec)}: {outcome(run)}")

    def measure(self, spec: RunSpec, model_dir: Path, ran_out: dict[str, int]) -> Run:
        """Run `spec` in a worker, or skip it when its system already ran out."""
        if spec.kind == "sweep" and spec.system in ran_out:
            why = f"skipped: ran out of the budget at batch {ran_out[spec.system]}"
            return Run(spec, False, why, over_budget=True, skipped=True)
        self.progress(self.done, self.total, f"{describe(spec)} ...")
        limit = self.cfg.budget if spec.kind == "sweep" else None
        env = worker_env(self.cfg)
        quiet = {}
        if self.cfg.max_busy is not None:
            busy, waited = wait_until_idle(self.cfg.max_busy, self.cfg.max_wait_s)
            quiet = {"busy": busy, "waited_s": waited}
        load = load_average()[0]
        with contextlib.ExitStack() as stack:
            if spec.kind == "cold":
                cache = tempfile.TemporaryDirectory(prefix="numba-cold-", dir=self.work_dir)
                env["NUMBA_CACHE_DIR"] = stack.enter_context(cache)
                env["FACTO_EDGE_COMPILE"] = "allow"  # what the first step costs, compiling
            record = run_worker(self.worker_args(spec, model_dir), env, self.cfg.timeout_s, limit)
        return dataclasses.replace(_to_run(spec, record, self.cfg.budget), load=load, **quiet)

    def worker_args(self, spec: RunSpec, model_dir: Path) -> WorkerArgs:
        cfg = self.cfg
        return WorkerArgs(
            spec.system, spec.model, str(model_dir), spec.batch, spec.codec, spec.steps,
            spec.warmup, spec.count_saved, cfg.lr, cfg.momentum, cfg.seed, cfg.threads,
            cfg.budget,
        )  # fmt: skip


def describe(spec: RunSpec) -> str:
    """A short name of a run for progress lines."""
    extra = {"main": f" round {spec.repeat + 1}", "cold": " cold cache", "prime": " warm-up",
             "codec": f" codec {spec.codec}", "sweep": " sweep"}[spec.kind]  # fmt: skip
    return f"{spec.model} {spec.system} batch {spec.batch}{extra}"


def outcome(run: Run) -> str:
    """A short summary of a finished run for progress lines."""
    if not run.ok:
        return run.error or "failed"
    ips = run.images_per_s
    rss = format_size(run.peak_rss) if run.peak_rss else "?"
    return f"{ips:.1f} img/s, peak RSS {rss}" if ips else f"peak RSS {rss}"


def run_bench(
    cfg: BenchConfig, work_dir: str | Path | None = None, progress: Progress | None = None
) -> BenchResult:
    """Run the whole benchmark of `cfg`. Exports go to `work_dir` (reused there between
    runs), or to a temporary directory removed at the end. `progress(done, total, text)`
    hears about every step."""
    cfg.validate()
    say = progress or (lambda done, total, text: None)
    started = _now()
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="facto-bench-") as tmp:
        root = Path(work_dir) if work_dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        driver = Driver(cfg, root, say)
        say(0, driver.total, "measuring the machine's sgemm rate")
        machine["sgemm"] = measure_sgemm(cfg)
        for model in cfg.models:
            driver.run_model(model)
    machine["load_end"] = load_average()
    return BenchResult(cfg, machine, driver.runs, started, _now(), driver.flops)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
