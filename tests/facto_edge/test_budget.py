"""Budget strings: what parses to how many bytes, and what is refused."""

import json

import pytest

from facto_edge.errors import BudgetError
from facto_edge.runtime import budget


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MB", 512 * 10**6),
        ("1.5GB", 1_500_000_000),
        ("256MiB", 256 << 20),
        ("256mib", 256 << 20),
        (" 64 MiB ", 64 << 20),
        ("1.5GiB", 3 << 29),
        ("4096", 4096),
        ("4096B", 4096),
        ("1_000_000", 10**6),
        ("512M", 512 << 20),
        ("2k", 2048),
        (".5KB", 500),
        ("1.0009KiB", 1024),
        (123456, 123456),
    ],
)
def test_parse_size(text, expected):
    assert budget.parse_size(text) == expected


@pytest.mark.parametrize(
    "junk", ["", "MB", "12XB", "-5MB", "1e9", "1.2.3GB", "5 M B", "0", "0.1B", None, 1.5, True, -1]
)
def test_parse_size_rejects_junk(junk):
    with pytest.raises(BudgetError):
        budget.parse_size(junk)


def test_parse_size_error_says_what_is_expected():
    with pytest.raises(BudgetError, match=r"'12XB'.*e\.g\. '512MB'"):
        budget.parse_size("12XB")


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (512 * 10**6, "488.3 MiB"),
        (3 << 40, "3.0 TiB"),
    ],
)
def test_format_size(n, text):
    assert budget.format_size(n) == text


def test_format_then_parse_is_close():
    # one decimal on a value >= 1 in its unit: within 5%
    for n in (1500, 10**7, 3 * 10**9, 12345678901):
        assert abs(budget.parse_size(budget.format_size(n).replace(" ", "")) - n) <= 0.05 * n


def test_fixed_cost_is_read_from_the_versioned_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tmp_path / "facto-edge" / "fixed_cost.json"
    path.parent.mkdir()
    path.write_text(json.dumps({budget._versions(): [150 << 20, 123 << 20], "python=other": 1}))
    monkeypatch.setattr(budget, "_probe_once", lambda codec: pytest.fail("must not measure"))
    assert budget.measure_runtime_fixed_cost() == 123 << 20
    assert budget.measure_runtime_startup_peak() == 150 << 20


def test_fixed_cost_measures_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    runs = iter([(400 << 20, 380 << 20, 5), (300 << 20, 200 << 20, 0)])  # compiled, loaded
    monkeypatch.setattr(budget, "_probe_once", lambda codec: next(runs))
    assert budget.measure_runtime_fixed_cost() == 200 << 20  # the warm (second) run
    assert budget.measure_runtime_startup_peak() == 300 << 20  # cached: no third run
    cached = json.loads((tmp_path / "facto-edge" / "fixed_cost.json").read_text())
    assert cached == {budget._versions(): [300 << 20, 200 << 20]}


def test_an_old_cache_entry_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tmp_path / "facto-edge" / "fixed_cost.json"
    path.parent.mkdir()
    path.write_text(json.dumps({budget._versions(): 123 << 20}))  # one figure: older format
    monkeypatch.setattr(budget, "_probe_once", lambda codec: (160 << 20, 120 << 20, 0))
    assert budget.measure_runtime_fixed_cost() == 120 << 20


def test_a_probe_that_compiled_is_not_trusted_next_time(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    runs = iter([(400 << 20, 380 << 20, 5), (390 << 20, 370 << 20, 5), (160 << 20, 120 << 20, 0)])
    monkeypatch.setattr(budget, "_probe_once", lambda codec: next(runs)[:3])
    assert budget.measure_runtime_fixed_cost() == 370 << 20  # compiling still: not cached
    assert not (tmp_path / "facto-edge" / "fixed_cost.json").exists()
    monkeypatch.setattr(budget, "_probe_once", lambda codec: (160 << 20, 120 << 20, 0))
    assert budget.measure_runtime_fixed_cost() == 120 << 20  # measured again, loading


def test_a_budget_below_the_startup_peak_is_refused(monkeypatch):
    monkeypatch.setattr(budget, "measure_runtime_fixed_cost", lambda codec: 100 << 20)
    monkeypatch.setattr(budget, "measure_runtime_startup_peak", lambda codec: 180 << 20)
    room = budget.allowance("150MiB")
    assert room.arena == (150 - 100 << 20) - budget.SAFETY_MARGIN
    message = str(room.too_small(1 << 20, "at micro-batches of 1"))
    smallest = (180 << 20) + budget.SAFETY_MARGIN
    assert f"--budget {-(-smallest // (1 << 20))}MiB or more" in message
    assert "peaks at 180.0 MiB while loading" in message


def test_fixed_cost_probe_measures_a_real_process():
    # numpy + numba + onnx + the runtime weigh tens of MiB; far less than 2 GiB
    peak, settled, compiled = budget._probe_once()
    assert 30 << 20 < settled <= peak < 2 << 30 and compiled >= 0
