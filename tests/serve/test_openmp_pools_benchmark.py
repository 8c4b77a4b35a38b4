"""``benchmarks/openmp_pools.py --smoke``: both settings run in processes of their own on the tiny model and
the results file holds every shape for both, with their ratios (numbers unchecked: tests never assert
speed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its siblings by name
    spec = importlib.util.spec_from_file_location("openmp_pools", BENCHMARKS / "openmp_pools.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_both_settings(bench, tmp_path, capsys):
    out = tmp_path / "pools.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["median_ms"]) == set(bench.SETTINGS)
    for setting in bench.SETTINGS:
        (run,) = result["runs"][setting]
        assert set(run) == {*bench.SHAPES, "cpu_cores_used"}
        assert all(run[shape] > 0 for shape in bench.SHAPES) and run["cpu_cores_used"] > 0
    assert set(result["ratio_main_vs_ended"]) == set(bench.SHAPES)
    assert result["command"].startswith("python benchmarks/openmp_pools.py --smoke")
    assert "ratio (main / ended)" in capsys.readouterr().out


def test_missing_checkpoint_is_one_error_line(bench, tmp_path, capsys):
    assert bench.main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint not found" in err[0]
    assert not (tmp_path / "x.json").exists()
