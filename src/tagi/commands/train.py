"""``tagi train-teachers | pretrain | finetune | sweep | run``: the training stages from the command line.

Each is a plain function — callable from Python as well — taking a YAML config and ``key=value``
overrides. Data-parallel training: the same command under ``torchrun``, e.g.
``torchrun --nproc_per_node 2 -m tagi.cli finetune configs/tiny.yaml`` (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import logging

from tagi.config import load_config
from tagi.evaluate.harness import run_evaluation
from tagi.evaluate.validation import decoded_validation
from tagi.train import dist, stages
from tagi.train.sweep import format_table, run_sweep

log = logging.getLogger("tagi.train")


def train_teachers(
    config: str, overrides: list[str] | None = None, resume: bool = False, force: bool = False
) -> int:
    """Stage 0: train one LoRA teacher per task category (or per task) with the instruction in context.

    Args:
        config: YAML config file (e.g. configs/tiny.yaml)
        overrides: key=value config overrides, e.g. teachers.train.max_steps=20
        resume: continue an interrupted run from its last checkpoint
        force: delete the stage's outputs and train again
    """
    return _stage(stages.run_teachers, "teachers", config, overrides, resume, force)


def _stage(runner, name: str, config: str, overrides: list[str] | None, resume: bool, force: bool) -> int:
    """Run one stage runner from the CLI and release the process group however it ends."""
    try:
        out = runner(load_config(config, overrides), resume=resume, force=force)
        log.info("%s: %s", name, out)
    finally:
        dist.cleanup()
    return 0


def pretrain(
    config: str, overrides: list[str] | None = None, resume: bool = False, force: bool = False
) -> int:
    """Stage 1: pretrain the hypernetwork on plain text (reads segment a, the adapted model predicts c from b).

    Args:
        config: YAML config file
        overrides: key=value config overrides, e.g. pretrain.train.max_steps=100
        resume: continue an interrupted run from its last checkpoint
        force: delete the stage's outputs and train again
    """
    return _stage(stages.run_pretrain, "pretrain", config, overrides, resume, force)


def finetune(
    config: str, overrides: list[str] | None = None, resume: bool = False, force: bool = False
) -> int:
    """Stage 2: finetune the hypernetwork with CE + KL to the teachers + adapter alignment.

    Args:
        config: YAML config file
        overrides: key=value config overrides, e.g. finetune.loss.kl=0
        resume: continue an interrupted run from its last checkpoint
        force: delete the stage's outputs and train again
    """
    return _stage(stages.run_finetune, "finetune", config, overrides, resume, force)


def sweep(config: str, grid: list[str], overrides: list[str] | None = None, metric: str = "ce") -> int:
    """Choose finetuning settings on the held-out training tasks: one finetuning per grid point, ranked by
    a validation metric (test tasks are not read). Results: <out_dir>/sweep/sweep.json and a printed table.

    Args:
        config: YAML config file (its out_dir's teachers and pretraining are reused, or trained first)
        grid: axes key=v1,v2,... over finetune.* keys, e.g. --grid finetune.train.lr=3e-4,1e-3,3e-3
        overrides: key=value config overrides applied to every point (give them before --grid)
        metric: ce (teacher-forced validation CE, lowest wins) or rougeL (decoded validation Rouge-L, highest wins)
    """
    try:
        record = run_sweep(load_config(config, overrides), grid, metric=metric, decode=decoded_validation)
    finally:
        dist.cleanup()
    print(format_table(record["latest"], record["best"]))
    print(f"best: {' '.join(record['best']['overrides'])} -> {record['best']['folder']}")
    return 0


def run(
    config: str,
    overrides: list[str] | None = None,
    resume: bool = True,
    force: bool = False,
    skip_eval: bool = False,
) -> int:
    """Run every stage of a config in order (finished stages are skipped), then the evaluation.

    Args:
        config: YAML config file
        overrides: key=value config overrides, e.g. out_dir=runs/try2
        resume: continue interrupted stages from their last checkpoint (default on)
        force: delete all stages' outputs and train again
        skip_eval: train only; do not run the evaluation
    """
    cfg = load_config(config, overrides)
    try:
        info = dist.init_distributed()
        bb = stages.get_backbone(cfg)
        stages.run_all(cfg, bb, resume=resume, force=force)
        if skip_eval or not info.is_main:
            return 0
        run_evaluation(cfg, bb)
    finally:
        dist.cleanup()
    return 0
