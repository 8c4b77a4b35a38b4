"""P3-style held-out accuracy offline: T0's held-out datasets in their SNI versions (SPEC §4).

The paper reports rank-classification accuracy on T0's 11 held-out P3 datasets, averaged over datasets
("MTest11"). P3 itself is not reachable offline, but SNI holds converted versions of six of them; with
``evaluate.rank_classification`` on, every method is scored on those by rank classification (the option
with the lowest token-averaged NLL wins; options = the task's label set, see :mod:`tagi.data.options`),
and this module averages the per-dataset accuracies the paper's way: each dataset weighs the same, whatever
its number of instances. Only datasets present among the evaluated test tasks count; the report says which.
"""

from __future__ import annotations

P3_HELDOUT: dict[str, str] = {
    "ANLI R1": "task1385_anli_r1_entailment",
    "CB": "task1388_cb_entailment",
    "RTE": "task1344_glue_entailment_classification",
    "WSC": "task1390_wscfixed_coreference",
    "WinoGrande": "task1391_winogrande_easy_answer_generation",
    "COPA": "task1393_superglue_copa_text_completion",
}
"""Dataset -> the SNI task that converts it (SNI default-split test tasks)."""


def p3_average(rank: dict) -> dict | None:
    """``{"datasets": {name: accuracy}, "average": mean, "instances": n}`` from one method and setting's
    rank-classification result (``None`` when none of the datasets was scored)."""
    per_task = rank.get("per_task", {})
    acc = {name: per_task[task]["accuracy"] for name, task in P3_HELDOUT.items() if task in per_task}
    if not acc:
        return None
    n = sum(per_task[P3_HELDOUT[name]]["n"] for name in acc)
    return {"datasets": acc, "average": sum(acc.values()) / len(acc), "instances": n}


def p3_table(methods: dict, settings: list[str]) -> dict:
    """``{method: {setting: p3_average(...)}}`` for every method with rank-classification scores."""
    out = {}
    for name, m in methods.items():
        rows = {s: p3_average(m["scores"][s].get("rank_classification") or {}) for s in m.get("scores", {})}
        rows = {s: r for s, r in rows.items() if r is not None and s in settings}
        if rows:
            out[name] = rows
    return out
