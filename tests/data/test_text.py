"""Tests for pretraining text: reading files, the a/b/c cut, and text from tasks."""

from __future__ import annotations

import importlib.util
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from tagi.data.sni import DataError, Instance, Task
from tagi.data.text import read_texts, split_abc, texts_from_tasks


def test_txt_paragraph_and_line_modes(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("first line\nsame paragraph\n\n\n  second paragraph  \n\nthird\r\n", encoding="utf-8")
    assert read_texts([path]) == ["first line\nsame paragraph", "second paragraph", "third"]
    assert read_texts([path], txt_mode="line") == [
        "first line",
        "same paragraph",
        "second paragraph",
        "third",
    ]
    with pytest.raises(DataError, match="txt_mode"):
        read_texts([path], txt_mode="word")


def test_jsonl_with_default_and_custom_field(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"text": "doc one", "body": "b1"})
        + "\n\n"
        + json.dumps({"text": " ", "body": "b2"})
        + "\n"
    )
    assert read_texts([path]) == ["doc one"]
    assert read_texts([str(path)], text_field="body") == ["b1", "b2"]


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read_texts([path])
    path.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected an object with a string field 'text'"):
        read_texts([path])


def test_folder_and_mixed_sources(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("from txt")
    (tmp_path / "a.jsonl").write_text('{"text": "from jsonl"}\n')
    (tmp_path / "ignored.csv").write_text("x,y")
    assert read_texts([tmp_path]) == ["from jsonl", "from txt"]
    assert read_texts(tmp_path / "b.txt") == ["from txt"]  # a single path is accepted too


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="text file not found"):
        read_texts([tmp_path / "missing.txt"])
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    with pytest.raises(DataError, match="no text found"):
        read_texts([tmp_path / "empty.txt"])
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(DataError, match="unsupported file type"):
        read_texts([tmp_path / "x.csv"])
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_texts([tmp_path / "latin.txt"])
    with pytest.raises(DataError, match="no text found"):
        read_texts([])
    empty_dir = tmp_path / "sub"
    empty_dir.mkdir()
    with pytest.raises(DataError, match="folder holds no"):
        read_texts([empty_dir])


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_hf_source_without_datasets_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="pip install datasets"):
        read_texts(["hf:allenai/c4:en"])


def test_split_abc_properties() -> None:
    rng = random.Random(0)
    for n in range(3, 60):
        ids = list(range(n))
        for _ in range(20):
            a, b, c = split_abc(ids, rng, min_len=4)
            assert a + b + c == ids
            assert min(len(a), len(b), len(c)) >= min(4, n // 3) >= 1


def test_split_abc_covers_all_cuts_uniformly() -> None:
    rng = random.Random(1)
    counts = Counter(tuple(map(len, split_abc(list(range(9)), rng, min_len=2))) for _ in range(6000))
    # 9 tokens, each segment ≥ 2: slack 3 over three segments → C(5, 2) = 10 equally likely cuts.
    assert len(counts) == 10
    assert min(counts.values()) > 450 and max(counts.values()) < 750


def test_split_abc_errors() -> None:
    with pytest.raises(ValueError, match="at least 3 tokens"):
        split_abc([1, 2], random.Random(0))
    with pytest.raises(ValueError, match="min_len"):
        split_abc([1, 2, 3], random.Random(0), min_len=0)


def test_texts_from_tasks() -> None:
    def task(name: str, inputs: list[str]) -> Task:
        instances = tuple(Instance(id=str(i), input=x, outputs=("o",)) for i, x in enumerate(inputs))
        return Task(name=name, definition=f"Definition of {name}.", positive_examples=(), instances=instances)

    docs = texts_from_tasks([task("a", ["x1", " ", "x2"]), task("b", ["x2", "y1"])])
    assert docs == ["Definition of a.", "x1", "x2", "Definition of b.", "y1"]
