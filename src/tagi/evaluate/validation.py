"""Decoded validation scores: what the report measures, on the held-out *training* tasks (model selection).

``tagi sweep --metric rougeL`` ranks finetuning settings by this instead of teacher-forced CE (which chose
a learning rate 3 points worse on the test tasks, see the README). For a finished finetuning it generates
one adapter per validation task from its instruction (each ``finetune.student_num_pos`` setting), decodes
the first ``instances`` instances greedily with the evaluation's prompt and per-task decoding budget, and
scores them with the official SNI scorer::

    val_rougeL_pos<s> = mean over the validation instances of Rouge-L(prediction, references) x 100

The result is stored next to the checkpoint (``validation_decoded.json``, keyed by the checkpoint's
checksum and the settings), so a rerun of the sweep does not decode again. Test tasks are never read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tagi.backbones import Backbone
from tagi.config import ExperimentConfig
from tagi.data import format_instruction
from tagi.data.select import config_split, load_tasks, task_examples
from tagi.data.sni import Task
from tagi.evaluate.decoding import new_token_budget
from tagi.evaluate.metrics import score_records
from tagi.files import write_json
from tagi.model import TagiModel, read_checkpoint_config

CACHE = "validation_decoded.json"


@torch.no_grad()
def decoded_validation(
    cfg: ExperimentConfig, folder: Path, backbone: Backbone, instances: int = 5
) -> dict[str, float]:
    """``{"val_rougeL_pos<s>": score}`` of the finetuning in ``folder`` (its ``final/`` checkpoint)."""
    ckpt = Path(folder) / "final"
    key = {
        "sha256": read_checkpoint_config(ckpt).get("sha256"),
        "instances": instances,
        "num_pos": list(cfg.finetune.student_num_pos),
        "validation_tasks": cfg.data.validation_tasks,
        **({"validation_by": cfg.data.validation_by} if cfg.data.validation_by != "task" else {}),
        "budget": cfg.evaluate.new_tokens_from_examples,
    }
    cache = Path(folder) / CACHE
    if cache.is_file() and (old := json.loads(cache.read_text())).get("key") == key:
        return old["scores"]
    model = TagiModel.load(ckpt, backbone).eval()
    _, tasks = config_split(cfg.data, load_tasks(cfg.data, "train"))
    mode = "fuse" if cfg.finetune.fusion else "none"
    scores = {}
    for k in sorted(set(cfg.finetune.student_num_pos)):
        own = {t.name: format_instruction(t, k) for t in tasks}
        factor = cfg.evaluate.new_tokens_from_examples
        scores[f"val_rougeL_pos{k}"] = decoded_rouge(model, tasks, own, mode, k, instances, factor)
    write_json(cache, {"key": key, "scores": scores})
    return scores


@torch.no_grad()
def decoded_rouge(
    model: TagiModel,
    tasks: list[Task],
    hyper_texts: dict[str, str],
    mode: str,
    num_pos: int,
    instances: int,
    budget_factor: float,
) -> float:
    """Rouge-L (x100) over the first ``instances`` instances of every task, decoded greedily with the
    adapter the hypernetwork generates from ``hyper_texts[task]``; the prompt holds the task's own
    instruction with ``num_pos`` demonstrations (``mode="fuse"``) or none (``"none"``), and the decoding
    budget comes from the task's positive examples (:func:`~tagi.evaluate.decoding.new_token_budget`)."""
    records = []
    for task in tasks:
        examples = task_examples(task, num_pos, instances)
        weights = model.adapters([hyper_texts[task.name]])
        budget = new_token_budget(task, model.bb, budget_factor)
        outputs = model.bb.generate(examples, weights, mode, max_new_tokens=budget)
        records += [
            {"task": task.name, "prediction": o, "references": list(i.outputs)}
            for o, i in zip(outputs, task.instances[:instances], strict=True)
        ]
    return score_records(records)["overall"]["rougeL"]
