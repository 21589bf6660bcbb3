"""`facto-edge bench`: facto-edge side by side with PyTorch and ONNX Runtime.

    from facto_edge.bench import BenchConfig, run_bench, write_outputs
    result = run_bench(BenchConfig(models=("resnet18_cifar",)), progress=print_fn)
    write_outputs(result, "docs/bench", "docs/benchmarks.md")

See ../shared/BENCHMARKS.md for the protocol. This package imports no framework at the
top: each measurement runs in its own `python -m facto_edge.bench.worker` process.
"""

from facto_edge.bench.driver import BenchResult, Run, run_bench
from facto_edge.bench.protocol import SYSTEMS, BenchConfig, RunSpec, plan_runs
from facto_edge.bench.report import write_outputs

__all__ = [
    "SYSTEMS",
    "BenchConfig",
    "BenchResult",
    "Run",
    "RunSpec",
    "plan_runs",
    "run_bench",
    "write_outputs",
]
