"""``benchmarks/serve_load.py --smoke``: the load benchmark runs end to end on the tiny model (numbers unchecked:
tests never assert speed), with 0 errors and outputs equal to ``Tagi.predict`` in every serving mode."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def load_script(monkeypatch):
    """The script as module ``serve_load``: importable by name, as its client process imports it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports benchtools as a sibling
    spec = importlib.util.spec_from_file_location("serve_load", BENCHMARKS / "serve_load.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "serve_load", bench)
    spec.loader.exec_module(bench)
    return bench


def test_smoke_run_writes_results(tmp_path, monkeypatch, capsys):
    bench = load_script(monkeypatch)
    out = tmp_path / "serve_load.json"
    assert bench.main(["--smoke", "--clients", "3", "--adapters", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (cell,) = result["cells"]
    assert (cell["adapters"], cell["clients"], cell["requests"]) == (2, 3, 6)
    assert [r["mode"] for r in cell["runs"]] == [
        "batched",
        "separate_prefill",
        "padded_prefill",
        "join_each_step",
        "one_at_a_time",
    ]
    for run in cell["runs"]:
        assert run["errors"] == 0 and run["completions"] == 6 and run["outputs_equal_predict"]
        assert run["model_calls"] >= 6 and 1 <= run["mean_rows_per_call"] <= 6
    assert cell["throughput_ratio_batched_vs_one_at_a_time"] > 0
    assert cell["throughput_ratio_batched_vs_join_each_step"] > 0
    assert cell["throughput_ratio_batched_vs_padded_prefill"] > 0
    assert cell["throughput_ratio_batched_vs_separate_prefill"] > 0
    one = cell["runs"][4]
    assert one["mean_rows_per_call"] == 1  # max_batch=1: every request alone, one row per model call
    assert all(len(r["rounds_completions_per_s"]) == 1 for r in cell["runs"]) and result["rounds"] == 1
    assert result["total_errors"] == 0 and "command" in result and "ratio" in capsys.readouterr().out


def test_each_mode_is_reported_by_its_median_round(monkeypatch):
    bench = load_script(monkeypatch)
    rounds = [
        {
            "completions_per_s": 3.0,
            "p50_ms": 30,
            "errors": 0,
            "outputs_equal_predict": True,
            "outputs_equal_predict_share": 1.0,
        },
        {
            "completions_per_s": 1.0,
            "p50_ms": 10,
            "errors": 1,
            "outputs_equal_predict": True,
            "outputs_equal_predict_share": 1.0,
        },
        {
            "completions_per_s": 2.0,
            "p50_ms": 20,
            "errors": 0,
            "outputs_equal_predict": False,
            "outputs_equal_predict_share": 0.75,
        },
    ]
    out = bench.median_run(rounds)
    assert (out["completions_per_s"], out["p50_ms"]) == (2.0, 20)  # the median round, all of its numbers
    assert out["rounds_completions_per_s"] == [3.0, 1.0, 2.0]  # in the order they ran
    assert out["errors"] == 1 and out["outputs_equal_predict"] is False  # over every round
    assert out["outputs_equal_predict_share"] == 0.75  # the worst round
    assert bench.median_run(rounds[:2])["completions_per_s"] == 1.0  # even: the lower middle


def test_smoke_run_in_two_dtypes_with_two_modes(tmp_path, monkeypatch):
    bench = load_script(monkeypatch)
    out = tmp_path / "serve_load.json"
    argv = ["--smoke", "--clients", "2", "--adapters", "2", "--dtypes", "float32,bfloat16",
            "--modes", "batched,one_at_a_time", "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["dtypes"] == ["float32", "bfloat16"] and list(result["modes"]) == [
        "batched",
        "one_at_a_time",
    ]
    assert [c["dtype"] for c in result["cells"]] == ["float32", "bfloat16"]
    for cell in result["cells"]:
        assert [r["mode"] for r in cell["runs"]] == ["batched", "one_at_a_time"]
        assert all(r["errors"] == 0 for r in cell["runs"])
        assert all(0 < r["all_clients_share"] <= 1 for r in cell["runs"])  # the first client ends in the run
        shares = [r["outputs_equal_predict_share"] for r in cell["runs"]]
        # float32 equals Tagi.predict whatever the batch; bfloat16 rounds differently per batch shape
        assert shares == [1.0, 1.0] if cell["dtype"] == "float32" else all(0 <= x <= 1 for x in shares)
        assert cell["throughput_ratio_batched_vs_one_at_a_time"] > 0
        assert cell["throughput_ratio_batched_vs_separate_prefill"] is None  # not run
    (ratio,) = result["dtype_ratios"]
    assert ratio["dtype"] == "bfloat16" and set(ratio["throughput_vs_float32"]) == {
        "batched",
        "one_at_a_time",
    }
    assert 0 <= ratio["predict_equal_float32_share"] <= 1
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--modes", "batched,fastest", "--out", str(out)])


def test_dtype_ratios_pair_each_cell_with_its_float32_twin(monkeypatch):
    bench = load_script(monkeypatch)

    def cell(adapters, dtype, batched, alone):
        runs = [
            {"mode": "batched", "completions_per_s": batched},
            {"mode": "one_at_a_time", "completions_per_s": alone},
        ]
        return {"adapters": adapters, "clients": 16, "dtype": dtype, "runs": runs}

    cells = [cell(1, "float32", 10.0, 4.0), cell(1, "bfloat16", 15.0, 5.0), cell(8, "bfloat16", 9.0, 3.0)]
    refs = [{(0, "a"): "x", (0, "b"): "y"}, {(0, "a"): "x", (0, "b"): "z"}, {(0, "a"): "x"}]
    (only,) = bench.dtype_ratios(cells, refs)  # the 8-adapter cell has no float32 twin: skipped
    assert only == {"adapters": 1, "clients": 16, "dtype": "bfloat16",
                    "throughput_vs_float32": {"batched": 1.5, "one_at_a_time": 1.25},
                    "predict_equal_float32_share": 0.5}  # fmt: skip
