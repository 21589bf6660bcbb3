"""Memory budgets: parse and print sizes, and measure what the runtime costs before the arena.

`--budget` is the whole process's peak resident memory. The arena gets what is left after
the fixed cost of the runtime: the interpreter, numpy, numba, onnx and the compiled
kernels, as they stay resident once the session has loaded its kernels and handed the
compiler's pages back (runtime/preload.py). Loading peaks higher than that, before the
arena exists, so a budget must also hold the start-up peak. A probe measures both in a
fresh subprocess (`measure_runtime_fixed_cost`, `measure_runtime_startup_peak`) and
caches them per set of versions and codec (the probe loads that codec's kernels only: a
run keeps its activations in one).
"""

import hashlib
import importlib.metadata
import json
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .cachedirs import user_cache_dir
from .errors import BudgetError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:_\d+)*(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(s: str | int) -> int:
    """Bytes in a size: an int, or a string such as "512MB", "1.5GB", "256MiB", "4096".

    KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB and the bare K/M/G/T powers of 1024;
    units are case-insensitive. Fractions round down to whole bytes. Raises BudgetError
    for anything else, and for sizes that are not positive.
    """
    if isinstance(s, bool) or not isinstance(s, int | str):
        raise BudgetError(f"expected a size like '512MB' or a number of bytes, got {s!r}")
    if isinstance(s, int):
        n = s
    else:
        m = _SIZE.match(s)
        if not m or m.group(2).lower() not in _UNITS:
            raise BudgetError(
                f"cannot read size {s!r}: expected a number and an optional unit "
                f"(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. '512MB' or '1.5GiB'"
            )
        number, unit = m.group(1).replace("_", ""), _UNITS[m.group(2).lower()]
        if "." in number:
            whole, frac = number.split(".")
            n = int(whole or 0) * unit + int(frac or 0) * unit // 10 ** len(frac)
        else:
            n = int(number) * unit
    if n <= 0:
        raise BudgetError(f"a memory size must be positive, got {s!r}")
    return n


def format_size(n: int) -> str:
    """A byte count for people, in powers of 1024: "512 B", "1.5 KiB", "488.3 MiB"."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


# Runs in a fresh interpreter: import what a device application imports, in its order
# (the runtime first, which imports numba: runtime/preload.py, import_numba; onnx too: the
# runtime reads model.onnx without it, runtime/onnx_read.py, but exporting a trained model
# imports it; counted, the figure stays an upper bound), run every kernel module's
# warm_up() once for the codec in argv[1] (only that codec's kernels: a run uses one), and
# print the peak resident set size in bytes; then release the compiler's pages as a
# session does and print the resident set size that stays.
# It prints the number of runtime kernels it had to compile too (numba's runtime library
# counts as one where it was not stored as object code: runtime/nrt_object.py): figures
# measured while compiling are a compiling process's, not those of a session that loads
# its kernels.
_PROBE = """
import sys
import numpy
from facto_edge.runtime import TrainingSession, kernelset, nrt_object, preload
import numba, onnx
from facto_edge.runtime.rss import current_rss_bytes, peak_rss_bytes
compiled = kernelset.count_compilations()
with preload.releasing_while_loading():  # as a session loads its kernels
    preload.warm_up_modules(sys.argv[1])
peak = peak_rss_bytes()
preload.release_compiler_pages()
print(peak, current_rss_bytes() or peak, compiled.count + nrt_object.compiled_here())
"""


def _cache_file() -> Path:
    return user_cache_dir() / "fixed_cost.json"


def _versions(codec: str = "fp32") -> str:
    """The cache key: everything the fixed cost depends on, the runtime's source included
    (so that a changed kernel in a development tree is measured again), and the codec
    whose kernels the probe loads."""
    import facto_edge
    import facto_edge.runtime as rt

    digest = hashlib.sha1()
    for path in sorted(Path(rt.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())

    parts = [
        f"python={platform.python_version()}",
        f"machine={platform.machine()}",
        *(f"{name}={_version_of(name)}" for name in ("numpy", "numba", "onnx")),
        f"facto_edge={facto_edge.__version__}",
        f"runtime={digest.hexdigest()[:12]}",
        f"codec={codec}",
    ]
    return ";".join(parts)


def _version_of(name: str) -> str:
    """The installed version of distribution `name`, read from its metadata: importing numba
    here would initialize LLVM, whose resident pages a child process then cannot hand back
    (MADV_PAGEOUT spares pages that another process maps): a parent that spawns budgeted
    children must keep LLVM untouched."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _probe_once(codec: str = "fp32") -> tuple[int, int, int]:
    """(start-up peak, resident after the release) in bytes, and the kernels it compiled,
    from a fresh process loading the runtime's kernels and `codec`'s."""
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, codec], capture_output=True, text=True, timeout=600
    )
    if run.returncode != 0:
        tail = run.stderr.strip().splitlines()[-1:] or ["no output"]
        raise BudgetError(f"could not measure the runtime's fixed memory cost: {tail[0]}")
    peak, settled, compiled = (int(v) for v in run.stdout.strip().splitlines()[-1].split())
    return peak, settled, compiled


def _runtime_cost(refresh: bool = False, codec: str = "fp32") -> tuple[int, int]:
    """(start-up peak, fixed cost) with `codec`, measured by the probe and cached.

    A probe that compiled kernels (into numba's cache: a device pays that once, not at
    every start) runs again and the second figures are kept; one that only loaded them
    (a prepared machine) runs once. The result is cached in
    ~/.cache/facto-edge/fixed_cost.json (or $XDG_CACHE_HOME), keyed by the versions of
    Python, numpy, numba, onnx and facto-edge and the codec, only when the kept run
    compiled nothing (it loaded every kernel, as a prepared session does; a cache that
    cannot be written makes every probe compile); `refresh=True` measures again.
    """
    path = _cache_file()
    key = _versions(codec)
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    got = cache.get(key) if not refresh else None
    if isinstance(got, list) and len(got) == 2 and all(isinstance(v, int) for v in got):
        return got[0], got[1]
    peak, settled, compiled = _probe_once(codec)
    if compiled:
        peak, settled, compiled = _probe_once(codec)
    if compiled:
        return peak, settled
    cache[key] = [peak, settled]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass
    return peak, settled


def measure_runtime_fixed_cost(refresh: bool = False, codec: str = "fp32") -> int:
    """Resident bytes the runtime keeps under the arena: a fresh process that imports the
    runtime and runs its kernels (`codec`'s among them), after it has handed the
    compiler's pages back."""
    return _runtime_cost(refresh, codec)[1]


def measure_runtime_startup_peak(refresh: bool = False, codec: str = "fp32") -> int:
    """Peak resident bytes of a fresh process importing the runtime and loading kernels
    (`codec`'s among them), before any arena exists; a budget must hold it (plus the
    safety margin)."""
    return _runtime_cost(refresh, codec)[0]


# What a training process holds at its peak beyond the fixed cost and the arena: the
# machine code of the kernels a model needs beyond the probe's (the probe loads its
# codec's), the session's Python objects, the loaded graph's leftovers, and for
# facto_edge.train its data and evaluation. Measured with tools/bench_memory.py
# (docs/memory.md, "Safety margin") on the zoo models at batch 1 and 32: at most 12.1 MiB
# for a process driving a TrainingSession and 19.7 MiB for facto_edge.train (19.9 and 26.5
# before cached kernels loaded without numba's compiler registries: runtime/preload.py).
# The `facto-edge train` command holds about 3.5 MiB more (click, tqdm); it draws its
# metrics plot only where matplotlib fits the budget (train.PLOT_COST).
SAFETY_MARGIN = 32 << 20


def expected_peak(fixed: int, arena: int, startup: int, margin: int) -> int:
    """A training process's expected peak: the larger of the runtime's resident cost plus
    the arena and its start-up peak (before the arena exists), plus the safety margin."""
    return max(fixed + arena, startup) + margin


@dataclass(frozen=True)
class Allowance:
    """How a budget splits: the runtime's fixed cost, a safety margin for what the
    process holds outside the arena, and what is left for the arena. `startup` is the
    runtime's peak while loading, before the arena: the budget must hold it too."""

    budget: int
    fixed: int
    margin: int
    startup: int = 0

    @property
    def arena(self) -> int:
        return self.budget - self.fixed - self.margin

    def peak(self, arena_bytes: int) -> int:
        """The expected peak of a process with an arena of `arena_bytes`."""
        return expected_peak(self.fixed, arena_bytes, self.startup, self.margin)

    def too_small(self, arena_bytes: int, at: str) -> BudgetError:
        """The error for a budget below the expected peak with `arena_bytes`, the smallest
        arena (`at`: where it was found), naming the smallest budget that fits."""
        need = self.peak(arena_bytes)
        smallest = -(-need // (1 << 20))
        return BudgetError(
            f"a budget of {format_size(self.budget)} is too small: training needs at least "
            f"{format_size(need)} (runtime {format_size(self.fixed)} + margin "
            f"{format_size(self.margin)} + arena {format_size(arena_bytes)} {at}"
            f"{self._startup_note(need)}); give --budget {smallest}MiB or more"
        )

    def _startup_note(self, need: int) -> str:
        if self.startup + self.margin < need:
            return ""
        return f", and the runtime peaks at {format_size(self.startup)} while loading"


def allowance(budget: int | str, codec: str = "fp32") -> Allowance:
    """Split `budget` (bytes or a size such as "512MB") into fixed cost, margin, arena,
    for a run whose activations keep `codec`."""
    return Allowance(
        parse_size(budget),
        measure_runtime_fixed_cost(codec=codec),
        SAFETY_MARGIN,
        measure_runtime_startup_peak(codec=codec),
    )
