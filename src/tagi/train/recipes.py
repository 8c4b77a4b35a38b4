"""Recipes: what a training stage trains with, built once from the stage's own config section.

Like torchtune's recipes, :meth:`FinetuneRecipe.build` reads ``cfg.finetune`` (and the sections it depends
on: ``data`` for the training tasks, ``teachers`` for the teacher adapters, ``hyper`` for a fresh
hypernetwork) and builds, in this order, what the finetuning loop runs:

1. the teachers (when ``finetune.loss`` reads them) and the hypernetwork (a checkpoint's or a fresh one,
   :func:`init_model`);
2. the data (:class:`~tagi.train.finetune.FinetuneData`) and its :class:`~tagi.train.batching.StepSampler`,
   built **once**: the same sampler decides which instructions are encoded beforehand, which teacher
   outputs are cached, and what :func:`~tagi.train.loop.train_loop` draws at every step.
   ``finetune.task_group`` is read here only: it makes the sampler's chunks of one task and, through the
   sampler's ``group_size``, whether a chunk's prompt prefix is shared (``share_prefix``);
3. the instruction cache (every instruction the run draws, encoded in a fixed order, so a resumed run
   sees bitwise the same encodings), the top-k teacher cache (``finetune.teacher_cache``) and the
   :class:`~tagi.train.finetune.DistillObjective`.

A fresh hypernetwork is seeded by ``cfg.seed`` (:func:`new_model`), so building a recipe twice gives the
same model, draws and caches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from tagi.backbones import Backbone
from tagi.config import ExperimentConfig, to_dict
from tagi.data.prompts import format_instruction
from tagi.data.sni import Task
from tagi.errors import TagiError
from tagi.hypernet import masked_mean
from tagi.model import InstructionCache, TagiModel
from tagi.train.batching import Sample, StepSampler
from tagi.train.common import is_done, training_tasks
from tagi.train.distill import TeacherSet
from tagi.train.finetune import (
    DistillObjective,
    FinetuneData,
    student_lengths,
    teacher_cache,
    warm_instruction_cache,
)
from tagi.train.loop import step_sampler
from tagi.train.teachers import load_teachers

log = logging.getLogger("tagi.train")


# ------------------------------------------------------------------------------------- the hypernetwork


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


# ------------------------------------------------------------------------------------------ finetuning


def finetune_stream(
    cfg: ExperimentConfig, backbone: Backbone, tasks: Sequence[Task], teacher_num_pos: int, world_size: int
) -> tuple[FinetuneData, StepSampler, list[Sample]]:
    """The finetuning's data on ``tasks``, its step sampler (``finetune.train``'s batches, in chunks of
    ``finetune.task_group`` examples of one task; 1 = tasks mixed freely) and every sample the whole run
    draws (all steps, all ranks)."""
    ft = cfg.finetune
    data = FinetuneData(
        tasks, ft.student_num_pos, teacher_num_pos, cfg.seed, ft.prompt_dropout,
        ft.hyper_demos, ft.hyper_definition_dropout,
    )  # fmt: skip
    lengths = student_lengths(backbone, data, ft.fusion)
    sampler = step_sampler(lengths, ft.train, cfg.seed, world_size, data.task_ids(), ft.task_group)
    return data, sampler, sampler.samples_until(ft.train.max_steps)


@dataclass
class FinetuneRecipe:
    """What a finetuning trains with (see the module docstring); :meth:`build` makes one from a config."""

    model: TagiModel
    data: FinetuneData
    sampler: StepSampler
    objective: DistillObjective
    cache: InstructionCache
    validation: list[Task]  # held-out training tasks: the validation CE at the end
    init: Path | None  # the checkpoint the hypernetwork started from (None: fresh)
    teachers_dir: Path | None  # None when the loss reads no teacher

    @classmethod
    def build(
        cls,
        cfg: ExperimentConfig,
        backbone: Backbone,
        *,
        teachers_dir: str | Path | None = None,
        init_ckpt: str | Path | None = None,
        teacher_cache_dir: str | Path | None = None,
        world_size: int = 1,
    ) -> FinetuneRecipe:
        """The recipe of ``cfg``'s finetuning on ``world_size`` processes.

        ``teachers_dir`` defaults to ``<out_dir>/teachers`` (read only when the loss uses teachers),
        ``init_ckpt`` to :func:`resolve_init`'s choice, ``teacher_cache_dir`` to
        ``<out_dir>/finetune/teacher_cache`` (used with ``finetune.teacher_cache`` and ``loss.kl > 0``).
        """
        ft = cfg.finetune
        train_tasks, val_tasks = training_tasks(cfg)
        tdir = Path(teachers_dir) if teachers_dir else Path(cfg.out_dir) / "teachers"
        teachers = TeacherSet(*load_teachers(tdir), backbone.device) if ft.loss.uses_teachers else None
        init = resolve_init(cfg, init_ckpt)
        model = init_model(cfg, backbone, init, train_tasks)
        teacher_pos = teachers.num_pos if teachers else cfg.teachers.num_pos
        # what the whole run will draw: only these are prepared
        data, sampler, drawn = finetune_stream(cfg, backbone, train_tasks, teacher_pos, world_size)
        cache = InstructionCache()
        extra = [""] if ft.hyper_input == "empty" or ft.prompt_dropout > 0 else []
        used = list(dict.fromkeys(data.hyper_instruction(s) for s in drawn))
        warm_instruction_cache(model, cache, used + extra, ft.train.batch_size)
        topk = None
        if ft.teacher_cache and ft.loss.kl > 0:
            folder = Path(teacher_cache_dir or Path(cfg.out_dir) / "finetune" / "teacher_cache")
            bf16 = ft.train.precision == "bf16"
            autocast = partial(torch.autocast, backbone.device.type, dtype=torch.bfloat16, enabled=bf16)
            topk = teacher_cache(
                cfg, backbone, data, teachers, tdir, folder, autocast, [s.index for s in drawn]
            )
        share = sampler.group_size > 1  # a chunk of one task: its prompt prefix runs once
        objective = DistillObjective(
            model, data, ft.loss, ft.fusion, cache, teachers, topk, ft.hyper_input, share_prefix=share
        )
        return cls(model, data, sampler, objective, cache, val_tasks, init, tdir if teachers else None)
