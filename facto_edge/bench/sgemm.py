"""The machine's sgemm rate: numpy float32 matmul of a few large square sizes, best of a
few tries each, what the GFLOP/s figures of a benchmark are set beside.

    python -m facto_edge.bench.sgemm     # one JSON line: {"gflops": ..., "by_size": ...}

The driver runs it once per benchmark in a child process with the workers' thread
settings (OMP/OPENBLAS/MKL_NUM_THREADS are read when numpy's BLAS loads), numpy only.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

SIZES = (512, 1024, 2048)
TRIES = 3


def sgemm_gflops(n: int, tries: int = TRIES) -> float:
    """GFLOP/s of the fastest of `tries` products of two n x n float32 matrices."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)  # the BLAS's threads and buffers start here, untimed
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def sgemm_rate(sizes: tuple[int, ...] = SIZES, tries: int = TRIES) -> dict:
    """{"gflops": the best rate over `sizes`, "by_size": {n: rate}, "tries": tries}."""
    by_size = {str(n): round(sgemm_gflops(n, tries), 1) for n in sizes}
    return {"gflops": max(by_size.values()), "by_size": by_size, "tries": tries}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m facto_edge.bench.sgemm [SIZE ...]`."""
    argv = sys.argv[1:] if argv is None else argv
    sizes = tuple(int(v) for v in argv) or SIZES
    print(json.dumps(sgemm_rate(sizes)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
