"""Tests for the built-in task suite: counts, split, determinism, and answers checked by recomputation."""

from __future__ import annotations

import ast
import logging

import pytest

from tagi.data.builtin import BUILTIN_TEST, BUILTIN_TRAIN, builtin_tasks, make_builtin_task
from tagi.data.builtin_suite.words import ANTONYM_PAIRS, PLURALS, number_to_words
from tagi.data.sni import DataError, Task


@pytest.fixture(scope="module")
def all_tasks() -> dict[str, Task]:
    return {t.name: t for t in builtin_tasks("all")}


def test_counts_and_split(all_tasks: dict[str, Task]) -> None:
    assert 30 <= len(all_tasks) <= 40
    assert len(BUILTIN_TRAIN) >= 28 and len(BUILTIN_TEST) == 8
    assert not set(BUILTIN_TRAIN) & set(BUILTIN_TEST)
    assert set(BUILTIN_TRAIN) | set(BUILTIN_TEST) == set(all_tasks)
    assert [t.name for t in builtin_tasks("train")] == list(BUILTIN_TRAIN)
    assert [t.name for t in builtin_tasks("test")] == list(BUILTIN_TEST)
    assert all(name.startswith("builtin_") for name in all_tasks)


def test_categories(all_tasks: dict[str, Task]) -> None:
    train_categories = {all_tasks[n].category for n in BUILTIN_TRAIN}
    test_categories = [all_tasks[n].category for n in BUILTIN_TEST]
    assert len(train_categories) == 8
    assert set(test_categories) <= train_categories
    assert len(set(test_categories)) == len(BUILTIN_TEST)  # held-out tasks are spread over categories


def test_every_task_is_well_formed(all_tasks: dict[str, Task]) -> None:
    for task in all_tasks.values():
        assert len(task.positive_examples) >= 2, task.name
        assert len(task.instances) == 60, task.name
        inputs = [i.input for i in task.instances]
        assert len(set(inputs)) == len(inputs), task.name
        assert not set(inputs) & {e.input for e in task.positive_examples}, task.name
        assert all(i.outputs and i.outputs[0].strip() for i in task.instances), task.name
        assert all(len(i.outputs[0].split()) <= 12 for i in task.instances), task.name
        assert task.is_english and task.definition.endswith((".", "?"))


def test_held_out_definitions_are_phrased_distinctly(all_tasks: dict[str, Task]) -> None:
    train_defs = {all_tasks[n].definition for n in BUILTIN_TRAIN}
    for name in BUILTIN_TEST:
        definition = all_tasks[name].definition
        assert definition not in train_defs
        assert not definition.startswith("In this task")


def test_deterministic_and_seed_dependent() -> None:
    assert builtin_tasks("test", 20, seed=3) == builtin_tasks("test", 20, seed=3)
    first, other = builtin_tasks("train", 20, seed=0), builtin_tasks("train", 20, seed=1)
    for a, b in zip(first, other, strict=True):
        assert a.definition == b.definition and a.positive_examples == b.positive_examples
        assert a.instances != b.instances, a.name


def test_answers_by_recomputation(all_tasks: dict[str, Task]) -> None:
    def pairs(name: str) -> list[tuple[str, str]]:
        task = all_tasks[name]
        return [(e.input, e.output) for e in task.positive_examples] + [
            (i.input, i.outputs[0]) for i in task.instances
        ]

    for x, y in pairs("builtin_uppercase_word"):
        assert y == x.upper()
    for x, y in pairs("builtin_reverse_word"):
        assert y == x[::-1]
    for x, y in pairs("builtin_add_numbers"):
        a, b = (int(v) for v in x.split(","))
        assert int(y) == a + b
    for x, y in pairs("builtin_subtract_numbers"):
        a, b = (int(v) for v in x.split(","))
        assert int(y) == a - b >= 0
    for x, y in pairs("builtin_sort_descending"):
        assert ast.literal_eval(y) == sorted(ast.literal_eval(x), reverse=True)
    for x, y in pairs("builtin_sum_of_list"):
        assert int(y) == sum(ast.literal_eval(x))
    for x, y in pairs("builtin_is_palindrome"):
        assert y == ("yes" if x == x[::-1] else "no")
    for x, y in pairs("builtin_count_words"):
        assert int(y) == len(x.split())
    for x, y in pairs("builtin_is_even"):
        assert y == ("yes" if int(x) % 2 == 0 else "no")
    for x, y in pairs("builtin_longest_word"):
        lengths = sorted(len(w) for w in x.split())
        assert len(y) == lengths[-1] > lengths[-2] and y in x.split()
    for x, y in pairs("builtin_count_letter_occurrences"):
        word, letter = (part.split(": ")[1] for part in x.split(", "))
        assert int(y) == word.count(letter)
    for x, y in pairs("builtin_extract_numbers"):
        assert y == ", ".join(w.strip(",") for w in x.split() if w.strip(",").isdigit())


def test_classification_tasks_have_both_labels(all_tasks: dict[str, Task]) -> None:
    for name in (
        "builtin_is_even",
        "builtin_is_palindrome",
        "builtin_starts_with_vowel",
        "builtin_contains_word",
    ):
        labels = [i.outputs[0] for i in all_tasks[name].instances]
        assert min(labels.count("yes"), labels.count("no")) >= 10, name
        assert {e.output for e in all_tasks[name].positive_examples} == {"yes", "no"}, name


def test_number_words() -> None:
    assert number_to_words(0) == "zero"
    assert number_to_words(13) == "thirteen"
    assert number_to_words(40) == "forty"
    assert number_to_words(342) == "three hundred forty-two"
    assert number_to_words(900) == "nine hundred"
    with pytest.raises(ValueError):
        number_to_words(1000)


def test_word_lists_are_consistent() -> None:
    words = [w for pair in ANTONYM_PAIRS for w in pair]
    assert len(words) == len(set(words))  # each input has a single antonym
    assert all(k.isalpha() and v.isalpha() for k, v in PLURALS.items())


def test_too_many_instances_returns_fewer_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tagi.data"):
        task = make_builtin_task("builtin_antonym", num_instances=500)
    assert len(task.instances) < 500
    assert "builtin_antonym: only" in caplog.text


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="unknown built-in split"):
        builtin_tasks("dev")
    with pytest.raises(DataError, match="unknown built-in task"):
        make_builtin_task("builtin_nope")
    with pytest.raises(DataError, match="num_instances"):
        builtin_tasks("train", num_instances=0)
