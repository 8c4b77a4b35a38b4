"""From a :class:`~tagi.config.DataConfig` to tasks and model-ready text examples.

``load_tasks(cfg, "train")`` returns the built-in suite or an SNI split (capped by the config);
``split_validation`` carves validation tasks from the *training* tasks (model selection never looks at
test tasks); ``task_examples`` turns a task's instances into
:class:`~tagi.examples.PromptExample` s in the Tk-Instruct format with ``num_pos`` positive examples.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from tagi.config import DataConfig
from tagi.data.builtin import builtin_tasks
from tagi.data.prompts import format_instruction, format_source
from tagi.data.sni import DataError, Task, load_split
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
    cap = cfg.max_train_tasks if split == "train" else cfg.max_test_tasks
    return tasks[:cap] if cap else tasks


def split_validation(tasks: Sequence[Task], n: int, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """``(train, validation)``: ``n`` training tasks drawn at random (seeded) are held out for validation."""
    if n <= 0:
        return list(tasks), []
    if n >= len(tasks):
        raise DataError(f"cannot hold out {n} validation tasks from {len(tasks)} training tasks")
    held = set(random.Random(seed).sample([t.name for t in tasks], n))
    return [t for t in tasks if t.name not in held], [t for t in tasks if t.name in held]


def task_examples(task: Task, num_pos: int, max_instances: int | None = None) -> list[PromptExample]:
    """One example per instance (target = its first reference), instruction with ``num_pos`` examples."""
    instruction = format_instruction(task, num_pos)
    instances = task.instances[:max_instances] if max_instances else task.instances
    return [PromptExample(instruction, format_source(i.input), i.outputs[0]) for i in instances]
