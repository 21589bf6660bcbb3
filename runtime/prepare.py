"""Prepare a machine for budgeted training: compile the kernels a model needs, out of process.

    from facto_edge.runtime.prepare import prepare_kernels
    report = prepare_kernels("model.facto", codecs=("q4",), optimizer="sgd")

No kernel is compiled inside a budgeted process (../shared/DESIGN.md, "The first run"):
compiling one holds tens of MiB of LLVM, which the budget does not plan. Preparing runs
only child processes (this process imports numba only at step 4, for the probe's key):

1. a check child discovers the model's kernel set (runtime/kernelset.py: no compilation,
   about a second) and lists the entries numba's cache lacks; it also stores numba's
   runtime library as object code where it is not stored yet (runtime/nrt_object.py);
2. compile children, up to `jobs` at a time, each compile a share of them into numba's
   cache (all signatures of one kernel in one child: they share an index file), then
   read the cache's index again: what it still lacks (a kernel that would not cache) is
   an error naming it. A child holds numba, the kernel modules and LLVM while it
   compiles (CHILD_ROOM at most, measured); `jobs` defaults to the cores, less where
   `memory` (the preparation's own peak, all children together; 256 MB by default)
   holds fewer children;
3. the budget's probe measures the runtime's fixed cost with each codec (one more
   child, once per set of versions and codec: runtime/budget.py), so that the budgeted
   process finds it measured.

A prepared model costs one check child (about a second) and compiles nothing. Progress
goes to `on_progress(done, total, what)`: once with done 0 before the first compile
child starts (not at all when nothing is missing), then once per compiled kernel.
"""

from __future__ import annotations

import os
import pickle
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .budget import measure_runtime_fixed_cost, parse_size
from .errors import FactoEdgeError

DEFAULT_MEMORY = 256 * 10**6  # "256MB": a small device's room for the preparation
# A compile child starts at about 100 MiB (numba, numpy, the kernel modules) and grows by
# a few MiB per kernel compiled; compiling one holds up to SPIKE more for a moment
# (measured with tools/bench_first_run.py: docs/first_run.md). A child gets at least
# CHILD_ROOM; it is replaced before its next kernel could take it past its room.
CHILD_ROOM = 200 * 10**6
SPIKE = 24 << 20
BUILDS = ("serial", "both")
# Relative cost of compiling a build (parallel builds lower parfors: measured about 3x).
COST = {"parallel": 3.0, "serial": 1.0, "": 1.0}
Progress = Callable[[int, int, str], None]


@dataclass
class PrepareReport:
    """What a preparation did: kernels needed and compiled, children run, wall time, and
    the largest peak resident memory of any one child (bytes) and of the children that
    ran together (`peak_together`: the sum of the peaks of one wave of children)."""

    needed: int
    compiled: int
    jobs: int
    seconds: float
    child_peak: int = 0
    peak_together: int = 0
    missing_after: list[str] = field(default_factory=list)

    @property
    def prepared(self) -> bool:
        return not self.missing_after


def prepare_command(source, codecs: Sequence[str], optimizer: str) -> str:
    """The shell command that prepares `source` (for messages)."""
    where = str(source) if isinstance(source, str | os.PathLike) else "MODEL.facto"
    flags = "".join(f" --codec {c}" for c in codecs)
    return f"facto-edge compile {where}{flags} --optimizer {optimizer}"


@dataclass(frozen=True)
class Missing:
    """A kernel entry numba's cache lacks, as the check child described it: the kernel's
    name, its build, a readable signature and the pickled kernelset.Entry (unpickled only
    in the compile child, so that this process never imports numba)."""

    function: str
    build: str
    text: str
    blob: bytes


def check_kernels(
    source, codecs: Sequence[str] = ("q4",), optimizer: str = "sgd"
) -> tuple[int, list[Missing]]:
    """(kernels needed, entries missing from numba's cache) for training `source` with each
    of `codecs`, from a check child. `source` is a *.facto directory."""
    with tempfile.TemporaryDirectory(prefix="facto-prepare-") as tmp:
        out = Path(tmp) / "missing.pickle"
        _run_child(["check", str(source or ""), optimizer, str(out), *codecs])
        needed, missing = pickle.loads(out.read_bytes())
    return needed, missing


def prepare_kernels(
    source,
    codecs: Sequence[str] = ("q4",),
    optimizer: str = "sgd",
    *,
    builds: str = "serial",
    memory: int | str = DEFAULT_MEMORY,
    jobs: int | None = None,
    on_progress: Progress | None = None,
) -> PrepareReport:
    """Compile, in child processes, the kernels that training `source` (a *.facto
    directory; None: only the runtime's own, which the budget's probe loads) with
    `codecs` and `optimizer` needs and numba's cache lacks; see the
    module's docstring. `builds` "serial" compiles the serial builds and plain kernels
    (what lanes run; a session without the parallel builds runs serial ones only),
    "both" the parallel builds too. Raises FactoEdgeError if a child fails or a kernel
    is still missing afterwards."""
    if builds not in BUILDS:
        raise FactoEdgeError(f"builds must be one of {', '.join(BUILDS)}, found {builds!r}")
    start = time.perf_counter()
    needed, missing = check_kernels(source, codecs, optimizer)
    missing = [m for m in missing if builds == "both" or m.build != "parallel"]
    if not missing:
        return PrepareReport(needed, 0, 0, time.perf_counter() - start)
    budget = parse_size(memory)
    jobs = child_count(budget, jobs)
    pool = _Pool(jobs, budget // jobs, on_progress)
    pool.run(split_by_kernel(missing))
    report = PrepareReport(
        needed, len(missing), pool.started, time.perf_counter() - start,
        pool.child_peak, pool.peak_together, pool.still_missing,
    )  # fmt: skip
    if pool.still_missing:
        raise FactoEdgeError(
            f"after compiling, numba's cache still lacks {len(pool.still_missing)} kernel(s) "
            f"(first: {pool.still_missing[0]}); expected every kernel cached. Is its cache "
            f"directory writable? Set NUMBA_CACHE_DIR to a writable directory and run again"
        )
    for codec in codecs:  # the probe's children load what was just compiled
        measure_runtime_fixed_cost(codec=codec)
    report.seconds = time.perf_counter() - start
    return report


COMPILE_MODES = ("refuse", "prepare", "allow")


@dataclass(frozen=True)
class Readiness:
    """What a budgeted session found about its kernels: how many it needs, whether it runs
    the parallel builds (all cached) or serial ones only, whether it had the machine
    prepared first (`prepared`: the report), and how many kernels this process had
    compiled before it started (kernelset.count_compilations)."""

    needed: int
    parallel: bool
    compiled_before: int
    prepared: PrepareReport | None = None


def ensure_kernels(graph, source, codec: str, optimizer: str, mode: str = "refuse") -> Readiness:
    """Before a budgeted session plans its arena: make sure it will load, not compile,
    its kernels. Their set is the one stored for the model (kernelset.discover, run by
    the preparation); the serial builds and plain kernels must all be in numba's cache.
    If they are not, `mode` decides: "refuse" raises BudgetError naming the command that
    prepares them, "prepare" runs the preparation (child processes) now, "allow" goes on
    and compiles in this process (its peak may then pass the budget: see
    `compiled_in_process`); None: $FACTO_EDGE_COMPILE, else "refuse" (a test suite or a
    development tree may set "allow"). Parallel builds are used only when all are cached
    (kernels/dispatch.py, use_parallel_builds)."""
    from . import kernelset
    from .errors import BudgetError
    from .kernels.dispatch import use_parallel_builds

    mode = mode or os.environ.get("FACTO_EDGE_COMPILE") or "refuse"
    if mode not in COMPILE_MODES:
        raise FactoEdgeError(f"compile must be one of {', '.join(COMPILE_MODES)}, found {mode!r}")
    counter = kernelset.count_compilations()
    before, report = counter.count, None
    record = kernelset.load_record(kernelset.model_key(graph, codec, optimizer))
    lacking = _lacking(kernelset, record)
    if lacking != [] and mode == "prepare":
        with _as_directory(source) as path:
            report = prepare_kernels(path, (codec,), optimizer)
        record = kernelset.load_record(kernelset.model_key(graph, codec, optimizer))
        lacking = _lacking(kernelset, record)
    if lacking != [] and mode == "refuse":
        what = "never" if lacking is None else f"not wholly ({len(lacking)} kernels missing)"
        raise BudgetError(
            f"a budgeted session loads its kernels from numba's cache and compiles none "
            f"(compiling would take the process past the budget); this model was {what} "
            f"prepared on this machine for codec {codec}, optimizer {optimizer}. Run "
            f"`{prepare_command(source, (codec,), optimizer)}` once, or pass "
            f"compile='prepare' (compile in child processes first) or compile='allow' "
            f"(compile in this process, over the budget)"
        )
    parallel = record is not None and not kernelset.missing(
        [e for e in record.entries if e.build == "parallel"]
    )
    use_parallel_builds(parallel or lacking != [])  # "allow": compile as without a budget
    return Readiness(len(record.entries) if record else 0, parallel, before, report)


def compiled_in_process(readiness: Readiness) -> int:
    """Runtime kernels this process compiled since `readiness` was taken (0 on a
    prepared machine)."""
    from . import kernelset

    return kernelset.count_compilations().count - readiness.compiled_before


def _lacking(kernelset, record) -> list | None:
    """The required entries (serial builds, plain kernels) missing from the cache, and
    numba's runtime library where it is not stored as object code (runtime/nrt_object.py:
    compiling it costs as much as compiling a kernel); None when the model's set was
    never discovered."""
    from . import nrt_object

    if record is None:
        return None
    lacking = kernelset.missing([e for e in record.entries if e.build != "parallel"])
    return lacking + ([] if nrt_object.cached() else ["numba's runtime library"])


@contextmanager
def _as_directory(source):
    """`source` as a *.facto directory for the children: itself, or an (onnx.ModelProto,
    manifest) pair written to a temporary one."""
    if not isinstance(source, tuple):
        yield source
        return
    import json

    import onnx

    model, manifest = source
    with tempfile.TemporaryDirectory(prefix="facto-model-") as tmp:
        onnx.save(model, os.path.join(tmp, "model.onnx"))
        Path(tmp, "manifest.json").write_text(json.dumps(manifest))
        yield tmp


def child_count(memory: int, jobs: int | None = None) -> int:
    """Compile children to run at once: `jobs`, or the cores; no more than `memory` holds
    at CHILD_ROOM each, and at least one."""
    if jobs is not None and not (isinstance(jobs, int) and jobs >= 1):
        raise FactoEdgeError(f"jobs must be a positive int, found {jobs!r}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(jobs or cores or 1, memory // CHILD_ROOM))


def split_by_kernel(entries: list[Missing]) -> list[list[Missing]]:
    """The entries by kernel (all signatures of one kernel share an index file: one child
    compiles them), the costliest kernels first so that the last child to finish has a
    cheap one."""
    by_function: dict[str, list[Missing]] = {}
    for e in entries:
        by_function.setdefault(e.function, []).append(e)
    return sorted(by_function.values(), key=lambda es: -sum(COST[e.build] for e in es))


class _Pool:
    """Compile children fed one kernel at a time through stdin, `jobs` at once. A child
    whose resident memory, plus SPIKE for the next kernel, would pass `room` is told to
    exit and a fresh one takes its place: numba keeps every kernel it compiled, so a
    child grows by a few MiB per kernel. `still_missing` lists the entries the cache
    lacked after their child compiled them."""

    def __init__(self, jobs: int, room: int, on_progress: Progress | None) -> None:
        self.jobs, self.room, self.on_progress = jobs, room, on_progress
        self.started = self.child_peak = self.peak_together = 0
        self.still_missing: list[str] = []
        self._peaks: dict[int, int] = {}  # pid -> peak of the children alive now

    def run(self, work: list[list[Missing]]) -> None:
        """Compile every group of `work`; raises FactoEdgeError if a child fails."""
        self._total, self._done = sum(len(g) for g in work), 0
        if self.on_progress:
            self.on_progress(0, self._total, "")
        sel = selectors.DefaultSelector()
        with tempfile.TemporaryDirectory(prefix="facto-compile-") as tmp:
            self._paths = []
            for i, group in enumerate(work):
                path = Path(tmp, f"{i}.pickle")
                path.write_bytes(pickle.dumps(group))
                self._paths.append(str(path))
            while self._paths or sel.get_map():
                while self._paths and len(sel.get_map()) < self.jobs:
                    proc = _spawn(["compile"], stdin=True)
                    self.started += 1
                    sel.register(proc.stdout, selectors.EVENT_READ, [proc, b""])
                for key, _ in sel.select():
                    state = key.data
                    chunk = os.read(key.fileobj.fileno(), 1 << 16)
                    *lines, state[1] = (state[1] + chunk).split(b"\n")
                    alive = all(self._on_line(state[0], ln.decode()) for ln in lines)
                    if not chunk or not alive:
                        sel.unregister(key.fileobj)
                        state[0].stdin.close()
                        _finish(state[0])
                        self._peaks.pop(state[0].pid, None)

    def _on_line(self, proc: subprocess.Popen, line: str) -> bool:
        """Act on one line from a child; False once it has been told to exit."""
        kind, _, rest = line.strip().partition(" ")
        if kind == "compiled":
            self._done += 1
            if self.on_progress:
                self.on_progress(self._done, self._total, rest)
        elif kind == "missing":
            self.still_missing.append(rest)
        elif kind in ("ready", "idle"):
            rss, peak = (int(v) for v in rest.split())
            self._note(proc.pid, peak)
            if not self._paths or (kind == "idle" and rss + SPIKE > self.room):
                return False
            proc.stdin.write(self._paths.pop() + "\n")
            proc.stdin.flush()
        return True

    def _note(self, pid: int, peak: int) -> None:
        self._peaks[pid] = peak
        self.child_peak = max(self.child_peak, peak)
        self.peak_together = max(self.peak_together, sum(self._peaks.values()))


def _spawn(args: list[str], stdin: bool = False) -> subprocess.Popen:
    """A child running this module's `args` command; its stderr goes to a file (read by
    `_finish`), so that a chatty child never blocks on a full pipe."""
    proc = subprocess.Popen(
        [sys.executable, "-m", __name__, *args],
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=(err := tempfile.TemporaryFile("w+")), text=True, bufsize=1, env=_child_env(),
    )  # fmt: skip
    proc.err_file = err
    return proc


def _finish(proc: subprocess.Popen) -> None:
    """Wait for a child; FactoEdgeError with its last line of stderr if it failed."""
    code = proc.wait()
    proc.err_file.seek(0)
    err = proc.err_file.read()
    proc.err_file.close()
    if os.environ.get("FACTO_PREPARE_TRACE"):
        sys.stderr.write(err)
    if code != 0:
        tail = err.strip().splitlines()[-1:] or [f"exit code {code}"]
        raise FactoEdgeError(
            f"a kernel-preparing child process failed: {tail[0]}; expected it to exit 0"
        )


def _run_child(args: list[str]) -> None:
    proc = _spawn(args)
    proc.stdout.read()
    _finish(proc)


def _child_env() -> dict:
    """The children's environment: this one, with the kernel cache directory this
    process chose (cachedirs.use_user_kernel_cache) and quiet BLAS threads."""
    from .cachedirs import use_user_kernel_cache

    use_user_kernel_cache()
    return dict(os.environ, OPENBLAS_NUM_THREADS="1")


# The children ----------------------------------------------------------------------------


def _child_check(source: str, optimizer: str, out: str, *codecs: str) -> None:
    """Discover the kernel set for each codec, store it, and write (kernels needed,
    entries missing from the cache) to `out`. An empty `source`: the probe's kernels."""
    import warnings

    import numpy as np

    from . import kernelset, nrt_object

    entries: dict = {}
    for codec in codecs:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            found = kernelset.discover(source or None, codec, optimizer)
        kernelset.save_record(found)
        entries.update(dict.fromkeys(found.entries))
    missing = [
        Missing(e.function, e.build, str(e), pickle.dumps(e))
        for e in kernelset.missing(list(entries))
    ]
    nrt_object.ensure()  # numba's runtime library, stored for the budgeted processes
    Path(out).write_bytes(pickle.dumps((len(entries), missing)))


def _child_compile() -> None:
    """Read paths of pickled kernel groups from stdin and compile each; say "ready" (then
    "idle" after each group) with the resident and peak bytes, "compiled NAME" per
    kernel, and "missing ENTRY" for each entry of the group numba's cache still lacks
    afterwards. Ends at the end of stdin."""
    from . import kernels, kernelset  # noqa: F401  (kernels: numba's set-up, threading layer)
    from .preload import releasing_while_loading
    from .rss import current_rss_bytes, peak_rss_bytes

    def say(kind: str) -> None:
        print(kind, current_rss_bytes(), peak_rss_bytes(), flush=True)

    say("ready")
    with releasing_while_loading():
        for line in sys.stdin:
            group = pickle.loads(Path(line.strip()).read_bytes())
            for m in group:
                t0, c0 = time.perf_counter(), time.process_time()
                entry = pickle.loads(m.blob)
                entry.dispatcher().compile(entry.sig)
                print("compiled", m.function, flush=True)
                if os.environ.get("FACTO_PREPARE_TRACE"):  # wall, CPU, resident after
                    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
                    rss = current_rss_bytes() >> 20
                    print(f"{dt:6.2f}s {cpu:6.2f}s cpu rss {rss} MiB {m.text}", file=sys.stderr)
            for entry in kernelset.missing([pickle.loads(m.blob) for m in group]):
                print("missing", entry, flush=True)
            say("idle")


def _main(argv: list[str]) -> None:
    command, *args = argv
    {"check": _child_check, "compile": _child_compile}[command](*args)


if __name__ == "__main__":  # the children; their classes must pickle under the real name
    import importlib

    importlib.import_module(f"{__package__}.prepare")._main(sys.argv[1:])
