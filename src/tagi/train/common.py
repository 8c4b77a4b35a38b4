"""Helpers shared by the stages: the training tasks of a config, length proxies, token counts, DONE.json."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tagi.backbones import Backbone, PromptExample
from tagi.backbones.base import ModelBatch
from tagi.config import ExperimentConfig, from_dict, to_dict
from tagi.data.select import config_split, load_tasks
from tagi.data.sni import Task
from tagi.errors import TagiError
from tagi.files import package_versions, write_json

log = logging.getLogger("tagi.train")
DONE = "DONE.json"


def training_tasks(cfg: ExperimentConfig) -> tuple[list[Task], list[Task]]:
    """``(train, validation)`` tasks: the config's training split minus the held-out validation tasks
    (``data.validation_tasks``, ``data.validation_by``)."""
    tasks = load_tasks(cfg.data, "train")
    return config_split(cfg.data, tasks)


def example_lengths(backbone: Backbone, examples: Sequence[PromptExample], instruction: bool) -> list[int]:
    """Token counts of ``[instruction +] source + target`` per example (a length proxy for batching)."""
    texts = [(e.instruction if instruction else "") + e.source + e.target for e in examples]
    return [len(ids) for ids in backbone.tokenizer(texts, add_special_tokens=False)["input_ids"]]


def batch_tokens(batch: ModelBatch, family: str) -> int:
    """Tokens a forward pass processes: the (encoder) input, plus the decoder labels of seq2seq models.

    A shared prompt prefix counts once per distinct prefix (it runs once).
    """
    n = int(batch.attention_mask.sum())
    for extra in (batch.fuse_mask, batch.prefix_mask):
        if extra is not None:
            n += int(extra.sum())
    return n + (batch.num_label_tokens if family == "seq2seq" else 0)


TEST_ONLY_DATA = ("max_test_instances", "max_test_tasks", "test_tasks")
RUN_ONLY_TRAIN = ("log_every", "ckpt_every", "num_threads", "progress_bar", "tensorboard")
_STAGE_SECTIONS = {
    "teachers": ("model", "data", "teachers"),
    "pretrain": ("model", "hyper", "data", "pretrain"),
    "finetune": ("model", "hyper", "data", "teachers", "finetune"),
}


def _strip_run_only(section: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in section.items():
        if k == "train" and isinstance(v, dict):
            v = {tk: tv for tk, tv in v.items() if tk not in RUN_ONLY_TRAIN}
        out[k] = _strip_run_only(v) if isinstance(v, dict) and k != "train" else v
    return out


def stage_settings(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The part of a config (``to_dict`` form) that a stage's outputs depend on.

    Test-only data keys and logging/checkpointing/thread settings are left out, so changing them neither
    invalidates a finished stage nor blocks resuming an interrupted one.
    """
    out: dict[str, Any] = {"seed": config["seed"]}
    for name in _STAGE_SECTIONS[stage]:
        section = _strip_run_only(config[name])
        if name == "data":
            section = {k: v for k, v in section.items() if k not in TEST_ONLY_DATA}
        out[name] = section
    return out


def with_defaults(saved: dict[str, Any] | None) -> dict[str, Any] | None:
    """A recorded config with the fields added since it was written filled in with their defaults (the
    values it was trained with); ``None`` when it no longer loads."""
    if saved is None:
        return None
    try:
        return to_dict(from_dict(ExperimentConfig, saved))
    except TagiError:
        return None


def is_done(stage_dir: Path) -> bool:
    return (stage_dir / DONE).is_file()


def write_done(stage_dir: Path, stage: str, cfg: ExperimentConfig, summary: dict[str, Any]) -> None:
    """Mark a stage complete: timings, losses, the config, seed and package versions (written last)."""
    record = {
        "stage": stage,
        **summary,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "versions": package_versions(),
    }
    write_json(stage_dir / DONE, record)


def read_done(stage_dir: Path) -> dict[str, Any]:
    return json.loads((stage_dir / DONE).read_text())
