"""Tests for the SNI loader: the offline copy, format variants, and one-line errors for bad files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tagi.data.sni import (
    DataError,
    Task,
    TaskFileError,
    category_groups,
    find_task,
    load_split,
    load_task,
    read_split_names,
)
from tagi.errors import TagiError


def _sni_dir() -> Path:
    env = os.environ.get("TAGI_SNI_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared/data/sni"
    if not (path / "tasks").is_dir():
        pytest.skip(f"offline SNI copy not found at {path}")
    return path


def _task_json(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "Definition": ["Answer the question."],
        "Categories": ["Question Answering"],
        "Input_language": ["English"],
        "Output_language": ["English"],
        "Positive Examples": [{"input": "1+1?", "output": "2", "explanation": "sum"}],
        "Instances": [{"id": "t-1", "input": "2+2?", "output": ["4", "four"]}],
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def _make_layout(root: Path, train: list[str], files: dict[str, dict[str, Any]]) -> Path:
    _write(root / "splits/default/train_tasks.txt", "\n".join(train) + "\n")
    _write(root / "splits/default/test_tasks.txt", "\n")
    for name, data in files.items():
        _write(root / "tasks" / f"{name}.json", data)
    return root


# --- the offline copy -------------------------------------------------------------------------


def test_every_offline_task_file_loads() -> None:
    files = sorted((_sni_dir() / "tasks").glob("*.json"))
    assert len(files) == 332
    for path in files:
        task = load_task(path)
        assert task.name == path.stem
        assert task.definition and task.instances
        assert all(inst.outputs for inst in task.instances)


def test_offline_splits_load_with_expected_counts() -> None:
    root = _sni_dir()
    train = load_split(root, "train")
    assert len(train) == 248
    assert len(load_split(root, "test", english_only=False)) == 84
    # task1612's metadata says Input_language Telugu (upstream oddity), so the English filter drops it.
    test = load_split(root, "test")
    assert len(test) == 83
    assert "task1612_sick_label_classification" not in {t.name for t in test}
    assert len(read_split_names(root, "train")) == 756


def test_offline_test_split_keeps_first_instances_in_upstream_order() -> None:
    root = _sni_dir()
    tasks = load_split(root, "test", max_instances=5)
    assert all(len(t.instances) <= 5 for t in tasks)
    for task in tasks[:10]:
        raw = json.loads((root / "tasks" / f"{task.name}.json").read_text(encoding="utf-8"))["Instances"][:5]
        assert [i.input for i in task.instances] == [r["input"] for r in raw]
        assert [i.id for i in task.instances] == [r.get("id", f"{task.name}-{k}") for k, r in enumerate(raw)]


def test_offline_empty_string_reference_is_kept() -> None:
    path = _sni_dir() / "tasks/task488_extract_all_alphabetical_elements_from_list_in_order.json"
    task = load_task(path)
    assert any(inst.outputs == ("",) for inst in task.instances)


# --- format variants ----------------------------------------------------------------------------


def test_load_task_reads_new_format(tmp_path: Path) -> None:
    task = load_task(_write(tmp_path / "task1_qa.json", _task_json()))
    assert task.name == "task1_qa"
    assert task.definition == "Answer the question."
    assert task.positive_examples[0].input == "1+1?" and task.positive_examples[0].output == "2"
    assert task.instances[0].id == "t-1"
    assert task.instances[0].outputs == ("4", "four")
    assert task.categories == ("Question Answering",)
    assert task.input_language == ("English",) and task.is_english


def test_load_task_reads_old_format(tmp_path: Path) -> None:
    data = _task_json(
        Definition="  Old style definition  ",
        Categories="Classification -> Verification",
        Input_language=None,
        Output_language=None,
        Instances=[{"input": "a", "output": "b"}, {"input": "c", "output": ["d"]}],
    )
    data["Positive Examples"] = [{"input": "x", "output": ["y", "z"]}]
    task = load_task(_write(tmp_path / "task2_old.json", data))
    assert task.definition == "Old style definition"
    assert task.categories == ("Classification -> Verification",)
    assert task.category == "Classification"
    assert task.input_language == () and task.is_english
    assert [i.id for i in task.instances] == ["task2_old-0", "task2_old-1"]
    assert task.instances[0].outputs == ("b",)
    assert task.positive_examples[0].output == "y"


def test_definition_list_is_joined_and_examples_optional(tmp_path: Path) -> None:
    data = _task_json(Definition=["First part.", "Second part."])
    del data["Positive Examples"]
    task = load_task(_write(tmp_path / "t.json", data))
    assert task.definition == "First part. Second part."
    assert task.positive_examples == ()


@pytest.mark.parametrize(
    ("categories", "expected"),
    [
        (["Text Generation -> Title Generation"], "Text Generation"),
        (["Order Generation->Arrangement"], "Order Generation"),
        (["Answer generation"], "Answer Generation"),
        (["data to text"], "Data to Text"),
        (["Sentiment Analysis", "Classification"], "Sentiment Analysis"),
        (None, "task:t"),
        ([], "task:t"),
    ],
)
def test_category_is_top_level_of_first_category(tmp_path: Path, categories: Any, expected: str) -> None:
    task = load_task(_write(tmp_path / "t.json", _task_json(Categories=categories)))
    assert task.category == expected


def test_max_instances_keeps_first(tmp_path: Path) -> None:
    instances = [{"input": f"in{i}", "output": [str(i)]} for i in range(10)]
    task = load_task(_write(tmp_path / "t.json", _task_json(Instances=instances)), max_instances=3)
    assert [i.input for i in task.instances] == ["in0", "in1", "in2"]
    with pytest.raises(DataError, match="max_instances"):
        load_task(tmp_path / "t.json", max_instances=0)


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (_task_json(Definition=None), 'missing "Definition"'),
        (_task_json(Definition=["  "]), 'empty "Definition"'),
        (_task_json(Definition=[3]), '"Definition" must be a string'),
        (_task_json(Instances=[]), 'no "Instances"'),
        (_task_json(Instances=None), 'no "Instances"'),
        (_task_json(Instances=[{"input": "a"}]), 'instance 0 has no "output"'),
        (_task_json(Instances=[{"input": "a", "output": []}]), 'instance 0 has an empty "output" list'),
        (_task_json(Instances=[{"input": "a", "output": [1]}]), "must be a string or a list of strings"),
        (_task_json(Instances=[{"output": ["b"]}]), 'instance 0 has no string "input"'),
        (_task_json(Instances=["x"]), "instance 0 is not an object"),
        (_task_json(**{"Positive Examples": [{"input": "a"}]}), "positive example 0 needs"),
    ],
)
def test_malformed_task_files_raise_one_line_errors(tmp_path: Path, content: Any, problem: str) -> None:
    path = _write(tmp_path / "task9_bad.json", content)
    with pytest.raises(TaskFileError) as info:
        load_task(path)
    message = str(info.value)
    assert problem in message
    assert "task9_bad.json" in message
    assert "\n" not in message
    assert isinstance(info.value, TagiError) and isinstance(info.value, ValueError)


def test_non_utf8_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "latin.json"
    path.write_bytes('{"Definition": ["caf\xe9"]}'.encode("latin-1"))
    with pytest.raises(TaskFileError, match="latin.json: not UTF-8"):
        load_task(path)
    with pytest.raises(TaskFileError, match="not found"):
        load_task(tmp_path / "nope.json")


# --- splits ---------------------------------------------------------------------------------------


def test_load_split_skips_missing_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _make_layout(
        tmp_path,
        ["taskA", "missing1", "taskB", "taskA", "missing2"],
        {"taskA": _task_json(), "taskB": _task_json()},
    )
    with caplog.at_level(logging.INFO, logger="tagi.data"):
        tasks = load_split(root, "train")
    assert [t.name for t in tasks] == ["taskA", "taskB"]
    assert "skipped 2 of 4" in caplog.text


def test_load_split_english_filter(tmp_path: Path) -> None:
    files = {
        "en": _task_json(),
        "unknown": _task_json(Input_language=None, Output_language=None),
        "te": _task_json(Input_language=["Telugu"]),
        "mixed": _task_json(Output_language=["English", "Hindi"]),
    }
    root = _make_layout(tmp_path, list(files), files)
    assert [t.name for t in load_split(root)] == ["en", "unknown", "mixed"]
    assert len(load_split(root, english_only=False)) == 4


def test_load_split_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="SNI folder not found"):
        load_split(tmp_path / "absent")
    with pytest.raises(DataError, match="split list not found"):
        load_split(tmp_path)
    root = _make_layout(tmp_path, ["ghost"], {})
    with pytest.raises(DataError, match="none of the 1 tasks"):
        load_split(root)
    with pytest.raises(DataError, match="split list not found"):
        load_split(root, split_name="other")


def test_category_groups_and_find_task() -> None:
    def task(name: str, cats: tuple[str, ...]) -> Task:
        return Task(name=name, definition="d", positive_examples=(), instances=(), categories=cats)

    tasks = [task("a", ("X -> Y",)), task("b", ()), task("c", ("X",))]
    assert category_groups(tasks) == {"X": ["a", "c"], "task:b": ["b"]}
    assert find_task(tasks, "b").name == "b"
    with pytest.raises(DataError, match="unknown task 'zz'"):
        find_task(tasks, "zz")
