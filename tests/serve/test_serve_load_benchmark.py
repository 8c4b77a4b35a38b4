"""``benchmarks/serve_load.py --smoke``: the load benchmark runs end to end on the tiny model (numbers unchecked:
tests never assert speed), with 0 errors and outputs equal to ``Tagi.predict`` in every serving mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def test_smoke_run_writes_results(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports benchtools as a sibling
    spec = importlib.util.spec_from_file_location("serve_load", BENCHMARKS / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "serve_load.json"
    assert bench.main(["--smoke", "--clients", "3", "--adapters", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (cell,) = result["cells"]
    assert (cell["adapters"], cell["clients"], cell["requests"]) == (2, 3, 6)
    assert [r["mode"] for r in cell["runs"]] == ["batched", "join_each_step", "one_at_a_time"]
    for run in cell["runs"]:
        assert run["errors"] == 0 and run["completions"] == 6 and run["outputs_equal_predict"]
        assert run["model_calls"] >= 6 and 1 <= run["mean_rows_per_call"] <= 6
    assert cell["throughput_ratio_batched_vs_one_at_a_time"] > 0
    assert cell["throughput_ratio_batched_vs_join_each_step"] > 0
    one = cell["runs"][2]
    assert one["mean_rows_per_call"] == 1  # max_batch=1: every request alone, one row per model call
    assert result["total_errors"] == 0 and "command" in result and "ratio" in capsys.readouterr().out
