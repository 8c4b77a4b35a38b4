"""Stage runners: teachers (0), pretraining (1), finetuning (2) and all of them in order.

Each runner takes the experiment config (plus optional paths and a loaded backbone), writes its stage
folder under ``cfg.out_dir`` (layout in the README) and returns it. A stage whose ``DONE.json`` exists is
skipped (``force=True`` deletes the folder and trains again). An interrupted stage is continued from its
last checkpoint with ``resume=True``; with ``resume=False`` it refuses to overwrite the unfinished run
unless forced. ``DONE.json`` is written last and records wall time, steps, tokens/s, peak memory, the
first/last logged value of each loss term, the config, the seed and package versions.

Under ``torchrun`` every rank calls the same runner; rank 0 writes the files and the others wait.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tagi.adapters import ADAPTER_CONFIG, TAGI_META
from tagi.backbones import Backbone, load_backbone
from tagi.config import ExperimentConfig, to_dict
from tagi.data.prompts import format_instruction
from tagi.data.select import task_examples
from tagi.data.sni import Task
from tagi.errors import TagiError
from tagi.files import write_json
from tagi.hypernet import masked_mean
from tagi.model import InstructionCache, TagiModel
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
from tagi.train.distill import TeacherSet
from tagi.train.finetune import (
    DistillObjective,
    FinetuneData,
    student_lengths,
    teacher_cache,
    validation_ce,
    warm_instruction_cache,
)
from tagi.train.loop import train_loop
from tagi.train.pretrain import PretrainObjective, pretrain_texts, segment_examples
from tagi.train.teachers import INDEX, fit_lora, folder_names, load_teachers, teacher_groups

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
            bb, examples, tc.rank, tc.alpha, tc.train, folder, "concat", seed=cfg.seed + i,
            desc=f"teacher {i + 1}/{len(groups)} {group}", state_dir=state,
            log_path=out / "logs" / f"{folders[group]}.jsonl", resume=resume, meta=meta,
        )  # fmt: skip
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


def new_model(cfg: ExperimentConfig, backbone: Backbone, tasks: Sequence[Task] = ()) -> TagiModel:
    """A freshly initialised hypernetwork (seeded by ``cfg.seed``).

    With ``hyper.input_norm = "standardize"`` its input statistics are fitted on the instructions of the
    training ``tasks`` as the student sees them (every ``finetune.student_num_pos``).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = TagiModel(backbone, cfg.hyper)
    if cfg.hyper.input_norm == "standardize":
        texts = sorted({format_instruction(t, k) for t in tasks for k in cfg.finetune.student_num_pos})
        if len(texts) < 2:
            raise TagiError(
                "hyper.input_norm=standardize needs the instructions of at least 2 training tasks"
            )
        model.hypernet.fit_input_stats(
            pooled_instructions(model.reader[0], texts, cfg.finetune.train.batch_size)
        )
    return model


@torch.no_grad()
def pooled_instructions(reader, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """Mean-pooled (padding-masked) frozen encodings of ``texts`` by ``reader`` (``TagiModel.reader``): ``[N, H]``."""
    cache, out = InstructionCache(), []
    for s in range(0, len(texts), batch_size):
        states, mask = cache.get(reader, texts[s : s + batch_size])
        out.append(masked_mean(states.float(), mask))
    return torch.cat(out)


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
    fingerprint = stage_settings(to_dict(cfg), "pretrain")
    res = train_loop(
        model, PretrainObjective(model, examples), example_lengths(bb, examples, instruction=False), p.train,
        seed=cfg.seed, state_dir=out / "state", log_path=out / "log.jsonl", resume=resume,
        fingerprint=fingerprint, desc="pretrain", info=info,
    )  # fmt: skip
    if info.is_main:
        model.save(out / "final", extra={"stage": "pretrain", "steps": res.steps})
        summary = res.to_dict() | {"wall_time_s": round(time.perf_counter() - t0, 3)}
        write_done(
            out, "pretrain", cfg, summary | {"num_documents": len(texts), "num_sequences": len(examples)}
        )
    dist.barrier(info)
    return out


# ------------------------------------------------------------------------------------------- stage 2


def init_model(
    cfg: ExperimentConfig, backbone: Backbone, init_ckpt: Path | None, tasks: Sequence[Task] = ()
) -> TagiModel:
    """The hypernetwork to finetune: a checkpoint's (same hyper settings required) or a fresh one."""
    if init_ckpt is None:
        return new_model(cfg, backbone, tasks)
    model = TagiModel.load(init_ckpt, backbone)
    if to_dict(model.hyper_cfg) != to_dict(cfg.hyper):
        raise TagiError(f"{init_ckpt} was trained with other `hyper` settings than the config's")
    return model


def resolve_init(cfg: ExperimentConfig, init_ckpt: str | Path | None) -> Path | None:
    """The checkpoint finetuning starts from: ``init_ckpt``, else a finished ``<out_dir>/pretrain/final``
    (``finetune.use_pretrained``), else none."""
    if not cfg.finetune.use_pretrained:
        if init_ckpt is not None:
            log.warning("finetune: use_pretrained=false, ignoring init_ckpt=%s", init_ckpt)
        return None
    if init_ckpt is not None:
        return Path(init_ckpt)
    pre = Path(cfg.out_dir) / "pretrain"
    return pre / "final" if is_done(pre) else None


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
    bb = get_backbone(cfg, backbone)
    train_tasks, val_tasks = training_tasks(cfg)
    tdir = Path(teachers_dir) if teachers_dir else Path(cfg.out_dir) / "teachers"
    teachers = TeacherSet(*load_teachers(tdir), bb.device) if needs_teachers(cfg) else None
    init = resolve_init(cfg, init_ckpt)
    model = init_model(cfg, bb, init, train_tasks)
    teacher_pos = teachers.num_pos if teachers else cfg.teachers.num_pos
    data = FinetuneData(train_tasks, ft.student_num_pos, teacher_pos, cfg.seed, ft.prompt_dropout)
    lengths = student_lengths(bb, data, ft.fusion)
    tc = ft.train
    groups, k = data.task_ids(), ft.task_group
    drawn = StepSampler(
        lengths, tc.batch_size, tc.grad_accum, info.world_size, cfg.seed, tc.length_grouping, groups, k
    )
    drawn = drawn.samples_until(tc.max_steps)  # what the whole run will see: only these are prepared
    cache = InstructionCache()
    extra = [""] if ft.hyper_input == "empty" or ft.prompt_dropout > 0 else []
    used = list(dict.fromkeys(data.hyper_instruction(s) for s in drawn))
    warm_instruction_cache(model, cache, used + extra, ft.train.batch_size)
    topk = None
    if ft.teacher_cache and ft.loss.kl > 0:
        folder = Path(teacher_cache_dir) if teacher_cache_dir else out / "teacher_cache"

        def autocast():
            return torch.autocast(bb.device.type, dtype=torch.bfloat16, enabled=ft.train.precision == "bf16")

        topk = teacher_cache(cfg, bb, data, teachers, tdir, folder, autocast, [s.index for s in drawn])
    objective = DistillObjective(
        model, data, ft.loss, ft.fusion, cache, teachers, topk, ft.hyper_input, share_prefix=k > 1
    )
    fingerprint = stage_settings(to_dict(cfg), "finetune") | {"init": str(init or "")}
    res = train_loop(
        model, objective, lengths, ft.train, seed=cfg.seed,
        state_dir=out / "state", log_path=out / "log.jsonl", resume=resume, fingerprint=fingerprint,
        desc="finetune", info=info, groups=groups, group_size=k,
    )  # fmt: skip
    if info.is_main:
        val = validation_ce(
            model, val_tasks, ft.student_num_pos, ft.fusion, ft.train.batch_size, cache, ft.hyper_input
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
                "fusion": ft.fusion,  # read by tagi.generate: how the adapter must be used
            },
        )
        summary = res.to_dict() | {"wall_time_s": round(time.perf_counter() - t0, 3), "validation": val}
        summary |= {"init_ckpt": str(init) if init else None, "teachers_dir": str(tdir) if teachers else None}
        write_done(out, "finetune", cfg, summary | {"num_examples": len(data), "num_tasks": len(train_tasks)})
    dist.barrier(info)
    return out


def needs_teachers(cfg: ExperimentConfig) -> bool:
    return cfg.finetune.loss.kl > 0 or cfg.finetune.loss.align > 0


def run_all(
    cfg: ExperimentConfig, backbone: Backbone | None = None, resume: bool = True, force: bool = False
) -> dict[str, Path | None]:
    """Teachers (when the finetuning loss uses them), pretraining (when enabled), finetuning; finished stages
    are skipped. Returns each stage's folder."""
    dist.init_distributed()
    bb = get_backbone(cfg, backbone)
    paths: dict[str, Path | None] = {"teachers": None}
    if needs_teachers(cfg):
        paths["teachers"] = run_teachers(cfg, bb, resume=resume, force=force)
    else:
        log.info("teachers: not needed (finetune.loss.kl = finetune.loss.align = 0)")
    paths["pretrain"] = run_pretrain(cfg, bb, resume=resume, force=force)
    paths["finetune"] = run_finetune(cfg, bb, resume=resume, force=force)
    return paths
