"""The ``evaluate`` section: which methods to evaluate and how."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tagi.config.schema import check, field_


@dataclass
class EvalConfig:
    """Which methods to evaluate and how."""

    methods: list[str] = field_([], "Methods to evaluate (empty = all available; see tagi.evaluate.methods).")
    prompt_settings: list[int] = field_(
        [0, 2], "Numbers of positive examples to evaluate (0='Def', 2='Def+2Pos')."
    )
    batch_size: int = field_(16, "Instances per generation batch.")
    batching: Literal["task", "mixed"] = field_(
        "task",
        "'task': one task per batch with one adapter (decoder-only models compute the instruction prefix's "
        "key/value cache once per batch); 'mixed': batches mix tasks, each example carrying its own adapter.",
    )
    report_dir: str = field_(
        "eval",
        "Folder under out_dir for the evaluation: its per-method cache (parts/), results.json, report.md "
        "and plots. A second method list evaluated on the same run (e.g. the ablations) keeps its own.",
    )
    efficiency: bool = field_(True, "Measure FLOPs and latency.")
    efficiency_instances: int = field_(100, "Instances per task in the FLOPs comparison (paper: 100).")
    rank_classification: bool = field_(
        True, "Also score classification-like test tasks by rank classification (lowest option NLL)."
    )
    multitask_steps: int = field_(
        0, "Steps of the multi-task LoRA baseline (0 = finetune.train.max_steps; teachers' other settings)."
    )
    oracle_steps: int = field_(0, "Steps of each oracle LoRA (0 = teachers.train.max_steps).")
    oracle_instances: int = field_(
        100, "Instances of each test task beyond the evaluated ones that train its oracle (upper bound)."
    )
    new_tokens_from_examples: float = field_(
        0.0,
        "0 = every task decodes up to model.max_target_tokens new tokens. > 0 = a task's budget is "
        "min(model.max_target_tokens, ceil(this x the longest output among the task's positive examples, "
        "in tokens) + 4): read from the task definition only, never from the evaluated instances.",
    )

    def __post_init__(self) -> None:
        check(self.batch_size > 0, f"evaluate.batch_size must be > 0, got {self.batch_size}")
        check(bool(self.prompt_settings), "evaluate.prompt_settings must not be empty")
        check(
            all(k >= 0 for k in self.prompt_settings),
            f"evaluate.prompt_settings must be >= 0, got {self.prompt_settings}",
        )
        check(len(set(self.methods)) == len(self.methods), "evaluate.methods lists a method twice")
        rd = Path(self.report_dir)
        check(
            bool(self.report_dir) and not rd.is_absolute() and ".." not in rd.parts,
            f"evaluate.report_dir must be a folder name inside out_dir, got {self.report_dir!r}",
        )
        for k in ("efficiency_instances", "oracle_instances"):
            check(getattr(self, k) > 0, f"evaluate.{k} must be > 0, got {getattr(self, k)}")
        for k in ("multitask_steps", "oracle_steps", "new_tokens_from_examples"):
            check(getattr(self, k) >= 0, f"evaluate.{k} must be >= 0, got {getattr(self, k)}")
