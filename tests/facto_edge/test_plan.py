"""Budget planning (facto_edge/plan.py) and `facto-edge plan`: the batch, micro-batches and
codec bits chosen against what the real sessions' arenas need, the refusal naming the
smallest budget, the printed breakdown and timeline, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner

from facto_edge.errors import BudgetError
from facto_edge.plan import plan_training
from facto_edge.plan_cli import plan
from facto_edge.runtime import TrainingSession
from facto_edge.runtime import budget as budget_mod

MiB = 1 << 20
FIXED = 100 * MiB
HEAVY = ("torch", "tensorly", "onnxruntime")


@pytest.fixture
def model_dir(exported, monkeypatch):
    """simple_cnn at rank 0.25, with the runtime's fixed cost (and start-up peak) pinned to
    100 MiB."""
    monkeypatch.setattr(budget_mod, "measure_runtime_fixed_cost", lambda codec: FIXED)
    monkeypatch.setattr(budget_mod, "measure_runtime_startup_peak", lambda codec: FIXED)
    return exported("simple_cnn", rank=0.25, ort=False)[1]


def _arena(model_dir, batch: int, bits: int, accumulate: int = 1) -> int:
    s = TrainingSession(model_dir, batch_size=batch, codec=f"q{bits}", accumulate=accumulate)
    return s.memory_report()["arena_bytes"]


def _budget(arena: int) -> int:
    return FIXED + budget_mod.SAFETY_MARGIN + arena


def test_the_largest_power_of_two_batch_at_the_most_bits(model_dir):
    budget = _budget((_arena(model_dir, 16, 8) + _arena(model_dir, 32, 2)) // 2)
    r = plan_training(model_dir, budget)
    assert (r.batch_size, r.accumulate, r.bits) == (16, 1, 8)
    assert r.total <= budget and r.arena_bytes == _arena(model_dir, 16, 8)
    assert plan_training(model_dir, budget, bits=4).bits == 4
    roomy = plan_training(model_dir, _budget(_arena(model_dir, 16, 8)), max_batch=8)
    assert roomy.batch_size == 8


def test_fewer_bits_when_they_make_the_batch_fit(exported, monkeypatch):
    monkeypatch.setattr(budget_mod, "measure_runtime_fixed_cost", lambda codec: FIXED)
    monkeypatch.setattr(budget_mod, "measure_runtime_startup_peak", lambda codec: FIXED)
    model_dir = exported("resnet18_cifar", rank=0.25, ort=False)[1]
    q8, q4, q2 = (_arena(model_dir, 32, bits) for bits in (8, 4, 2))
    assert q2 < q4 < q8  # saved activations are live at the arena's peak
    r = plan_training(model_dir, _budget(q2), batch_size=32)
    assert (r.accumulate, r.bits) == (1, 2)
    assert plan_training(model_dir, _budget(q2), batch_size=32, codec_limit=4).accumulate > 1


def test_micro_batches_reach_the_batch_asked_for(model_dir):
    budget = _budget(_arena(model_dir, 64, 2, accumulate=4))
    r = plan_training(model_dir, budget, batch_size=64, bits=2)
    assert 1 < r.accumulate <= 4 and r.micro_batch * r.accumulate >= 64
    assert r.total <= budget and r.memory["micro_batch"] == r.micro_batch


def test_a_budget_below_the_minimum_names_the_smallest(model_dir):
    started = time.perf_counter()
    with pytest.raises(BudgetError, match=r"give --budget (\d+)MiB or more") as err:
        plan_training(model_dir, FIXED + 2 * MiB, batch_size=32)
    assert time.perf_counter() - started < 5
    smallest = int(err.value.args[0].rsplit("--budget ", 1)[1].split("MiB")[0])
    r = plan_training(model_dir, smallest * MiB, batch_size=32)
    assert r.total <= smallest * MiB and r.micro_batch * r.accumulate >= 32
    with pytest.raises(BudgetError):
        plan_training(model_dir, (smallest - 1) * MiB, batch_size=32)


def test_cli_prints_the_breakdown_and_plots_the_timeline(model_dir, tmp_path):
    png = tmp_path / "timeline.png"
    budget = f"{_budget(_arena(model_dir, 8, 8)) // MiB + 1}MiB"
    run = CliRunner().invoke(plan, [str(model_dir), "--budget", budget, "--plot", str(png)])
    assert run.exit_code == 0, run.output
    for what in ("weights", "gradients", "optimizer state", "saved activations", "workspace"):
        assert what in run.output
    assert "peak live activations" in run.output and "fixed runtime cost" in run.output
    assert "saved for backward, per layer:" in run.output and "codec q8" in run.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = CliRunner().invoke(plan, [str(model_dir), "--budget", "101MiB"])
    assert refused.exit_code == 1 and "or more" in refused.output
    assert "Traceback" not in refused.output


# Runs `facto-edge plan` and `facto-edge train` in one fresh interpreter and lists the
# heavy frameworks they loaded.
_IMPORTS = textwrap.dedent(
    """
    import json, sys
    from facto_edge.cli import main
    from facto_edge.plan_cli import plan
    model, data, out = sys.argv[1:4]
    plan.main([model, "--budget", "2GB"], standalone_mode=False)
    main.main(["train", model, "--data", data, "-o", out, "--epochs", "1", "--batch-size",
               "16", "--budget", "2GB"], standalone_mode=False)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy})
    print(json.dumps(heavy))
    """
)


def test_plan_and_train_import_no_heavy_framework(exported, tmp_path):
    model_dir = exported("simple_cnn", rank=0.25, ort=False)[1]
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.integers(0, 256, (40, 32, 32, 3), np.uint8), y=rng.integers(0, 10, 40))
    code = _IMPORTS.replace("{heavy}", repr(set(HEAVY)))
    args = [sys.executable, "-c", code, str(model_dir), str(data), str(tmp_path / "run")]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.splitlines()[-1]) == []
