"""The ``data`` section: where tasks come from and how many of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tagi.config.schema import check, field_


@dataclass
class DataConfig:
    """Where tasks come from and how prompts are built."""

    source: Literal["builtin", "sni"] = field_(
        "builtin", "Built-in task suite, or a Super-NaturalInstructions clone."
    )
    sni_dir: str = field_(
        "", "Folder of a natural-instructions clone (splits/, tasks/); needed for source=sni."
    )
    split_name: str = field_("default", "SNI split folder under splits/.")
    num_pos: int = field_(2, "Positive examples in the instruction (0 = 'Def', 2 = 'Def+2Pos').")
    max_train_instances: int = field_(100, "Training instances per task (paper: 100).")
    max_test_instances: int = field_(100, "Test instances per task: the first N (official: 100).")
    max_train_tasks: int = field_(0, "Use at most this many training tasks (0 = all).")
    max_test_tasks: int = field_(0, "Evaluate at most this many test tasks (0 = all).")
    test_tasks: list[str] = field_(
        [],
        "Evaluate only these test tasks, by name (empty = the split's test tasks); each must be in the split. "
        "Applied before max_test_tasks.",
    )
    validation_tasks: int = field_(0, "Training tasks held out for model selection (never test tasks).")
    validation_by: Literal["task", "category"] = field_(
        "task",
        "How validation tasks are held out: 'task' draws single tasks (their sibling tasks stay in training); "
        "'category' holds out whole categories (as SNI's test split was built), up to validation_tasks tasks.",
    )
    train_categories: int = field_(
        0,
        "Train on the tasks of this many categories only, drawn with data.seed from the training tasks left "
        "after the validation split (0 = all): a data-scaling study whose validation tasks stay the same.",
    )
    builtin_instances: int = field_(60, "Instances generated per built-in task.")
    seed: int = field_(0, "Seed of the built-in task generators and of data shuffling.")

    def __post_init__(self) -> None:
        check(self.num_pos >= 0, f"data.num_pos must be >= 0, got {self.num_pos}")
        for k in ("max_train_instances", "max_test_instances", "builtin_instances"):
            check(getattr(self, k) > 0, f"data.{k} must be > 0, got {getattr(self, k)}")
        for k in ("max_train_tasks", "max_test_tasks", "validation_tasks", "train_categories"):
            check(getattr(self, k) >= 0, f"data.{k} must be >= 0, got {getattr(self, k)}")
        check(self.source != "sni" or bool(self.sni_dir), "data.sni_dir is required when data.source=sni")
        check(len(set(self.test_tasks)) == len(self.test_tasks), "data.test_tasks lists a task twice")
