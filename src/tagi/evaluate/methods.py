"""Every evaluated method is a small declarative :class:`MethodSpec` run by one harness (SPEC §5).

A spec says

- where the adapter comes from (``adapter``): ``none`` (the frozen base), ``multitask`` (one LoRA trained
  on all training tasks with the instruction in context), ``hypernet`` (a hypernetwork checkpoint of some
  training variant generates one adapter per task), ``oracle`` (a LoRA trained on the test task itself),
  or ``fixed`` (a given PEFT folder);
- the prompt mode (``concat`` = instruction in context, ``fuse`` = TAGI's fusion, ``none`` = input only;
  ``None`` = follow the training variant: ``fuse`` when it was finetuned with fusion, else ``none``);
- which instruction the method sees (``true`` / ``other`` = a different test task's, chosen by a seeded
  derangement / ``empty``) and what the hypernetwork reads (``hyper_input``: the instruction, or one
  constant empty text for every task = the "without hypernetwork" ablation);
- what answers (``answer``): the model, or no model at all — the floors ``copy-demo`` (every instance gets
  the output of the task's first positive example) and ``majority`` (the most frequent output among the
  task's positive examples, the earliest on a tie). A method must clear them to show it read the task;
- the config overrides of its training variant (``train_overrides``; hypernetwork methods only). A variant
  is finetuned into ``<out_dir>/methods/<name>/`` unless its finetuning config equals the main run's, in
  which case the main checkpoint ``<out_dir>/finetune/final`` is reused.

Besides the registry names, ``peft:PATH`` evaluates a PEFT LoRA folder (instruction in context) and
``ckpt:PATH`` a hypernetwork checkpoint (with fusion).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tagi.backbones.base import PromptMode
from tagi.config import ConfigError, ExperimentConfig, apply_overrides, from_dict, to_dict
from tagi.data.prompts import format_instruction
from tagi.data.sni import Task

AdapterSource = Literal["none", "multitask", "hypernet", "oracle", "fixed"]
InstructionVariant = Literal["true", "other", "empty"]
Answer = Literal["model", "first-demo", "majority-demo"]


@dataclass(frozen=True)
class MethodSpec:
    """One evaluated method (see the module docstring for the meaning of each field)."""

    name: str
    summary: str
    adapter: AdapterSource
    mode: PromptMode | None = "concat"
    instruction: InstructionVariant = "true"
    hyper_input: Literal["instruction", "empty"] = "instruction"
    train_overrides: tuple[str, ...] = ()
    zero_shot: bool = True
    path: str = ""
    answer: Answer = "model"

    @property
    def variant(self) -> str:
        """Name of the training variant ("" = the main run's finetuning)."""
        return self.name if self.train_overrides else ""

    def describe(self) -> dict:
        return {
            "summary": self.summary,
            "adapter": self.adapter,
            "mode": self.mode or "fuse if the variant uses fusion, else none",
            "instruction": self.instruction,
            "hyper_input": self.hyper_input,
            "train_overrides": list(self.train_overrides),
            "zero_shot": self.zero_shot,
            **({"answer": self.answer} if self.answer != "model" else {}),
            **({"path": self.path} if self.path else {}),
        }


_CE_ONLY = ("finetune.loss.kl=0", "finetune.loss.align=0")
NO_HYPERNET = ("finetune.hyper_input=empty", "finetune.loss.mismatch=0")
"""Finetuning switches of the "without hypernetwork" ablation: the hypernetwork reads one empty text, and
the mismatch term is off (one learned adapter has no other task's adapter to be compared with)."""

_SPECS = (
    MethodSpec(
        "copy-demo",
        "no model: every instance answered with the first positive example's output",
        "none",
        answer="first-demo",
    ),
    MethodSpec(
        "majority",
        "no model: the most frequent output among the task's positive examples",
        "none",
        answer="majority-demo",
    ),
    MethodSpec("no-finetune", "frozen base model, instruction in context", "none"),
    MethodSpec(
        "multitask-lora",
        "one LoRA trained on all training tasks, instruction in context (Tk-Instruct-style meta-training)",
        "multitask",
    ),
    MethodSpec(
        "hint-like",
        "hypernetwork + fusion, CE loss only, pretrained",
        "hypernet",
        None,
        train_overrides=_CE_ONLY,
    ),
    MethodSpec(
        "hypter-like",
        "hypernetwork without pretraining and without fusion, CE loss only",
        "hypernet",
        None,
        train_overrides=(*_CE_ONLY, "finetune.fusion=false", "finetune.use_pretrained=false"),
    ),
    MethodSpec(
        "t2l-like",
        "Text-to-LoRA's design: a frozen sentence encoder (hyper.sentence_encoder) reads the instruction, "
        "learned layer/module embeddings + MLP heads give A and B; CE only, no pretraining; same prompt as TAGI",
        "hypernet",
        None,
        train_overrides=(*_CE_ONLY, "hyper.encoder=sentence", "finetune.use_pretrained=false"),
    ),
    MethodSpec("tagi", "TAGI: pretrained hypernetwork, fusion, CE + KL + alignment", "hypernet", None),
    MethodSpec(
        "oracle",
        "LoRA trained on the test task's own instances, instruction in context (upper bound, not zero-shot)",
        "oracle",
        zero_shot=False,
    ),
    MethodSpec(
        "tagi-no-fusion",
        "TAGI without instruction fusion",
        "hypernet",
        None,
        train_overrides=("finetune.fusion=false",),
    ),
    MethodSpec(
        "tagi-no-kl", "TAGI without the KL term", "hypernet", None, train_overrides=("finetune.loss.kl=0",)
    ),
    MethodSpec(
        "tagi-no-align",
        "TAGI without adapter alignment",
        "hypernet",
        None,
        train_overrides=("finetune.loss.align=0",),
    ),
    MethodSpec(
        "tagi-no-ce", "TAGI without the CE term", "hypernet", None, train_overrides=("finetune.loss.ce=0",)
    ),
    MethodSpec(
        "tagi-no-pretrain",
        "TAGI without hypernetwork pretraining",
        "hypernet",
        None,
        train_overrides=("finetune.use_pretrained=false",),
    ),
    MethodSpec(
        "tagi-no-hypernet",
        "TAGI losses + fusion, but the hypernetwork reads one constant empty text: a single learned adapter",
        "hypernet",
        None,
        hyper_input="empty",
        train_overrides=NO_HYPERNET,
    ),
    MethodSpec(
        "tagi-other-instruction", "TAGI given another test task's instruction", "hypernet", None, "other"
    ),
    MethodSpec("tagi-empty-instruction", "TAGI given an empty instruction", "hypernet", None, "empty"),
)
METHODS: dict[str, MethodSpec] = {s.name: s for s in _SPECS}
"""The registry, in report order."""


def resolve_methods(names: Sequence[str]) -> list[MethodSpec]:
    """Specs for the names (empty = every registered method); ``peft:PATH`` / ``ckpt:PATH`` are accepted."""
    if not names:
        return list(METHODS.values())
    specs = []
    for name in names:
        if name in METHODS:
            specs.append(METHODS[name])
        elif name.startswith("peft:") and name[5:]:
            specs.append(
                MethodSpec(name, "given PEFT LoRA folder, instruction in context", "fixed", path=name[5:])
            )
        elif name.startswith("ckpt:") and name[5:]:
            summary = "given hypernetwork checkpoint, with fusion"
            specs.append(MethodSpec(name, summary, "hypernet", "fuse", path=name[5:]))
        else:
            known = ", ".join([*METHODS, "peft:PATH", "ckpt:PATH"])
            raise ConfigError(f"unknown method '{name}' in evaluate.methods (known: {known})")
    return specs


def variant_config(cfg: ExperimentConfig, spec: MethodSpec) -> ExperimentConfig:
    """The experiment config of the spec's training variant (the main config plus its overrides).

    Raises :class:`ConfigError` when the overrides do not apply to this config (e.g. "without CE" when CE
    is the only loss term, or a finetuning switch this version does not have).
    """
    if not spec.train_overrides:
        return cfg
    data = apply_overrides(to_dict(cfg), list(spec.train_overrides))
    return from_dict(ExperimentConfig, data)


def prompt_mode(spec: MethodSpec, variant: ExperimentConfig) -> PromptMode:
    if spec.mode is not None:
        return spec.mode
    return "fuse" if variant.finetune.fusion else "none"


def setting_name(num_pos: int) -> str:
    """``0 -> "Def"``, ``2 -> "Def+2Pos"`` (SNI naming)."""
    return "Def" if num_pos == 0 else f"Def+{num_pos}Pos"


def other_task_map(names: Sequence[str], seed: int) -> dict[str, str]:
    """A seeded derangement of the task names: every task is mapped to a *different* task.

    The names are shuffled with ``random.Random(seed)`` and each is mapped to its successor on that
    cycle, so the map is deterministic for a seed and never maps a task to itself (needs >= 2 tasks).
    """
    order = sorted(set(names))
    if len(order) < 2:
        raise ConfigError("the 'other task's instruction' variant needs at least 2 test tasks")
    random.Random(f"other-instruction/{seed}").shuffle(order)
    return {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}


def instructions_for(
    spec: MethodSpec, task: Task, num_pos: int, tasks: dict[str, Task], other: dict[str, str] | None
) -> tuple[str, str]:
    """``(prompt instruction, hypernetwork instruction)`` of a task under the spec's instruction variant."""
    if spec.instruction == "empty":
        prompt = ""
    elif spec.instruction == "other":
        if other is None:
            raise ConfigError(f"method {spec.name} needs an other-task map")
        prompt = format_instruction(tasks[other[task.name]], num_pos)
    else:
        prompt = format_instruction(task, num_pos)
    return prompt, ("" if spec.hyper_input == "empty" else prompt)
