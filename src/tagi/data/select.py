"""From a :class:`~tagi.config.DataConfig` to tasks and model-ready text examples.

``load_tasks(cfg, "train")`` returns the built-in suite or an SNI split (capped by the config);
``split_validation`` carves validation tasks (single tasks or whole categories) from the *training* tasks
(model selection never looks at test tasks); ``task_examples`` turns a task's instances into
:class:`~tagi.examples.PromptExample` s in the Tk-Instruct format with ``num_pos`` positive examples.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from tagi.config import DataConfig
from tagi.data.builtin import builtin_tasks
from tagi.data.prompts import format_instruction, format_source
from tagi.data.sni import DataError, Task, category_groups, load_split
from tagi.examples import PromptExample


def load_tasks(cfg: DataConfig, split: str) -> list[Task]:
    """Training (``"train"``) or unseen test (``"test"``) tasks named by the config, sorted by name."""
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    max_inst = cfg.max_train_instances if split == "train" else cfg.max_test_instances
    if cfg.source == "builtin":
        tasks = builtin_tasks(split, num_instances=min(cfg.builtin_instances, max_inst), seed=cfg.seed)
    else:
        tasks = load_split(cfg.sni_dir, split, cfg.split_name, max_instances=max_inst)
    tasks = sorted(tasks, key=lambda t: t.name)
    if split == "test" and cfg.test_tasks:
        tasks = _named(tasks, cfg.test_tasks)
    cap = cfg.max_train_tasks if split == "train" else cfg.max_test_tasks
    return tasks[:cap] if cap else tasks


def _named(tasks: list[Task], names: Sequence[str]) -> list[Task]:
    """The tasks named in ``names`` (``data.test_tasks``), in name order; a name not among ``tasks`` is an error."""
    wanted = set(names)
    unknown = sorted(wanted - {t.name for t in tasks})
    if unknown:
        raise DataError(f"data.test_tasks names tasks that are not in the test split: {', '.join(unknown)}")
    return [t for t in tasks if t.name in wanted]


def split_validation(
    tasks: Sequence[Task], n: int, seed: int = 0, by: str = "task"
) -> tuple[list[Task], list[Task]]:
    """``(train, validation)``: up to ``n`` training tasks held out for validation, drawn with ``seed``.

    ``by="task"`` draws ``n`` single tasks; their sibling tasks (same source dataset, same category) stay in
    training, so validation measures how well a model handles a near neighbour of what it trained on.
    ``by="category"`` holds out whole :attr:`Task.category` groups, as SNI's test split was built: categories are
    visited in a seeded order and one is held out when all its tasks still fit in ``n``, so the split has at
    most ``n`` tasks and no category on both sides.
    """
    if n <= 0:
        return list(tasks), []
    if n >= len(tasks):
        raise DataError(f"cannot hold out {n} validation tasks from {len(tasks)} training tasks")
    if by == "task":
        held = set(random.Random(seed).sample([t.name for t in tasks], n))
    elif by == "category":
        held = _held_out_categories(tasks, n, seed)
    else:
        raise DataError(f"validation split by must be 'task' or 'category', got {by!r}")
    return [t for t in tasks if t.name not in held], [t for t in tasks if t.name in held]


def config_split(cfg: DataConfig, tasks: Sequence[Task]) -> tuple[list[Task], list[Task]]:
    """:func:`split_validation` with the config's ``validation_tasks``, ``seed`` and ``validation_by``, then
    the training side cut to ``train_categories`` categories (:func:`sample_categories`) when it is set."""
    train, val = split_validation(tasks, cfg.validation_tasks, cfg.seed, cfg.validation_by)
    if cfg.train_categories:
        train = sample_categories(train, cfg.train_categories, cfg.seed)
    return train, val


def sample_categories(tasks: Sequence[Task], n: int, seed: int = 0) -> list[Task]:
    """The tasks of ``n`` categories drawn with ``seed`` (every task of a drawn category, in the given order).

    The draw is nested: for one seed, the ``n`` categories drawn are among the ``n + 1`` drawn, so a series of
    runs over growing ``n`` adds categories and never swaps them.
    """
    groups = category_groups(tasks)
    if not 0 < n <= len(groups):
        raise DataError(f"cannot train on {n} categories: the training tasks have {len(groups)}")
    kept = set(_seeded_order(groups, seed)[:n])
    return [t for t in tasks if t.category in kept]


def _seeded_order(groups: dict[str, list[str]], seed: int) -> list[str]:
    """The categories of ``groups`` in an order drawn with ``seed`` (the same for the same categories)."""
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    return order


def _held_out_categories(tasks: Sequence[Task], n: int, seed: int) -> set[str]:
    groups = category_groups(tasks)
    held: set[str] = set()
    for category in _seeded_order(groups, seed):
        if len(held) + len(groups[category]) <= n:
            held.update(groups[category])
    if not held:
        smallest = min(len(g) for g in groups.values())
        raise DataError(f"no category fits in {n} validation tasks (the smallest has {smallest} tasks)")
    return held


def task_examples(task: Task, num_pos: int, max_instances: int | None = None) -> list[PromptExample]:
    """One example per instance (target = its first reference), instruction with ``num_pos`` examples."""
    instruction = format_instruction(task, num_pos)
    instances = task.instances[:max_instances] if max_instances else task.instances
    return [PromptExample(instruction, format_source(i.input), i.outputs[0]) for i in instances]
