"""Paired comparisons over tasks: known cases, an independent reference interval, determinism."""

from __future__ import annotations

import math
import random

import pytest
import torch

from tagi.evaluate.compare import adapter_spread, paired_comparisons, paired_difference


def _method(per_task: dict[str, float], setting: str = "Def") -> dict:
    return {"scores": {setting: {"per_task": {t: {"rougeL": v} for t, v in per_task.items()}}}}


def test_constant_difference_has_a_point_interval() -> None:
    d = paired_difference({"a": 5.0, "b": 7.0, "c": 1.0}, {"a": 3.0, "b": 5.0, "c": -1.0}, seed=0)
    assert d == {"tasks": 3, "mean": 2.0, "ci_low": 2.0, "ci_high": 2.0, "wins": 3, "losses": 0, "ties": 0}


def test_counts_and_mean_use_only_common_tasks() -> None:
    d = paired_difference({"a": 10.0, "b": 0.0, "c": 4.0, "x": 99.0}, {"a": 0.0, "b": 5.0, "c": 4.0}, seed=0)
    assert (d["tasks"], d["wins"], d["losses"], d["ties"]) == (3, 1, 1, 1)
    assert d["mean"] == pytest.approx((10 - 5 + 0) / 3)
    assert d["ci_low"] < d["mean"] < d["ci_high"]
    one = paired_difference({"a": 1.0}, {"a": 0.0}, seed=0)
    assert one["mean"] == 1.0 and one["ci_low"] is None  # nothing to resample


def test_interval_matches_the_normal_approximation_on_many_tasks() -> None:
    """With 400 tasks the bootstrap interval of a mean is close to mean ± 1.96·sd/√T (computed here)."""
    rng = random.Random(1)
    ref = {f"t{i}": rng.gauss(3.0, 10.0) for i in range(400)}
    other = {t: 0.0 for t in ref}
    d = paired_difference(ref, other, seed=0)
    diffs = list(ref.values())
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1))
    half = 1.96 * sd / math.sqrt(len(diffs))
    assert d["ci_low"] == pytest.approx(mean - half, abs=0.1 * half)
    assert d["ci_high"] == pytest.approx(mean + half, abs=0.1 * half)


def test_seeded_and_sign_convention() -> None:
    ref = {f"t{i}": float(i % 7) for i in range(30)}
    other = {f"t{i}": float(i % 5) for i in range(30)}
    a, b = paired_difference(ref, other, seed=3), paired_difference(other, ref, seed=3)
    assert a == paired_difference(ref, other, seed=3)
    assert b["mean"] == pytest.approx(-a["mean"]) and (b["wins"], b["losses"]) == (a["losses"], a["wins"])


def test_comparisons_table_reference_and_missing_settings() -> None:
    methods = {
        "no-finetune": _method({"a": 1.0, "b": 2.0}),
        "tagi": _method({"a": 3.0, "b": 6.0}),
        "unavailable-one": {"spec": {}, "unavailable": "why"},
    }
    out = paired_comparisons(methods, ["Def", "Def+2Pos"], seed=0)
    assert out["reference"] == "tagi" and list(out["by_setting"]) == ["Def"]  # tagi has no Def+2Pos
    assert list(out["by_setting"]["Def"]) == ["no-finetune"]
    assert out["by_setting"]["Def"]["no-finetune"]["mean"] == pytest.approx(3.0)
    assert paired_comparisons({"no-finetune": methods["no-finetune"]}, ["Def"], seed=0) == {}


def test_adapter_spread_known_cases() -> None:
    same = adapter_spread(torch.full((3, 3), 4.0))  # one adapter (norm 2) for every task
    assert same["mean_cosine"] == pytest.approx(1.0) and same["task_specific_share"] == pytest.approx(0.0)
    assert same["mean_norm"] == pytest.approx(2.0)
    ortho = adapter_spread(torch.eye(4) * 9.0)  # orthogonal adapters of equal norm
    assert ortho["mean_cosine"] == pytest.approx(0.0) and ortho["task_specific_share"] == pytest.approx(0.75)
    torch.manual_seed(0)
    shared, own = torch.randn(1, 50), torch.randn(5, 50) * 0.5  # dW_i = shared + own_i, computed directly
    dw = (shared + own).double()
    spread = adapter_spread(dw @ dw.T)
    mean = dw.mean(0)
    expect = 1 - float(mean @ mean) / float((dw * dw).sum(1).mean())
    # float64 on both sides, two formulas over 5 x 50 numbers: rounding ~1e-15, checked at 1e-12
    assert spread["task_specific_share"] == pytest.approx(expect, rel=1e-12)
