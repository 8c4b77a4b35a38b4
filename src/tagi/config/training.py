"""The training sections: one run of the shared loop (``train``), the finetuning loss (``loss``), and the
three stages (``teachers``, ``pretrain``, ``finetune``), each with its own ``train`` settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tagi.config.schema import check, field_


@dataclass
class TrainConfig:
    """One run of the shared training loop."""

    max_steps: int = field_(100, "Optimiser steps.")
    batch_size: int = field_(8, "Examples per micro-batch (per process).")
    grad_accum: int = field_(1, "Micro-batches per optimiser step.")
    lr: float = field_(1e-4, "Peak learning rate.")
    optimizer: Literal["adamw", "adafactor"] = field_("adamw", "Optimiser.")
    weight_decay: float = field_(0.0, "AdamW weight decay.")
    warmup_ratio: float = field_(0.02, "Fraction of steps with linear warmup before the cosine decay.")
    min_lr_ratio: float = field_(0.1, "Cosine decay ends at lr * min_lr_ratio.")
    clip_grad: float = field_(1.0, "Gradient-norm clipping (0 = off).")
    precision: Literal["fp32", "bf16"] = field_("fp32", "Autocast precision for the forward pass.")
    log_every: int = field_(10, "Steps between log lines.")
    ckpt_every: int = field_(50, "Steps between atomic checkpoints (0 = only at the end).")
    num_threads: int = field_(0, "torch threads (0 = leave torch's default).")
    length_grouping: int = field_(
        16,
        "Length-grouped batching: examples are sorted by length within windows of this many optimiser "
        "steps, so micro-batches hold examples of similar length (1 = sort only within each step).",
    )
    progress_bar: bool = field_(True, "Show a progress bar (loss terms, tokens/s, memory) on stderr.")
    tensorboard: bool = field_(
        False,
        "Also write TensorBoard scalars next to the JSONL log, under tensorboard/ (needs the tensorboard package).",
    )

    def __post_init__(self) -> None:
        check(self.max_steps > 0, f"max_steps must be > 0, got {self.max_steps}")
        check(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads}")
        check(self.length_grouping > 0, f"length_grouping must be > 0, got {self.length_grouping}")
        check(self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size}")
        check(self.grad_accum > 0, f"grad_accum must be > 0, got {self.grad_accum}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check(self.clip_grad >= 0, f"clip_grad must be >= 0, got {self.clip_grad}")
        check(self.log_every > 0 and self.ckpt_every >= 0, "log_every must be > 0 and ckpt_every >= 0")


@dataclass
class LossConfig:
    """Weights of the finetuning objective L = w_ce*CE + w_kl*tau^2*KL + w_align*L_align
    + w_mismatch*L_mismatch + w_l2*L_l2 (0 = off)."""

    ce: float = field_(1.0, "Weight of the student's cross-entropy on the labels.")
    kl: float = field_(1.0, "Weight of KL(teacher^tau || student^tau) over label tokens.")
    align: float = field_(0.1, "Weight of the distance between generated and teacher adapters.")
    temperature: float = field_(2.0, "Distillation temperature tau (official script: 3.0).")
    align_mode: Literal["delta", "factors"] = field_(
        "delta",
        "'delta': distance between the updates dW = s*B@A (invariant to the factors' gauge); "
        "'factors': MSE on A and on B (the paper's choice; requires equal ranks).",
    )
    kl_topk: int = field_(0, "Keep only the teacher's top-k tokens per position (0 = full vocabulary).")
    mismatch: float = field_(
        0.0,
        "Weight of the specificity hinge: each example's own generated adapter must fit it better than the "
        "adapter of another training task (seeded draw, the prompt unchanged) by mismatch_margin nats per "
        "label token. Costs a second forward and backward pass per micro-batch.",
    )
    mismatch_margin: float = field_(0.2, "Margin of the mismatch hinge, in nats per label token.")
    l2: float = field_(
        0.0,
        "Weight of the L2 penalty on the generated updates: the mean over examples of "
        "sum_modules ||s*B@A||_F^2 (Text-to-LoRA's regulariser, on dW rather than on the factors).",
    )

    def __post_init__(self) -> None:
        check(self.mismatch_margin >= 0, f"loss.mismatch_margin must be >= 0, got {self.mismatch_margin}")
        for k in ("ce", "kl", "align", "mismatch", "l2"):
            check(getattr(self, k) >= 0, f"loss.{k} must be >= 0, got {getattr(self, k)}")
        check(self.ce + self.kl + self.align > 0, "at least one loss weight must be > 0")
        check(self.temperature > 0, f"loss.temperature must be > 0, got {self.temperature}")
        check(self.kl_topk >= 0, f"loss.kl_topk must be >= 0, got {self.kl_topk}")

    @property
    def uses_teachers(self) -> bool:
        """Whether a term reads the teacher adapters (KL to the teacher, adapter alignment)."""
        return self.kl > 0 or self.align > 0


@dataclass
class TeachersConfig:
    """Stage 0: ordinary LoRA adapters trained on the training tasks' instances."""

    group_by: Literal["category", "task"] = field_(
        "category", "One teacher per category (paper) or per task."
    )
    rank: int = field_(8, "Teacher LoRA rank.")
    alpha: float = field_(16.0, "Teacher LoRA alpha.")
    num_pos: int = field_(
        2, "Positive examples in the teacher's in-context instruction (paper: 2, 'Def+2Pos')."
    )
    train: TrainConfig = field_(TrainConfig(max_steps=60, lr=1e-3), "Training settings per teacher.")

    def __post_init__(self) -> None:
        check(self.rank > 0 and self.alpha > 0, "teachers.rank and teachers.alpha must be > 0")
        check(self.num_pos >= 0, f"teachers.num_pos must be >= 0, got {self.num_pos}")


@dataclass
class PretrainConfig:
    """Stage 1: the hypernetwork reads segment a, the adapted model reads b and predicts c."""

    enabled: bool = field_(True, "Run hypernetwork pretraining.")
    text_files: list[str] = field_([], "Plain-text / JSONL files; empty = the training tasks' texts.")
    segment_tokens: int = field_(96, "Tokens per pretraining sequence before the a/b/c cut.")
    min_segment_tokens: int = field_(
        8, "Each of a, b, c gets at least this many tokens (a third of the sequence if it is shorter)."
    )
    text_field: str = field_("text", "Field holding the text in JSONL files and hf: datasets.")
    max_docs: int = field_(10_000, "Documents read from each hf:<dataset> source (streamed).")
    train: TrainConfig = field_(TrainConfig(max_steps=100, lr=1e-3), "Training settings.")

    def __post_init__(self) -> None:
        check(self.segment_tokens >= 3, f"pretrain.segment_tokens must be >= 3, got {self.segment_tokens}")
        check(self.min_segment_tokens >= 1, "pretrain.min_segment_tokens must be >= 1")
        check(self.max_docs > 0, f"pretrain.max_docs must be > 0, got {self.max_docs}")


@dataclass
class FinetuneConfig:
    """Stage 2: distillation finetuning of the hypernetwork on the training tasks."""

    fusion: bool = field_(True, "Fuse the instruction (T5: FiD; decoder-only: cached prompt prefix).")
    use_pretrained: bool = field_(True, "Start from the pretrained hypernetwork (stage 1) when it exists.")
    loss: LossConfig = field_(LossConfig(), "Loss weights.")
    student_num_pos: list[int] = field_(
        [0, 2],
        "Positive examples in the student's instruction, drawn per example and epoch from this list, so "
        "one hypernetwork serves both the 'Def' (0) and 'Def+2Pos' (2) evaluations.",
    )
    hyper_input: Literal["instruction", "empty"] = field_(
        "instruction",
        "What the hypernetwork reads: the task's instruction, or one constant empty text for every task (the "
        "'without hypernetwork' ablation: one learned adapter; fusion still shows the model the instruction).",
    )
    teacher_cache: bool = field_(
        False,
        "Compute the teacher's top-k logits (loss.kl_topk) once per training example before training and "
        "store them under <stage>/teacher_cache/ instead of running the teacher at every step.",
    )
    task_group: int = field_(
        1,
        "Examples of one task kept together in a micro-batch (1 = tasks mixed freely). With k > 1 every "
        "micro-batch holds train.batch_size / k tasks, k examples each, sharing one instruction (one draw of "
        "student_num_pos per chunk): the instruction's adapter and, for decoder-only models, its prompt "
        "prefix are computed once per chunk instead of once per example. Must divide train.batch_size.",
    )
    prompt_dropout: float = field_(
        0.0,
        "Share of training examples whose prompt carries no instruction (an empty fused instruction) while "
        "the hypernetwork still reads it, so the generated adapter alone must carry the task. Drawn per "
        "example (per chunk with task_group > 1) and epoch, seeded. Needs fusion.",
    )
    hyper_demos: Literal["first", "sampled"] = field_(
        "first",
        "The positive examples in the instruction the hypernetwork reads: the task's first k, as the prompt "
        "and the evaluation show them, or k drawn from all of the task's positive examples in a random order "
        "(per example, or per chunk with task_group > 1, and epoch; seeded): instruction augmentation. k is "
        "the draw from student_num_pos; the prompt's instruction is unchanged.",
    )
    hyper_definition_dropout: float = field_(
        0.0,
        "Instruction augmentation: each sentence of the definition the hypernetwork reads is left out with this "
        "probability (at least one kept; drawn like hyper_demos). The prompt's instruction is unchanged.",
    )
    train: TrainConfig = field_(TrainConfig(max_steps=200, lr=1e-3), "Training settings.")

    @property
    def augments(self) -> bool:
        """Whether the hypernetwork reads augmented instructions (:attr:`hyper_demos`, its dropout)."""
        return self.hyper_demos != "first" or self.hyper_definition_dropout > 0

    def __post_init__(self) -> None:
        check(
            0.0 <= self.hyper_definition_dropout < 1.0,
            f"finetune.hyper_definition_dropout must be in [0, 1), got {self.hyper_definition_dropout}",
        )
        check(
            not self.augments or self.hyper_input == "instruction",
            "finetune.hyper_demos / hyper_definition_dropout need finetune.hyper_input=instruction "
            "(the hypernetwork reads no instruction otherwise)",
        )
        check(self.task_group >= 1, f"finetune.task_group must be >= 1, got {self.task_group}")
        check(
            0.0 <= self.prompt_dropout < 1.0,
            f"finetune.prompt_dropout must be in [0, 1), got {self.prompt_dropout}",
        )
        check(
            self.prompt_dropout == 0 or self.fusion,
            "finetune.prompt_dropout needs finetune.fusion=true (without fusion the prompt has no instruction)",
        )
        check(
            self.train.batch_size % self.task_group == 0,
            f"finetune.task_group={self.task_group} must divide finetune.train.batch_size={self.train.batch_size}",
        )
        check(
            self.loss.mismatch == 0 or self.hyper_input == "instruction",
            "finetune.loss.mismatch needs finetune.hyper_input=instruction (one learned adapter has no other)",
        )
        check(bool(self.student_num_pos), "finetune.student_num_pos must not be empty")
        check(
            all(k >= 0 for k in self.student_num_pos),
            f"finetune.student_num_pos must be >= 0, got {self.student_num_pos}",
        )
        check(
            not self.teacher_cache or self.loss.kl == 0 or self.loss.kl_topk > 0,
            "finetune.teacher_cache needs finetune.loss.kl_topk > 0 (full-vocabulary logits are not cached)",
        )
