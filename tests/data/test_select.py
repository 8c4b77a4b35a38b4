"""The validation split (single tasks or whole categories held out of the training tasks), and the
training side cut to a number of categories."""

from __future__ import annotations

import pytest

from tagi.config import DataConfig
from tagi.data.select import config_split, sample_categories, split_validation
from tagi.data.sni import DataError, Task


def _task(name: str, category: str) -> Task:
    return Task(name=name, definition="d", positive_examples=(), instances=(), categories=(category,))


# 4 categories: A has 3 tasks, B 2, C 1, D 4 (10 tasks)
SIZES = {"A": 3, "B": 2, "C": 1, "D": 4}
TASKS = [_task(f"{c}{i}", c) for c, n in SIZES.items() for i in range(n)]


def _categories(tasks: list[Task]) -> set[str]:
    return {t.category for t in tasks}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [1, 3, 5, 8])
def test_category_split_holds_out_whole_categories(seed: int, n: int) -> None:
    train, val = split_validation(TASKS, n, seed, by="category")
    assert 0 < len(val) <= n
    assert len(train) + len(val) == len(TASKS)
    assert not _categories(train) & _categories(val)  # no category on both sides
    for category in _categories(val):
        assert sum(t.category == category for t in val) == SIZES[category]  # whole categories only
    # greedy in a seeded order: every category left in training would overflow n
    assert all(len(val) + SIZES[c] > n for c in _categories(train))
    assert split_validation(TASKS, n, seed, by="category") == (train, val)  # deterministic


def test_category_split_order_depends_on_the_seed() -> None:
    held = {frozenset(t.name for t in split_validation(TASKS, 3, s, by="category")[1]) for s in range(12)}
    # n=3 fits {A}, {B, C}, {B}, {C} ... : more than one outcome over the seeds
    assert len(held) > 1


def test_task_split_keeps_its_draw() -> None:
    # the default draw is unchanged by the new option: n single tasks, seeded
    train, val = split_validation(TASKS, 4, 7)
    assert (train, val) == split_validation(TASKS, 4, 7, by="task")
    assert len(val) == 4 and len(train) == 6


def test_config_split_reads_the_data_section() -> None:
    cfg = DataConfig(validation_tasks=2, seed=3, validation_by="category")
    assert config_split(cfg, TASKS) == split_validation(TASKS, 2, 3, by="category")
    assert config_split(DataConfig(), TASKS) == (TASKS, [])


def test_split_errors() -> None:
    with pytest.raises(DataError, match="cannot hold out 10 validation tasks"):
        split_validation(TASKS, 10, 0, by="category")
    only_big = [_task(f"D{i}", "D") for i in range(4)] + [_task(f"E{i}", "E") for i in range(3)]
    with pytest.raises(DataError, match=r"no category fits in 2 validation tasks \(the smallest has 3"):
        split_validation(only_big, 2, 0, by="category")
    with pytest.raises(DataError, match="must be 'task' or 'category'"):
        split_validation(TASKS, 2, 0, by="source")


@pytest.mark.parametrize("seed", range(4))
def test_sample_categories_keeps_whole_categories_and_nests(seed: int) -> None:
    previous: set[str] = set()
    for n in range(1, len(SIZES) + 1):
        kept = sample_categories(TASKS, n, seed)
        cats = _categories(kept)
        assert len(cats) == n and len(kept) == sum(SIZES[c] for c in cats)  # every task of a drawn category
        assert [t.name for t in kept] == [t.name for t in TASKS if t.category in cats]  # order kept
        assert previous <= cats  # growing n adds categories, never swaps them
        previous = cats
    assert sample_categories(TASKS, len(SIZES), seed) == TASKS


def test_train_categories_cuts_the_training_side_only() -> None:
    full_train, full_val = config_split(DataConfig(validation_tasks=3, validation_by="category"), TASKS)
    train, val = config_split(
        DataConfig(validation_tasks=3, validation_by="category", train_categories=1), TASKS
    )
    assert val == full_val  # the validation tasks stay the same
    assert len(_categories(train)) == 1 and set(train) <= set(full_train)
    assert len({frozenset(t.name for t in sample_categories(TASKS, 2, s)) for s in range(12)}) > 1  # seeded
    with pytest.raises(DataError, match="cannot train on 5 categories: the training tasks have 4"):
        sample_categories(TASKS, 5, 0)
    with pytest.raises(ValueError, match="data.train_categories must be >= 0"):
        DataConfig(train_categories=-1)


def test_test_tasks_keeps_the_named_test_tasks_only() -> None:
    from tagi.data.builtin import BUILTIN_TEST
    from tagi.data.select import load_tasks

    picked = [BUILTIN_TEST[3], BUILTIN_TEST[0]]
    cfg = DataConfig(test_tasks=picked, builtin_instances=4)
    assert [t.name for t in load_tasks(cfg, "test")] == sorted(picked)  # name order, whatever the list's
    assert len(load_tasks(cfg, "train")) == len(load_tasks(DataConfig(builtin_instances=4), "train"))
    capped = DataConfig(test_tasks=picked, max_test_tasks=1, builtin_instances=4)
    assert [t.name for t in load_tasks(capped, "test")] == sorted(picked)[:1]  # the cap applies after
    with pytest.raises(DataError, match="not in the test split: nope"):
        load_tasks(DataConfig(test_tasks=[BUILTIN_TEST[0], "nope"]), "test")
    with pytest.raises(Exception, match="lists a task twice"):
        DataConfig(test_tasks=[BUILTIN_TEST[0], BUILTIN_TEST[0]])
