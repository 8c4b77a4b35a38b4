"""The official Super-NaturalInstructions scorer (English track), without its import-time downloads.

- Exact match: after :func:`normalize_answer` (lowercase, drop ``string.punctuation``, collapse
  whitespace; articles are kept, unlike SQuAD), 1 if the prediction equals any reference, else 0.
- Rouge-L: ``rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)`` F-measure, max
  over the references. The scorer is built once, on first use.

:func:`score_records` averages both over instances and multiplies by 100, overall, per task and
per category.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from tagi.data.sni import DataError

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, remove ASCII punctuation, collapse whitespace (articles are kept)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(text.split())


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer  # imported lazily: it pulls in nltk

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _check_references(references: Sequence[str]) -> None:
    if isinstance(references, str) or not references:
        raise ValueError("references must be a non-empty sequence of strings")


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalized prediction equals a normalized reference, else 0.0."""
    _check_references(references)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in references))


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """Rouge-L F-measure in [0, 1] (stemmed, rouge_score tokenizer), max over references."""
    _check_references(references)
    scorer = _scorer()
    return max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references)


def _summary(rouge_sum: float, em_sum: float, n: float) -> dict[str, float | int]:
    count = int(n)
    return {"rougeL": 100.0 * rouge_sum / count, "exact_match": 100.0 * em_sum / count, "n": count}


def _record_fields(i: int, record: Mapping[str, Any]) -> tuple[str, str, str, list[str]]:
    """(task, category, prediction, references) of record ``i``; :class:`DataError` when malformed."""
    try:
        task, prediction, references = record["task"], record["prediction"], record["references"]
    except (KeyError, TypeError):
        raise DataError(f"record {i}: needs 'task', 'prediction' and 'references'") from None
    if isinstance(references, str):
        references = [references]
    if not isinstance(prediction, str) or not references or not all(isinstance(r, str) for r in references):
        raise DataError(
            f"record {i}: 'prediction' must be a string and 'references' a non-empty list of strings"
        )
    category = record.get("category") or f"task:{task}"
    return str(task), str(category), prediction, list(references)


def score_records(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Score prediction records.

    Each record is a mapping with ``"task"``, ``"prediction"``, ``"references"`` (list of strings, or
    one string) and optionally ``"category"`` (default ``f"task:{task}"``). Returns::

        {"overall":      {"rougeL": float, "exact_match": float, "n": int},
         "per_task":     {task: {...same keys...}},
         "per_category": {category: {...same keys...}}}

    Scores are ×100 averages over instances (a category averages over all its instances, so larger
    tasks weigh more, as in the official scorer). Keys of the per-* dicts keep first-seen order.
    """
    totals: dict[tuple[str, str], list[float]] = {}
    for i, record in enumerate(records):
        task, category, prediction, references = _record_fields(i, record)
        rouge, em = rouge_l(prediction, references), exact_match(prediction, references)
        for key in (("overall", ""), ("task", task), ("category", category)):
            acc = totals.setdefault(key, [0.0, 0.0, 0])
            acc[0] += rouge
            acc[1] += em
            acc[2] += 1
    if not totals:
        raise DataError("no prediction records to score")
    overall = totals[("overall", "")]
    result: dict[str, Any] = {"overall": _summary(*overall), "per_task": {}, "per_category": {}}
    for (kind, name), acc in totals.items():
        if kind != "overall":
            result["per_task" if kind == "task" else "per_category"][name] = _summary(*acc)
    return result
