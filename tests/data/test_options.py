"""Tests for the rank-classification format: SNI conversion, JSONL rows and P3 rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tagi.data.options import OptionExample, from_p3_row, from_sni_task, read_jsonl
from tagi.data.sni import DataError, Instance, Task


def _task(outputs: list[tuple[str, ...]]) -> Task:
    instances = tuple(Instance(id=str(i), input=f"x{i}", outputs=o) for i, o in enumerate(outputs))
    return Task(name="cls", definition="Classify.", positive_examples=(), instances=instances)


def test_from_sni_task_classification() -> None:
    examples = from_sni_task(_task([("yes",), ("no ",), ("yes",), ("no",), ("maybe", "yes")]))
    assert examples is not None
    assert [e.options for e in examples] == [("no", "yes")] * 5
    assert [e.answer for e in examples] == [1, 0, 1, 0, 1]
    assert examples[0] == OptionExample(input="x0", options=("no", "yes"), answer=1, task="cls")


def test_from_sni_task_rejects_non_classification() -> None:
    assert from_sni_task(_task([("a",), ("a",), ("a",)])) is None  # one option only
    assert from_sni_task(_task([(str(i),) for i in range(12)] * 2), max_options=10) is None  # too many
    assert from_sni_task(_task([("a",), ("b",), ("c",)])) is None  # free text: every answer different
    assert from_sni_task(_task([("a",), ("b",), ("a",), ("b",), ("c", "d")])) is None  # unmatched reference


def test_read_jsonl(tmp_path: Path) -> None:
    rows = [
        {"input": "q1", "options": ["yes", "no"], "answer": 1, "task": "rte"},
        {"input": "q2", "options": ["A", " B "], "answer": "B"},
    ]
    path = tmp_path / "o.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_jsonl(path) == [
        OptionExample(input="q1", options=("yes", "no"), answer=1, task="rte"),
        OptionExample(input="q2", options=("A", " B "), answer=1, task=""),
    ]


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ('{"input": "q", "options": ["a", "b"], "answer": 2}', "neither an option index"),
        ('{"input": "q", "options": ["a", "b"], "answer": "c"}', "neither an option index"),
        ('{"input": "q", "options": ["a", "b"], "answer": true}', "neither an option index"),
        ('{"input": "q", "options": ["a"], "answer": 0}', "at least 2 strings"),
        ('{"options": ["a", "b"], "answer": 0}', 'missing string field "input"'),
        ("[1]", "expected a JSON object"),
        ("{oops", "not valid JSON"),
    ],
)
def test_read_jsonl_bad_rows_name_the_line(tmp_path: Path, row: str, problem: str) -> None:
    path = tmp_path / "o.jsonl"
    path.write_text('{"input": "ok", "options": ["a", "b"], "answer": 0}\n' + row + "\n")
    with pytest.raises(DataError, match=rf"o.jsonl:2: .*{problem}"):
        read_jsonl(path)


def test_read_jsonl_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_jsonl(tmp_path / "none.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        read_jsonl(tmp_path / "e.jsonl")


def test_from_p3_row() -> None:
    row = {
        "inputs_pretokenized": "Suppose it's true that the dog barked. Can we infer the cat meowed? Yes, no, or maybe?\n",
        "targets_pretokenized": " Maybe\n",
        "answer_choices": ["Yes", "Maybe", "No"],
    }
    example = from_p3_row(row, task="cb_can_we_infer")
    assert example.options == ("Yes", "Maybe", "No")
    assert example.answer == 1
    assert example.input.endswith("Yes, no, or maybe?")
    assert example.task == "cb_can_we_infer"
    copa = {
        "inputs_pretokenized": "x",
        "targets_pretokenized": "The sun rose.",
        "answer_choices": [" It rained.", "The sun rose. "],
    }
    assert from_p3_row(copa).answer == 1


def test_from_p3_row_errors() -> None:
    with pytest.raises(DataError, match="lacks answer_choices"):
        from_p3_row({"inputs_pretokenized": "x", "targets_pretokenized": "y"})
    with pytest.raises(DataError, match="not one of the answer choices"):
        from_p3_row({"inputs_pretokenized": "x", "targets_pretokenized": "z", "answer_choices": ["a", "b"]})
    with pytest.raises(DataError, match="at least 2 strings"):
        from_p3_row({"inputs_pretokenized": "x", "targets_pretokenized": "a", "answer_choices": ["a"]})
