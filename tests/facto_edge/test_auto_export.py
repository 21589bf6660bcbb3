"""`facto-edge export --auto --budget`: the best candidate whose training fits the budget."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from facto_edge.auto_export import CANDIDATES, Candidate, choose_and_export
from facto_edge.cli import main
from facto_edge.errors import BudgetError

torch = pytest.importorskip("torch")

BIG = Candidate(1.0, "all", "train", "big")
SMALL = Candidate(0.25, "last", "fold", "small")


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory):
    path = tmp_path_factory.mktemp("auto") / "m.pt"
    assert CliRunner().invoke(main, ["zoo", "simple_cnn", "-o", str(path)]).exit_code == 0
    return path


def config(out) -> dict:
    return json.loads((out / "manifest.json").read_text())["config"]


def test_a_roomy_budget_gets_the_studys_best_and_says_why(model_pt, tmp_path):
    out = tmp_path / "m.facto"
    result = CliRunner().invoke(
        main, ["export", str(model_pt), "-o", str(out), "--auto", "--budget", "1GB", "--no-ort"]
    )
    assert result.exit_code == 0, result.output
    best = CANDIDATES[0]
    assert (config(out)["rank"], config(out)["train"], config(out)["bn"]) == (
        best.rank, best.train, best.bn,
    )  # fmt: skip
    assert f"--auto chose {best.options()}" in result.output
    assert best.train_hint in result.output.replace("\n", " ") or not best.train_hint
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".facto-auto-")]


def test_a_tighter_budget_falls_back_to_a_smaller_candidate(model_pt, tmp_path):
    from facto_edge.plan import plan_training

    # The two candidates' planned peaks at a large batch, then a budget between them.
    peaks = []
    for cand in (BIG, SMALL):
        choice, _ = choose_and_export(
            model_pt, tmp_path / f"{cand.study}.facto", "4GB", batch_size=512, codec="q4",
            ort=False, candidates=(cand,),
        )  # fmt: skip
        peaks.append(plan_training(tmp_path / f"{cand.study}.facto", "4GB", 512, bits=4).total)
        assert choice.peak == peaks[-1]
    assert peaks[0] > peaks[1] + (4 << 20), peaks
    out = tmp_path / "between.facto"
    choice, _ = choose_and_export(
        model_pt, out, (peaks[0] + peaks[1]) // 2, batch_size=512, codec="q4", ort=False,
        candidates=(BIG, SMALL),
    )  # fmt: skip
    assert choice.candidate == SMALL
    assert choice.tried[0].startswith(BIG.options())
    assert config(out)["train"] == "last"


def test_nothing_fits_is_one_line_and_writes_nothing(model_pt, tmp_path):
    out = tmp_path / "m.facto"
    with pytest.raises(BudgetError, match="no --auto candidate .* give --budget"):
        choose_and_export(model_pt, out, "20MB", ort=False, candidates=(SMALL,))
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--auto"], "--auto needs --budget"),
        (["--auto", "--budget", "1GB", "--rank", "0.5"], "--auto chooses --rank"),
        (["--auto", "--budget", "1GB", "--train", "last"], "--auto chooses --train"),
        (["--budget", "1GB"], "--budget belongs to --auto"),
    ],
)
def test_auto_options_that_clash_are_one_line(model_pt, tmp_path, extra, words):
    out = tmp_path / "m.facto"
    result = CliRunner().invoke(main, ["export", str(model_pt), "-o", str(out), *extra])
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1].startswith("error: ")
    assert words in result.output
    assert not out.exists()
