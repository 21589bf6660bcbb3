"""What block_encode (the block codecs' encoder, the costliest kernel to compile) costs to
compile and how fast it encodes, for a codec_kernels.py of any commit: in a fresh process
with an empty NUMBA_CACHE_DIR, the CPU seconds and the resident memory its serial build's
compilation adds (numba's set-up excluded: another kernel is compiled first), then the
best of 9 encodes of a 64x32x32x32 float32 tensor (8 MiB) per bit width and rounding, in
GB/s of input. Compare two versions side by side (docs/first_run.md):

    git show 23401be:runtime/kernels/codec_kernels.py > /tmp/before.py
    python tools/bench_codec_compile.py /tmp/before.py runtime/kernels/codec_kernels.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

# Runs in the child: import the file given as a module of the kernels package (its
# relative imports resolve), compile, encode; prints JSON.
CHILD = """
import importlib.util, json, sys, time
import numpy as np, numba
import facto_edge.runtime.kernels as pkg
from facto_edge.runtime.rss import current_rss_bytes
spec = importlib.util.spec_from_file_location(pkg.__name__ + "._bench_codec", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
x = np.random.default_rng(0).standard_normal(64 * 32 * 32 * 32).astype(np.float32)
out = np.empty(x.size + x.size // 16 + 64, np.uint8)
args = lambda bits, st: (x, x.view(np.int32), out, 64, 32 * 32 * 32, 64, bits, st,
                         np.uint64(12345))
mod.fp32_decode.serial(x[:8], x[8:16].copy())  # numba's set-up, off the clock
rss, cpu = current_rss_bytes(), time.process_time()
mod.block_encode.serial.compile(tuple(numba.typeof(a) for a in args(4, False)))
result = {"compile_cpu_s": time.process_time() - cpu, "compile_rss": current_rss_bytes() - rss}
for bits in (8, 4, 2):
    for st in (False, True):
        best = 1e9
        for _ in range(9):
            t = time.perf_counter()
            mod.block_encode.serial(*args(bits, st))
            best = min(best, time.perf_counter() - t)
        result[f"q{bits}{'_stochastic' if st else ''}_gbs"] = x.nbytes / best / 1e9
print(json.dumps(result))
"""


def measure(path: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=tmp, OPENBLAS_NUM_THREADS="1")
        run = subprocess.run(
            [sys.executable, "-c", CHILD, os.path.abspath(path)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+", help="codec_kernels.py files to compare")
    ap.add_argument("--rounds", type=int, default=2, help="Fresh processes per source.")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}")
    for _ in range(args.rounds):
        for path in args.sources:
            r = measure(path)
            speeds = " ".join(f"{k[:-4]} {v:.2f}" for k, v in r.items() if k.endswith("_gbs"))
            print(
                f"{path}: compile {r['compile_cpu_s']:.2f} s CPU, "
                f"+{r['compile_rss'] / (1 << 20):.0f} MiB; encode GB/s: {speeds}"
            )


if __name__ == "__main__":
    main()
