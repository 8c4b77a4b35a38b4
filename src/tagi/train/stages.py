"""Stage runners: teachers (0), pretraining (1), finetuning (2), and the stage plan.

Each runner takes the experiment config (plus optional paths and a loaded backbone), writes its stage
folder under ``cfg.out_dir`` (layout in the README) and returns it. A stage whose ``DONE.json`` exists is
skipped (``force=True`` deletes the folder and trains again). An interrupted stage is continued from its
last checkpoint with ``resume=True``; with ``resume=False`` it refuses to overwrite the unfinished run
unless forced. ``DONE.json`` is written last and records wall time, steps, tokens/s, peak memory, the
first/last logged value of each loss term, the config, the seed and package versions.

Under ``torchrun`` every rank calls the same runner; rank 0 writes the files and the others wait.

The stage plan lives here, next to the runners: :func:`planned_stages` is the order of a run's stages
(``tagi run`` via :func:`run_all`, ``tagi demo``), :func:`prerequisites` the stages a set of finetuning
variants reads (``tagi sweep``'s points, an evaluated training variant via :class:`tagi.pipeline.Pipeline`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tagi.adapters import ADAPTER_CONFIG, TAGI_META
from tagi.backbones import Backbone, load_backbone
from tagi.config import ExperimentConfig, TrainConfig, to_dict
from tagi.data.select import task_examples
from tagi.errors import TagiError
from tagi.files import write_json
from tagi.train import dist
from tagi.train.batching import StepSampler
from tagi.train.checkpoint import find_state
from tagi.train.common import (
    example_lengths,
    is_done,
    read_done,
    stage_settings,
    training_tasks,
    with_defaults,
    write_done,
)
from tagi.train.finetune import validation_ce
from tagi.train.loop import LoopResult, Objective, train_loop
from tagi.train.pretrain import PretrainObjective, pretrain_texts, segment_examples
from tagi.train.recipes import FinetuneRecipe, new_model
from tagi.train.teachers import INDEX, fit_lora, folder_names, teacher_groups

log = logging.getLogger("tagi.train")


def get_backbone(cfg: ExperimentConfig, backbone: Backbone | None = None) -> Backbone:
    """The given backbone, or the config's base model loaded on this rank's device."""
    return backbone if backbone is not None else load_backbone(cfg.model, dist.default_device(dist.current()))


def _begin(stage: str, out: Path, cfg: ExperimentConfig, resume: bool, force: bool, unfinished: bool) -> bool:
    """Decide whether to run a stage; returns False to skip it (already complete)."""
    info = dist.init_distributed()
    if force:
        if info.is_main and out.exists():
            log.info("%s: --force, deleting %s", stage, out)
            shutil.rmtree(out)
        dist.barrier(info)
        return True
    if is_done(out):
        saved = with_defaults(read_done(out).get("config"))
        if saved is None or stage_settings(saved, stage) != stage_settings(to_dict(cfg), stage):
            log.warning(
                "%s: %s is complete but was made with other settings; skipping (--force to redo)", stage, out
            )
        log.info("%s: complete, skipping (%s)", stage, out / "DONE.json")
        return False
    if unfinished and not resume:
        raise TagiError(
            f"{out} holds an unfinished {stage} run: pass --resume to continue it or --force to start over"
        )
    return True


def _summary(results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Several loop summaries (one per teacher) as one: totals, and loss terms averaged over runs."""
    tokens = sum(r["tokens"] for r in results)
    train_time = sum(r["wall_time_s"] for r in results)

    def mean(which: str) -> dict[str, float]:
        keys = sorted({k for r in results for k in r["losses"][which]})
        return {k: sum(r["losses"][which].get(k, 0.0) for r in results) / len(results) for k in keys}

    return {
        "wall_time_s": round(wall, 3),
        "steps": sum(r["steps"] for r in results),
        "tokens": tokens,
        "tokens_per_s": round(tokens / max(train_time, 1e-9), 1),
        "peak_memory_mb": max((r["peak_memory_mb"] for r in results), default=0.0),
        "losses": {"first": mean("first"), "last": mean("last")} if results else {},
    }


def _train(
    stage: str,
    out: Path,
    cfg: ExperimentConfig,
    module: torch.nn.Module,
    objective: Objective,
    sampler: StepSampler | Sequence[int],
    train: TrainConfig,
    resume: bool,
    extra: dict[str, Any] | None = None,
) -> LoopResult:
    """The stage's training loop: checkpoints in ``out/state``, the log in ``out/log.jsonl``, resumable while
    the stage's settings (plus ``extra``) are the saved run's."""
    return train_loop(
        module,
        objective,
        sampler,
        train,
        seed=cfg.seed,
        state_dir=out / "state",
        log_path=out / "log.jsonl",
        resume=resume,
        fingerprint=stage_settings(to_dict(cfg), stage) | (extra or {}),
        desc=stage,
        info=dist.current(),
    )


# ------------------------------------------------------------------------------------------- stage 0


def run_teachers(
    cfg: ExperimentConfig,
    backbone: Backbone | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    force: bool = False,
) -> Path:
    """Stage 0: one LoRA teacher per category (or task) of the training tasks; returns the teachers folder."""
    out = Path(out_dir) if out_dir else Path(cfg.out_dir) / "teachers"
    unfinished = (out / "state").exists() or any(out.glob(f"*/{ADAPTER_CONFIG}"))
    if not _begin("teachers", out, cfg, resume, force, unfinished):
        return out
    info, t0 = dist.current(), time.perf_counter()
    bb = get_backbone(cfg, backbone)
    tasks, _ = training_tasks(cfg)
    tc = cfg.teachers
    groups = teacher_groups(tasks, tc.group_by)
    folders = folder_names(list(groups))
    results = {}
    for i, (group, members) in enumerate(groups.items()):
        folder = out / folders[group]
        fp = stage_settings(to_dict(cfg), "teachers")
        fp |= {"group": group, "tasks": [t.name for t in members]}
        meta_path = folder / TAGI_META
        if meta_path.is_file() and json.loads(meta_path.read_text()).get("fingerprint") == fp:
            results[group] = json.loads(meta_path.read_text())["train"]  # finished before an interruption
            continue
        examples = [e for t in members for e in task_examples(t, tc.num_pos)]
        meta = {
            "stage": "teachers",
            "group": group,
            "tasks": fp["tasks"],
            "num_pos": tc.num_pos,
            "fingerprint": fp,
        }
        state = out / "state" / folders[group]
        _, res = fit_lora(
            bb,
            examples,
            tc.rank,
            tc.alpha,
            tc.train,
            folder,
            mode="concat",
            seed=cfg.seed + i,
            desc=f"teacher {i + 1}/{len(groups)} {group}",
            state_dir=state,
            log_path=out / "logs" / f"{folders[group]}.jsonl",
            resume=resume,
            meta=meta,
        )
        results[group] = res.to_dict()
        if info.is_main:
            shutil.rmtree(state, ignore_errors=True)
    if info.is_main:
        index = {"group_by": tc.group_by, "num_pos": tc.num_pos, "rank": tc.rank, "alpha": tc.alpha}
        index |= {"tasks": {t.name: g for g, ms in groups.items() for t in ms}, "groups": folders}
        write_json(out / INDEX, index)
        shutil.rmtree(out / "state", ignore_errors=True)
        summary = _summary(list(results.values()), time.perf_counter() - t0)
        write_done(out, "teachers", cfg, summary | {"num_teachers": len(groups), "teachers": results})
    dist.barrier(info)
    return out


# ------------------------------------------------------------------------------------------- stage 1


def run_pretrain(
    cfg: ExperimentConfig,
    backbone: Backbone | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    force: bool = False,
) -> Path | None:
    """Stage 1: a/b/c pretraining of the hypernetwork; returns the stage folder (None when disabled)."""
    if not cfg.pretrain.enabled:
        log.info("pretrain: disabled (pretrain.enabled=false)")
        return None
    out = Path(out_dir) if out_dir else Path(cfg.out_dir) / "pretrain"
    if not _begin("pretrain", out, cfg, resume, force, find_state(out / "state") is not None):
        return out
    info, t0 = dist.current(), time.perf_counter()
    bb = get_backbone(cfg, backbone)
    tasks, _ = training_tasks(cfg)
    texts = pretrain_texts(cfg, tasks)
    p = cfg.pretrain
    examples = segment_examples(bb, texts, p.segment_tokens, p.min_segment_tokens, cfg.seed)
    model = new_model(cfg, bb, tasks)
    lengths = example_lengths(bb, examples, instruction=False)
    res = _train("pretrain", out, cfg, model, PretrainObjective(model, examples), lengths, p.train, resume)
    if info.is_main:
        model.save(out / "final", extra={"stage": "pretrain", "steps": res.steps})
        summary = res.to_dict() | {"wall_time_s": round(time.perf_counter() - t0, 3)}
        write_done(
            out, "pretrain", cfg, summary | {"num_documents": len(texts), "num_sequences": len(examples)}
        )
    dist.barrier(info)
    return out


# ------------------------------------------------------------------------------------------- stage 2


def run_finetune(
    cfg: ExperimentConfig,
    backbone: Backbone | None = None,
    out_dir: str | Path | None = None,
    teachers_dir: str | Path | None = None,
    init_ckpt: str | Path | None = None,
    resume: bool = True,
    force: bool = False,
    teacher_cache_dir: str | Path | None = None,
) -> Path:
    """Stage 2: distillation finetuning; returns the stage folder (``final/`` holds the TagiModel).

    ``init_ckpt`` defaults to ``<out_dir>/pretrain/final`` when ``finetune.use_pretrained`` and pretraining
    finished; with ``use_pretrained=false`` the hypernetwork starts fresh. ``teachers_dir`` defaults to
    ``<out_dir>/teachers`` (read only when loss.kl or loss.align > 0), ``teacher_cache_dir`` to
    ``<stage>/teacher_cache`` (variants trained against the same teachers and data may share one).
    """
    out = Path(out_dir) if out_dir else Path(cfg.out_dir) / "finetune"
    if not _begin("finetune", out, cfg, resume, force, find_state(out / "state") is not None):
        return out
    info, t0, ft = dist.current(), time.perf_counter(), cfg.finetune
    recipe = FinetuneRecipe.build(
        cfg,
        get_backbone(cfg, backbone),
        teachers_dir=teachers_dir,
        init_ckpt=init_ckpt,
        teacher_cache_dir=teacher_cache_dir or out / "teacher_cache",
        world_size=info.world_size,
    )
    res = _train(
        "finetune",
        out,
        cfg,
        recipe.model,
        recipe.objective,
        recipe.sampler,
        ft.train,
        resume,
        {"init": str(recipe.init or "")},
    )
    if info.is_main:
        _finish_finetune(out, cfg, recipe, res, t0)
    dist.barrier(info)
    return out


def _finish_finetune(out: Path, cfg: ExperimentConfig, recipe: FinetuneRecipe, res, t0: float) -> None:
    """Validation CE on the held-out training tasks (appended to the log), ``final/`` and ``DONE.json``
    (its wall time counts from ``t0``, the stage's start, to the end of this)."""
    ft, model, init = cfg.finetune, recipe.model, recipe.init
    val = validation_ce(
        model,
        recipe.validation,
        ft.student_num_pos,
        ft.fusion,
        ft.train.batch_size,
        recipe.cache,
        hyper_input=ft.hyper_input,
    )
    if val:
        with (out / "log.jsonl").open("a") as f:
            f.write(json.dumps({"step": res.steps, "split": "validation", **val}) + "\n")
        log.info("finetune: validation %s", ", ".join(f"{k}={v:.4f}" for k, v in val.items()))
    model.save(
        out / "final",
        extra={
            "stage": "finetune",
            "steps": res.steps,
            "init": str(init or ""),
            "hyper_input": ft.hyper_input,
            "fusion": ft.fusion,  # read by tagi.api: how the adapter must be used
        },
    )
    summary = res.to_dict() | {"wall_time_s": round(time.perf_counter() - t0, 3), "validation": val}
    tdir = recipe.teachers_dir
    summary |= {"init_ckpt": str(init) if init else None, "teachers_dir": str(tdir) if tdir else None}
    summary |= {"num_examples": len(recipe.data), "num_tasks": len(recipe.data.tasks)}
    write_done(out, "finetune", cfg, summary)


# ------------------------------------------------------------------------------------------- the plan

Stage = tuple[str, Callable[..., Path | None]]


def _before_finetune(variants: Sequence[ExperimentConfig], pretrain: bool) -> list[Stage]:
    plan: list[Stage] = []
    if any(v.finetune.loss.uses_teachers for v in variants):
        plan.append(("teachers", run_teachers))
    if pretrain:
        plan.append(("pretrain", run_pretrain))
    return plan


def planned_stages(cfg: ExperimentConfig) -> list[Stage]:
    """The stages a run of ``cfg`` trains, in order, each with its runner: teachers (when the finetuning
    loss reads them), pretraining (when enabled), finetuning."""
    return [*_before_finetune([cfg], cfg.pretrain.enabled), ("finetune", run_finetune)]


def prerequisites(cfg: ExperimentConfig, variants: Sequence[ExperimentConfig]) -> list[Stage]:
    """The stages of ``cfg``'s run that finetuning ``variants`` reads (a sweep's points, an evaluated training
    variant), in order: its teachers when a variant's loss reads them, its pretraining when enabled and a
    variant starts from it. Each runner is called with ``cfg``: the variants share the run's stages."""
    pretrained = cfg.pretrain.enabled and any(v.finetune.use_pretrained for v in variants)
    return _before_finetune(variants, pretrained)


def run_all(
    cfg: ExperimentConfig, backbone: Backbone | None = None, resume: bool = True, force: bool = False
) -> dict[str, Path | None]:
    """Every stage of :func:`planned_stages` in order (finished stages are skipped); ``tagi run``.

    Returns each stage's folder (None for a stage the run does not need)."""
    dist.init_distributed()
    bb = get_backbone(cfg, backbone)
    paths: dict[str, Path | None] = {"teachers": None, "pretrain": None}
    plan = planned_stages(cfg)
    if "teachers" not in dict(plan):
        log.info("teachers: not needed (finetune.loss.kl = finetune.loss.align = 0)")
    if not cfg.pretrain.enabled:
        log.info("pretrain: disabled (pretrain.enabled=false)")
    for name, run in plan:
        paths[name] = run(cfg, bb, resume=resume, force=force)
    return paths
