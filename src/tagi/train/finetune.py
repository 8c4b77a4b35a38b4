"""Stage 2: distillation finetuning of the hypernetwork on the training tasks (SPEC §2)::

    L = w_ce * CE  +  w_kl * tau^2 * KL(p_teacher^tau || p_student^tau)  +  w_align * L_align

- **Student**: base + the adapter the hypernetwork generates from the task's instruction; the instruction
  is fused (``finetune.fusion``: T5 FiD / decoder-only prompt prefix, prompt mode ``fuse``) or absent (mode
  ``none``). The number of positive examples in the student's instruction is drawn per example and epoch
  from ``finetune.student_num_pos`` (default ``[0, 2]``: one hypernetwork serves Def and Def+2Pos).
  ``finetune.hyper_input=empty`` (the "without hypernetwork" ablation) feeds the hypernetwork one empty
  text for every task — a single learned adapter — while the fusion still shows the model the instruction.
  ``finetune.prompt_dropout = p`` is the converse: for a seeded share ``p`` of the examples the prompt's
  fused instruction is empty while the hypernetwork still reads the task's instruction, so the generated
  adapter alone must carry the task (the model cannot read it from the prompt).
  ``finetune.hyper_demos="sampled"`` and ``finetune.hyper_definition_dropout = q`` augment what the
  hypernetwork reads (never the prompt): its demonstrations are drawn from all the task's positive examples
  in a random order, and each definition sentence is left out with probability ``q`` (seeded per example or
  chunk and epoch), so one task maps many instruction texts to its adapter.
- **Teacher**: base + the task's teacher LoRA (stage 0) with the Def+2Pos instruction in context; no
  gradient. On the fly, or from the top-k cache (:mod:`tagi.train.distill`).
- **Mismatch** (``loss.mismatch > 0``): the same student batch runs a second time with the adapter the
  hypernetwork generates from *another* training task's instruction (seeded draw per example, or per chunk
  with ``task_group > 1``, with the same number of positive examples; the prompt is unchanged), and
  :func:`tagi.losses.mismatch_sum` asks the own adapter to beat it by ``loss.mismatch_margin`` nats per
  label token: the generated adapter must carry what tells this task from the others.
- CE, KL and mismatch are sums over label tokens divided by the label tokens of the optimiser step; ``L_align``
  (:func:`tagi.losses.align_loss`, ``delta`` or ``factors``) is a mean over the step's examples between
  each example's generated adapter and its teacher adapter; ``L_l2`` (``loss.l2 > 0``,
  :func:`tagi.losses.update_sq_norms`) is the mean over the step's examples of the squared norm of the
  example's generated update. A weight of 0 removes the term (not computed, not logged).

``finetune.task_group = k > 1`` draws micro-batches as chunks of ``k`` examples of one task with one
instruction (:mod:`tagi.train.batching`); the chunk's adapter is generated once and, for decoder-only
models, its prompt prefix (student and on-the-fly teacher) runs once, its key/value cache shared by the
chunk's rows (``collate(..., share_prefix=True)``: the same logits as running every row in full).

Frozen instruction encodings are computed once per distinct instruction before training (in a fixed
order, so a resumed run sees bitwise the same encodings) and reused for the hypernetwork and, for T5, FiD.
At the end, the student's CE on the held-out validation tasks (``data.validation_tasks``; never test
tasks) is logged for model selection.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from tagi.backbones import Backbone, PromptExample
from tagi.backbones.base import ModelBatch
from tagi.config import ExperimentConfig, LossConfig
from tagi.data.prompts import definition_sentences, format_instruction, format_source, instruction_text
from tagi.data.select import task_examples
from tagi.data.sni import Task
from tagi.errors import TagiError
from tagi.lora import LoraWeights
from tagi.losses import align_loss, ce_sum, kl_sum, kl_topk_sum, mismatch_sum, teacher_topk, update_sq_norms
from tagi.model import InstructionCache, TagiModel
from tagi.train import dist
from tagi.train.batching import Sample
from tagi.train.common import batch_tokens, example_lengths
from tagi.train.distill import (
    TeacherSet,
    TopkCache,
    cache_fingerprint,
    check_same_labels,
    load_or_build_cache,
    topk_log_probs,
)
from tagi.train.loop import MicroBatch, Term


class FinetuneData:
    """One training example per (task, instance), seen as the student sees it and as the teacher sees it."""

    def __init__(
        self,
        tasks: Sequence[Task],
        student_num_pos: Sequence[int],
        teacher_num_pos: int,
        seed: int,
        prompt_dropout: float = 0.0,
        hyper_demos: str = "first",
        definition_dropout: float = 0.0,
    ):
        self.tasks = list(tasks)
        self.prompt_dropout = prompt_dropout
        self.hyper_demos = hyper_demos
        self.definition_dropout = definition_dropout
        self.augments = hyper_demos != "first" or definition_dropout > 0
        self.items = [(ti, ii) for ti, t in enumerate(self.tasks) for ii in range(len(t.instances))]
        self.student_num_pos = list(student_num_pos)
        self.teacher_num_pos = teacher_num_pos
        self.seed = seed
        ks = sorted(set(self.student_num_pos) | {teacher_num_pos})
        self._instr = {(ti, k): format_instruction(t, k) for ti, t in enumerate(self.tasks) for k in ks}

    def __len__(self) -> int:
        return len(self.items)

    def task_ids(self) -> list[int]:
        """The task of every example (the groups of a task-grouped stream)."""
        return [ti for ti, _ in self.items]

    def task_name(self, index: int) -> str:
        return self.tasks[self.items[index][0]].name

    def _rng(self, what: str, sample: Sample) -> random.Random:
        """The seeded draw ``what`` of a sample in its epoch (per chunk in a task-grouped stream)."""
        key = f"chunk{sample.chunk}" if sample.chunk >= 0 else sample.index
        return random.Random(f"tagi-{what}:{self.seed}:{sample.epoch}:{key}")

    def num_pos(self, sample: Sample) -> int:
        """The student's number of positive examples for this example in this epoch (seeded draw).

        In a task-grouped stream the draw is per chunk, so a chunk's examples share one instruction.
        """
        if len(self.student_num_pos) == 1:
            return self.student_num_pos[0]
        return self._rng("numpos", sample).choice(self.student_num_pos)

    def prompt_dropped(self, sample: Sample) -> bool:
        """Whether this example's prompt goes without its instruction this epoch (``prompt_dropout``)."""
        return self.prompt_dropout > 0 and self._rng("promptdrop", sample).random() < self.prompt_dropout

    def example(self, index: int, num_pos: int) -> PromptExample:
        ti, ii = self.items[index]
        inst = self.tasks[ti].instances[ii]
        return PromptExample(self._instr[(ti, num_pos)], format_source(inst.input), inst.outputs[0])

    def student(self, sample: Sample) -> PromptExample:
        """The student's prompt example (its instruction is empty when :meth:`prompt_dropped`)."""
        ex = self.example(sample.index, self.num_pos(sample))
        return PromptExample("", ex.source, ex.target) if self.prompt_dropped(sample) else ex

    def hyper_instruction(self, sample: Sample) -> str:
        """The instruction the hypernetwork reads for this example (never dropped; augmented with
        ``hyper_demos="sampled"`` or ``definition_dropout > 0``, see :meth:`augmented`)."""
        ti, _ = self.items[sample.index]
        if not self.augments:
            return self._instr[(ti, self.num_pos(sample))]
        return self.augmented(self.tasks[ti], self.num_pos(sample), self._rng("augment", sample))

    def augmented(self, task: Task, num_pos: int, rng: random.Random) -> str:
        """``task``'s instruction with each definition sentence left out with probability
        ``definition_dropout`` (at least one kept) and ``num_pos`` demonstrations: its first, or (``"sampled"``)
        drawn without replacement from all its positive examples, in the drawn order."""
        definition, sentences = task.definition, definition_sentences(task.definition)
        if self.definition_dropout > 0 and len(sentences) > 1:
            kept = [s for s in sentences if rng.random() >= self.definition_dropout]
            definition = " ".join(kept or [rng.choice(sentences)])
        pos = task.positive_examples
        demos = rng.sample(pos, min(num_pos, len(pos))) if self.hyper_demos == "sampled" else pos[:num_pos]
        return instruction_text(definition, demos)

    def other_instruction(self, sample: Sample) -> str:
        """Another task's instruction (seeded draw; same number of positive examples) for the mismatch term."""
        ti, _ = self.items[sample.index]
        if len(self.tasks) < 2:
            raise TagiError("finetune.loss.mismatch needs at least two training tasks")
        other = self._rng("other", sample).randrange(len(self.tasks) - 1)
        other += other >= ti  # any task but this one
        return self._instr[(other, self.num_pos(sample))]

    def teacher(self, index: int) -> PromptExample:
        return self.example(index, self.teacher_num_pos)

    def student_instructions(self) -> list[str]:
        return sorted({v for (_, k), v in self._instr.items() if k in self.student_num_pos})


def warm_instruction_cache(
    model: TagiModel, cache: InstructionCache, instructions: Sequence[str], batch_size: int
) -> None:
    """Encode every instruction once, in a fixed order and fixed chunks (deterministic cache contents)."""
    unique = sorted(set(instructions))
    readers = [model.reader[0]]  # the hypernetwork's reader, then (T5) the states FiD attends over
    if model.reader[0] is not model.bb and model.bb.family == "seq2seq":
        readers.append(model.bb)
    for reader in readers:
        for s in range(0, len(unique), batch_size):
            cache.get(reader, unique[s : s + batch_size])


def student_forward(
    model: TagiModel,
    batch: ModelBatch,
    instructions: Sequence[str],
    cache: InstructionCache,
    hyper_input: str = "instruction",
    hyper_instructions: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, LoraWeights]:
    """Student logits ``[M, V]``, labels ``[M]``, each label position's example ``[M]`` and the generated
    adapters ``[N]``.

    ``instructions`` are the fused ones (the prompt's); the hypernetwork reads ``hyper_instructions``
    (default: the same). ``hyper_input="empty"``: it reads one empty text for every example (a single
    learned adapter) while the fused instruction — T5 FiD states or the decoder-only prompt prefix — stays
    the task's.
    """
    hyper = list(hyper_instructions) if hyper_instructions is not None else list(instructions)
    if hyper_input == "empty":
        hyper = [""] * len(instructions)
    if hyper == list(instructions):
        return model(batch, instructions, cache)
    weights = model.adapters(hyper, cache)
    logits, labels, rows = model.bb.forward(batch, weights, model.fuse_states(batch, instructions, cache))
    return logits, labels, rows, weights


class DistillObjective:
    """The finetuning loss terms of a micro-batch (see the module docstring)."""

    def __init__(
        self,
        model: TagiModel,
        data: FinetuneData,
        loss: LossConfig,
        fusion: bool,
        cache: InstructionCache,
        teachers: TeacherSet | None = None,
        topk: TopkCache | None = None,
        hyper_input: str = "instruction",
        share_prefix: bool = False,
    ) -> None:
        if (loss.kl > 0 or loss.align > 0) and teachers is None:
            raise TagiError("loss.kl and loss.align need teacher adapters (run `tagi train-teachers` first)")
        if loss.align > 0 and loss.align_mode == "factors" and teachers.rank != model.hyper_cfg.rank:
            raise TagiError(
                f"loss.align_mode=factors compares LoRA factors and needs equal ranks, but hyper.rank="
                f"{model.hyper_cfg.rank} and the teachers have rank {teachers.rank}; use align_mode=delta"
            )
        vocab = model.bb.model.get_output_embeddings().out_features
        if loss.kl > 0 and loss.kl_topk > vocab:
            raise TagiError(f"loss.kl_topk={loss.kl_topk} exceeds the vocabulary size {vocab}")
        self.model, self.bb, self.data, self.loss = model, model.bb, data, loss
        self.mode = "fuse" if fusion else "none"
        self.hyper_input = hyper_input
        self.share_prefix = share_prefix  # decoder-only: a chunk's prompt prefix runs once
        self.cache, self.teachers, self.topk = cache, teachers, topk

    def prepare(self, samples: Sequence[Sample]) -> MicroBatch:
        students = [self.data.student(s) for s in samples]
        batch = self.bb.collate(students, self.mode, share_prefix=self.share_prefix).to(self.bb.device)
        tokens = batch_tokens(batch, self.bb.family)
        mismatch = self.loss.mismatch > 0
        data: dict[str, Any] = {
            "batch": batch,
            "instructions": [e.instruction for e in students],
            "hyper_instructions": [self.data.hyper_instruction(s) for s in samples],
            "other_instructions": [self.data.other_instruction(s) for s in samples] if mismatch else None,
            "tasks": [self.data.task_name(s.index) for s in samples],
        }
        if self.loss.kl > 0 and self.topk is not None:
            data["teacher"] = self.topk.gather([s.index for s in samples], self.bb.device)
        elif self.loss.kl > 0:
            teachers = [self.data.teacher(s.index) for s in samples]
            tb = self.bb.collate(teachers, "concat", share_prefix=self.share_prefix).to(self.bb.device)
            data["teacher"] = tb
            tokens += batch_tokens(tb, self.bb.family)
        return MicroBatch(data, batch.num_label_tokens, len(samples), tokens)

    def kl(self, logits: torch.Tensor, labels: torch.Tensor, data: dict[str, Any]) -> torch.Tensor:
        """``tau^2 * sum_m KL(teacher || student)`` over the micro-batch's label tokens."""
        tau, k = self.loss.temperature, self.loss.kl_topk
        if self.topk is not None:
            idx, vals, t_labels = data["teacher"]
            check_same_labels(labels, t_labels)
            return kl_topk_sum(logits, idx, topk_log_probs(vals, tau), tau)
        with torch.no_grad():
            t_logits, t_labels, _ = self.bb.forward(data["teacher"], self.teachers.adapters(data["tasks"]))
        check_same_labels(labels, t_labels)
        if k > 0:
            idx, log_pt = teacher_topk(t_logits, k, tau)
            return kl_topk_sum(logits, idx, log_pt, tau)
        return kl_sum(logits, t_logits, tau)

    def terms(self, batch: MicroBatch) -> dict[str, Term]:
        d = batch.data
        logits, labels, rows, weights = student_forward(
            self.model, d["batch"], d["instructions"], self.cache, self.hyper_input, d["hyper_instructions"]
        )
        out: dict[str, Term] = {}
        if self.loss.mismatch > 0:  # the same batch with another task's adapter (the prompt unchanged)
            other, _, _, _ = student_forward(
                self.model, d["batch"], d["instructions"], self.cache, "instruction", d["other_instructions"]
            )
            value = mismatch_sum(logits, other, labels, rows, self.loss.mismatch_margin)
            out["mismatch"] = Term(value, self.loss.mismatch)
        if self.loss.ce > 0:
            out["ce"] = Term(ce_sum(logits, labels), self.loss.ce)
        if self.loss.kl > 0:
            out["kl"] = Term(self.kl(logits, labels, d), self.loss.kl)
        if self.loss.align > 0:
            target = self.teachers.adapters(d["tasks"])  # [N]
            per_example_mean = align_loss(weights, target, self.loss.align_mode)
            out["align"] = Term(per_example_mean * batch.num_examples, self.loss.align, "example")
        if self.loss.l2 > 0:  # one adapter per example, or one shared by a chunk's examples: the same mean
            out["l2"] = Term(update_sq_norms(weights).mean() * batch.num_examples, self.loss.l2, "example")
        return out


def teacher_cache(
    cfg: ExperimentConfig,
    backbone: Backbone,
    data: FinetuneData,
    teachers: TeacherSet,
    teachers_dir: Path,
    folder: Path,
    autocast: Callable[[], AbstractContextManager],
    indices: Sequence[int] | None = None,
) -> TopkCache:
    """The top-k teacher cache of ``data`` in ``folder`` (built once by rank 0, reused while it matches).

    ``indices``: the examples to cache (those the run will draw; default all of them).
    """
    ids = sorted(set(indices)) if indices is not None else list(range(len(data)))
    examples = [data.teacher(i) for i in ids]
    names = [data.task_name(i) for i in ids]
    k, ft = cfg.finetune.loss.kl_topk, cfg.finetune
    fp = cache_fingerprint(backbone, teachers_dir, examples, k, ft.train.precision, ids)

    def build() -> TopkCache:
        return TopkCache.build(backbone, teachers, examples, names, k, ft.train.batch_size, autocast, ids)

    return load_or_build_cache(folder, fp, build, dist.current())


@torch.no_grad()
def validation_ce(
    model: TagiModel,
    tasks: Sequence[Task],
    num_pos: Sequence[int],
    fusion: bool,
    batch_size: int,
    cache: InstructionCache,
    hyper_input: str = "instruction",
) -> dict[str, float]:
    """Token-mean student CE on held-out training tasks, per number of positive examples."""
    if not tasks:
        return {}
    was_training = model.training
    model.eval()
    out = {}
    for k in sorted(set(num_pos)):
        exs = [e for t in tasks for e in task_examples(t, k)]
        total, count = 0.0, 0
        for s in range(0, len(exs), batch_size):
            chunk = exs[s : s + batch_size]
            batch = model.bb.collate(chunk, "fuse" if fusion else "none").to(model.bb.device)
            logits, labels, _, _ = student_forward(
                model, batch, [e.instruction for e in chunk], cache, hyper_input
            )
            total, count = total + float(ce_sum(logits, labels)), count + labels.numel()
        out[f"val_ce_pos{k}"] = total / max(count, 1)
    model.train(was_training)
    return out


def student_lengths(backbone: Backbone, data: FinetuneData, fusion: bool) -> list[int]:
    """Length proxy per example (with the longest student instruction when it is in the prompt)."""
    k = max(data.student_num_pos)
    exs = [data.example(i, k) for i in range(len(data))]
    return example_lengths(backbone, exs, instruction=fusion and backbone.family == "causal")
