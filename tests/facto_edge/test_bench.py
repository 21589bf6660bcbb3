"""facto-edge bench: the saved-bytes counter against a hand count, the interleaved plan,
the worker's error and budget records, the targets, and the whole harness on a tiny model
(figures are not asserted, only that every table and plot is there and well formed)."""

from __future__ import annotations

import json
import os
import sys

import pytest

torch = pytest.importorskip("torch")

from facto_edge.bench import (  # noqa: E402  # noqa: E402
    BenchConfig,
    BenchResult,
    Run,
    RunSpec,
    plan_runs,
    run_bench,
    write_outputs,
)
from facto_edge.bench import report as report_lib  # noqa: E402
from facto_edge.bench.driver import run_worker  # noqa: E402
from facto_edge.bench.flops import StepFlops, all_trainable, count_flops  # noqa: E402
from facto_edge.bench.machine import wait_until_idle  # noqa: E402
from facto_edge.bench.saved import SavedTensorCounter  # noqa: E402
from facto_edge.bench.sgemm import sgemm_rate  # noqa: E402
from facto_edge.bench.summary import evaluate_targets  # noqa: E402
from facto_edge.bench.systems import WorkerArgs  # noqa: E402

SYSTEMS = ("pytorch-dense", "pytorch-factorized", "ort-training", "facto-edge")


def test_saved_counter_matches_hand_count_on_two_layers():
    # Linear(8, 16) -> ReLU -> Linear(16, 4) on x [5, 8], loss = sum of the outputs.
    # The first addmm needs x for its weight gradient (x needs no gradient, so W1 is not
    # kept); ReLU keeps its output; the second addmm keeps its input (that same ReLU
    # output: one storage) and W2^T (a parameter, excluded); sum keeps nothing.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(5, 8)
    with SavedTensorCounter(exclude=model.parameters()) as counted:
        loss = model(x).sum()
    with SavedTensorCounter() as everything:
        model(x).sum()
    loss.backward()
    assert counted.nbytes == 5 * 8 * 4 + 5 * 16 * 4
    assert counted.count == 2
    assert everything.nbytes == counted.nbytes + 16 * 4 * 4


def _small_conv_net():
    """x [N, 3, 8, 8] -> Conv a (4x3x3x3, pad 1) -> Relu -> Conv b (8x4x1x1) -> Conv c
    (depthwise 8x1x3x3, pad 1, stride 2) -> GlobalAveragePool -> Flatten -> Gemm d (10x8,
    transB)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = {"wa": (4, 3, 3, 3), "wb": (8, 4, 1, 1), "wc": (8, 1, 3, 3), "wd": (10, 8)}
    inits = [numpy_helper.from_array(np.zeros(s, np.float32), n) for n, s in weights.items()]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Conv", ["ra", "wb"], ["b"]),
        helper.make_node("Conv", ["b", "wc"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], group=8),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wd"], ["y"], transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph(nodes, "small", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_flop_count_matches_hand_count_on_a_small_conv_net():
    # MACs per image: a 4*8*8 outputs x 3*3*3 = 6912; b 8*8*8 x 4 = 2048; c 8*4*4 x 1*3*3
    # = 1152 (one input channel per group); d 10 x 8 = 80. Forward: 2 x 10192.
    model = _small_conv_net()
    forward = 2 * (6912 + 2048 + 1152 + 80)
    # Only wb trains: backward starts at b, whose input carries no gradient (b needs only
    # its weight gradient); c and d pass the gradient on to their inputs only.
    assert count_flops(model, ["wb"]) == StepFlops(forward, 2 * (1152 + 80), 2 * 2048)
    # Everything trains: every weight gradient, every input gradient except a's (x).
    everything = count_flops(model, all_trainable(model))
    assert everything == StepFlops(forward, 2 * (2048 + 1152 + 80), forward)
    assert everything.total == 3 * forward - 2 * 6912
    # Nothing trains: forward only.
    assert count_flops(model, []) == StepFlops(forward, 0, 0)


def test_sgemm_rate_is_the_best_over_its_sizes():
    rate = sgemm_rate((64, 128), tries=2)
    assert set(rate["by_size"]) == {"64", "128"} and rate["tries"] == 2
    assert rate["gflops"] == max(rate["by_size"].values()) > 0


def test_plan_interleaves_systems_and_measures_cold_once():
    cfg = BenchConfig(models=("m",), repeats=2, sweep=(8, 16), codecs=("q4", "q2"))
    plan = plan_runs(cfg, "m")
    assert (plan[0].kind, plan[0].system) == ("prime", "facto-edge")
    main = [(r.repeat, r.system) for r in plan if r.kind in ("main", "cold")]
    assert main == [(0, s) for s in (*SYSTEMS[:3], "facto-edge", "facto-edge")] + [
        (1, s) for s in SYSTEMS
    ]
    assert [r.kind for r in plan if r.system == "facto-edge"][:3] == ["prime", "cold", "main"]
    assert [r.count_saved for r in plan if r.kind == "main"] == [True] * 4 + [False] * 4
    assert [(r.codec, r.kind) for r in plan if r.kind == "codec"] == [("q2", "codec")]
    sweep = [(r.batch, r.system) for r in plan if r.kind == "sweep"]
    assert sweep == [(b, s) for b in (8, 16) for s in SYSTEMS]


def test_worker_failure_and_budget_overrun_become_records(tmp_path):
    payload = WorkerArgs("facto-edge", "m", str(tmp_path / "absent"), 2, "q4", 1, 1)
    failed = run_worker(payload, env=None, timeout_s=120, rss_limit=None)
    assert failed["ok"] is False and "absent" in failed["error"]
    stopped = run_worker(payload, env=None, timeout_s=120, rss_limit=1)
    assert stopped["ok"] is False and stopped["over_budget"]
    assert stopped["error"].startswith("over budget") and stopped["peak_rss"] > 1


def _run(system: str, kind: str = "main", **figures) -> Run:
    spec = RunSpec("m", system, 4, kind, "q4", 1, 1, count_saved=True)
    return Run(spec, True, step_s=[0.1], **figures)


def test_targets_say_met_and_not_met():
    runs = [
        _run("pytorch-dense", saved_bytes=1000, peak_rss=1000, first_step_s=9.0),
        _run("pytorch-factorized", saved_bytes=1200, peak_rss=900, first_step_s=9.0),
        _run("facto-edge", saved_bytes=50, peak_rss=400, first_step_s=1.0),
    ]
    cfg = BenchConfig(models=("m",), systems=(*SYSTEMS[:2], "facto-edge"), sweep=())
    rows = {r.target.text.split()[0]: r for r in evaluate_targets(BenchResult(cfg, {}, runs, ""))}
    assert rows["saved"].value == pytest.approx(0.95) and rows["saved"].status == "met"
    assert rows["throughput"].value == pytest.approx(1.0) and rows["throughput"].status == "met"
    assert rows["peak"].value == pytest.approx(0.4) and rows["peak"].status == "not met"
    assert rows["cold"].status == "met"


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every Markdown table as rows of cells."""
    tables, current = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def test_harness_on_a_tiny_model_writes_report_and_plots(tmp_path):
    # A 300 MB budget stops the frameworks' sweep workers early (torch alone is near it),
    # which keeps the test short and takes the "ran out, skip larger batches" path.
    cfg = BenchConfig(
        models=("simple_cnn",),
        input_shape=(3, 16, 16),
        batch=4,
        steps=2,
        warmup=1,
        repeats=1,
        sweep=(2, 4),
        sweep_steps=1,
        cold_start=False,
        budget=300 * 10**6,
        threads=1,
        command="pytest",
    )
    events = []
    result = run_bench(cfg, tmp_path / "work", progress=lambda *e: events.append(e))
    report = write_outputs(result, tmp_path / "docs" / "bench")

    assert events[-1][0] == events[-1][1] == len(plan_runs(cfg, "simple_cnn")) + 1
    failed = [
        (r.spec.system, r.spec.kind, r.error)
        for r in result.runs
        if not r.ok and not (r.spec.kind == "sweep" and r.over_budget)
    ]
    assert not failed
    for system in SYSTEMS:
        sweep = [r for r in result.runs if r.spec.kind == "sweep" and r.spec.system == system]
        assert [r.spec.batch for r in sweep] == [2, 4]
        assert not sweep[0].skipped and sweep[1].skipped == sweep[0].over_budget
    text = report.read_text()
    assert report == tmp_path / "docs" / "benchmarks.md"
    for needle in ("Load average", "torch 2.", "numba", "onnxruntime", "Command: `pytest`"):
        assert needle in text
    tables = _tables(text)
    assert len(tables) == 6
    for table in tables:
        assert len({len(row) for row in table}) == 1, table[0]
        assert set(table[1]) == {"---"}
    results_table = next(t for t in tables if "saved activations / step" in t[0])
    assert [row[1].split(" (")[0] for row in results_table[2:]] == [
        "PyTorch dense",
        "PyTorch factorized",
        "ONNX Runtime training",
        "facto-edge",
    ]
    # Achieved GFLOP/s beside the machine's sgemm rate, for every system.
    assert result.machine["sgemm"]["gflops"] > 0 and result.machine["sgemm"]["threads"] == 1
    assert f"- sgemm: {result.machine['sgemm']['gflops']:.1f} GFLOP/s" in text
    head = results_table[0]
    for row in results_table[2:]:
        cells = dict(zip(head, row, strict=True))
        img_s, gflop = float(cells["img/s"]), float(cells["GFLOP / img"])
        assert float(cells["GFLOP/s"]) == pytest.approx(img_s * gflop, rel=0.01, abs=0.051)
        share = float(cells["GFLOP/s"]) / result.machine["sgemm"]["gflops"]
        assert float(cells["% of sgemm"].rstrip("%")) == pytest.approx(100 * share, abs=0.1)
    flops = result.flops["simple_cnn"]
    assert flops["pytorch-factorized"] == flops["facto-edge"] == flops["ort-training"]
    dense, factorized = (StepFlops(**flops[s]) for s in ("pytorch-dense", "pytorch-factorized"))
    assert dense.weight_grad == dense.forward > factorized.forward > factorized.weight_grad
    for name in ("memory_vs_batch", "throughput_vs_batch", "saved_bytes", "memory_breakdown"):
        png = tmp_path / "docs" / "bench" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](bench/{name}.png)" in text
    saved = json.loads((tmp_path / "docs" / "bench" / "results.json").read_text())
    again = BenchResult.from_json(json.dumps(saved))
    assert report_lib.render(again, [], report) == report_lib.render(result, [], report)


def test_facto_edge_worker_imports_no_framework(tmp_path):
    # The facto-edge measurement must not pay for torch or onnxruntime in its peak RSS.
    code = (
        "import sys, facto_edge.bench.worker, facto_edge.bench.systems.facto; "
        "print([m for m in ('torch', 'onnxruntime', 'tensorly', 'matplotlib') "
        "if m in sys.modules])"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_wait_until_idle_gives_up_after_max_wait():
    busy, waited = wait_until_idle(max_busy=-1.0, max_wait_s=0.0)
    assert busy is None or 0.0 <= busy <= os.cpu_count()
    assert waited >= 0.9
    assert wait_until_idle(max_busy=float("inf"), max_wait_s=60.0)[1] < 30.0


def test_the_driver_process_keeps_numba_out_until_a_child_needs_it():
    # Importing numba makes ~40 MiB of LLVM resident, and pages a parent maps stay in every
    # worker's RSS (MADV_PAGEOUT spares shared pages): validating a configuration, the
    # probe's cache key, the FLOP counter's module and the sgemm probe must not import it
    # (a bench once reported 194 MiB for a 156 MiB run).
    code = (
        "import sys\n"
        "from facto_edge.bench.protocol import BenchConfig\n"
        "from facto_edge.runtime import budget\n"
        "from facto_edge.bench import driver, flops\n"
        "BenchConfig(models=('simple_cnn',), codecs=('q4', 'q2')).validate()\n"
        "budget._versions()\n"
        "assert driver.measure_sgemm(BenchConfig(threads=1))['gflops'] > 0\n"
        "print([m for m in ('numba', 'llvmlite') if m in sys.modules])"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
