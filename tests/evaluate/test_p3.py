"""P3-style held-out average: datasets weigh the same, only scored datasets count."""

from __future__ import annotations

import pytest

from tagi.evaluate.p3 import P3_HELDOUT, p3_average, p3_table
from tagi.evaluate.tables import p3_section


def rank(**acc_n):
    per_task = {P3_HELDOUT[name]: {"accuracy": a, "n": n, "options": 3} for name, (a, n) in acc_n.items()}
    per_task["task999_other"] = {"accuracy": 0.0, "n": 50, "options": 2}  # not a P3 dataset: ignored
    return {"accuracy": 0.0, "n": 0, "per_task": per_task}


def test_average_weighs_datasets_equally():
    r = p3_average(rank(CB=(80.0, 5), RTE=(40.0, 100)))
    assert r["datasets"] == {"CB": 80.0, "RTE": 40.0}
    assert r["average"] == pytest.approx(60.0) and r["instances"] == 105  # not the instance-weighted 41.9
    assert p3_average(rank()) is None and p3_average({}) is None


def test_table_and_report_section():
    methods = {
        "tagi": {"scores": {"Def": {"rank_classification": rank(CB=(60.0, 5), COPA=(50.0, 5))}}},
        "copy-demo": {"scores": {"Def": {"rank_classification": {}}}},
        "broken": {"unavailable": "why"},
    }
    table = p3_table(methods, ["Def"])
    assert set(table) == {"tagi"} and table["tagi"]["Def"]["average"] == pytest.approx(55.0)
    text = p3_section({"p3_heldout": table, "settings": ["Def"]})
    assert (
        "| method | setting | CB | COPA | average |" in text and "| tagi | Def | 60.0 | 50.0 | 55.0 |" in text
    )
    assert p3_section({"p3_heldout": {}, "settings": ["Def"]}) == ""
