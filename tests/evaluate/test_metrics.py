"""Tests for the official SNI scorer against hand-computed values."""

from __future__ import annotations

import pytest

from tagi.data.sni import DataError
from tagi.evaluate.metrics import exact_match, normalize_answer, rouge_l, score_records


def test_normalize_answer_keeps_articles() -> None:
    assert normalize_answer("  The Cat,  sat!\n") == "the cat sat"
    assert normalize_answer("A-B (c)") == "ab c"
    assert normalize_answer("") == ""


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("Yes.", ["yes"], 1.0),
        ("  the ANSWER ", ["The answer!"], 1.0),
        ("answer", ["the answer"], 0.0),  # articles are not removed
        ("no", ["yes", "No"], 1.0),  # max over references
        ("maybe", ["yes", "no"], 0.0),
    ],
)
def test_exact_match(prediction: str, references: list[str], expected: float) -> None:
    assert exact_match(prediction, references) == expected


def test_rouge_l_hand_computed() -> None:
    # LCS 3; precision 3/3, recall 3/6 → F = 2·1·0.5 / 1.5 = 2/3.
    assert rouge_l("the cat sat", ["the cat sat on the mat"]) == pytest.approx(2 / 3)
    # LCS("a b c d", "a c e d") = "a c d" = 3; P = R = 3/4.
    assert rouge_l("a b c d", ["a c e d"]) == pytest.approx(0.75)
    assert rouge_l("dog", ["cat"]) == 0.0
    assert rouge_l("", ["cat"]) == 0.0


def test_rouge_l_max_over_references_stemming_and_case() -> None:
    # per reference: 0, F(P=1/3, R=1) = 0.5, 2/3 → max 2/3
    assert rouge_l("the cat sat", ["dogs run", "cat", "the cat sat on the mat"]) == pytest.approx(2 / 3)
    assert rouge_l("cats", ["cat"]) == 1.0  # Porter stemming
    assert rouge_l("Running, FAST!", ["run fast"]) == 1.0  # tokenizer lowercases and drops punctuation


def test_metrics_reject_empty_references() -> None:
    with pytest.raises(ValueError):
        rouge_l("a", [])
    with pytest.raises(ValueError):
        exact_match("a", "a")  # a bare string is not a list of references


def test_score_records_aggregates() -> None:
    records = [
        {"task": "t1", "category": "C", "prediction": "yes", "references": ["yes"]},
        {"task": "t1", "category": "C", "prediction": "no", "references": ["yes"]},
        {
            "task": "t2",
            "category": "C",
            "prediction": "the cat sat",
            "references": ["the cat sat on the mat"],
        },
        {"task": "t3", "prediction": "x", "references": "x"},
    ]
    result = score_records(records)
    assert result["overall"]["n"] == 4
    assert result["overall"]["exact_match"] == pytest.approx(50.0)
    assert result["overall"]["rougeL"] == pytest.approx(100 * (1 + 0 + 2 / 3 + 1) / 4)
    assert result["per_task"]["t1"] == {"rougeL": 50.0, "exact_match": 50.0, "n": 2}
    assert result["per_task"]["t2"]["rougeL"] == pytest.approx(200 / 3)
    assert result["per_category"]["C"]["n"] == 3
    assert result["per_category"]["C"]["rougeL"] == pytest.approx(100 * (1 + 0 + 2 / 3) / 3)
    assert result["per_category"]["task:t3"]["exact_match"] == 100.0
    assert list(result["per_task"]) == ["t1", "t2", "t3"]


def test_score_records_errors() -> None:
    with pytest.raises(DataError, match="no prediction records"):
        score_records([])
    with pytest.raises(DataError, match="record 0: needs"):
        score_records([{"task": "t", "prediction": "p"}])
    with pytest.raises(DataError, match="record 0: 'prediction' must be a string"):
        score_records([{"task": "t", "prediction": None, "references": ["a"]}])
