"""Stage 0: ordinary LoRA adapters trained on task instances with the instruction in context (teachers).

One adapter per task category (the paper) or per task (``teachers.group_by``). Each is trained by the
shared loop on its group's examples — prompt mode ``concat``: Definition + ``teachers.num_pos`` positive
examples, then the instance input — with the token-normalised cross-entropy of the reference output, and
saved as a standard PEFT LoRA folder. ``<teachers>/index.json`` maps tasks and groups to folders::

    {"group_by": "category", "tasks": {task: group}, "groups": {group: folder}, "num_pos": 2}

:func:`train_lora_adapter` is the generic "train one LoRA on these examples" used for the teachers and
for the multi-task LoRA and oracle baselines.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from tagi.adapters import load_adapter, save_adapter
from tagi.backbones import Backbone, PromptExample
from tagi.backbones.base import PromptMode, Target
from tagi.config import TrainConfig
from tagi.data.sni import Task
from tagi.errors import TagiError
from tagi.lora import LoraWeights
from tagi.losses import ce_sum
from tagi.train import dist
from tagi.train.batching import Sample
from tagi.train.common import batch_tokens, example_lengths
from tagi.train.loop import LoopResult, MicroBatch, Term, train_loop

INDEX = "index.json"


class LoraParams(nn.Module):
    """Trainable LoRA factors for every target module, initialised like PEFT.

    ``A_j [r, in]`` ~ kaiming-uniform (``U(-1/sqrt(in), 1/sqrt(in))``), ``B_j [out, r] = 0``: the adapter
    starts as the identity update ``dW = (alpha/r) B A = 0``.
    """

    def __init__(self, targets: Sequence[Target], rank: int, alpha: float, seed: int = 0) -> None:
        super().__init__()
        self.names = [t.name for t in targets]
        self.scaling = alpha / rank
        gen = torch.Generator().manual_seed(seed)
        self.A = nn.ParameterList()
        self.B = nn.ParameterList()
        for t in targets:
            bound = 1.0 / math.sqrt(t.in_features)
            self.A.append(
                nn.Parameter(torch.empty(rank, t.in_features).uniform_(-bound, bound, generator=gen))
            )
            self.B.append(nn.Parameter(torch.zeros(t.out_features, rank)))

    def weights(self) -> LoraWeights:
        """The adapter as a batch-1 :class:`LoraWeights` (shared by every example of a batch)."""
        return LoraWeights(
            {n: a.unsqueeze(0) for n, a in zip(self.names, self.A)},
            {n: b.unsqueeze(0) for n, b in zip(self.names, self.B)},
            self.scaling,
        )


class CEObjective:
    """Cross-entropy of the backbone with one adapter on text examples (teachers, baselines)."""

    def __init__(
        self,
        backbone: Backbone,
        examples: Sequence[PromptExample],
        adapter: Callable[[], LoraWeights],
        mode: PromptMode,
    ) -> None:
        self.bb, self.examples, self.adapter, self.mode = backbone, list(examples), adapter, mode

    def prepare(self, samples: Sequence[Sample]) -> MicroBatch:
        batch = self.bb.collate([self.examples[s.index] for s in samples], self.mode).to(self.bb.device)
        return MicroBatch(batch, batch.num_label_tokens, len(samples), batch_tokens(batch, self.bb.family))

    def terms(self, batch: MicroBatch) -> dict[str, Term]:
        logits, labels, _ = self.bb.forward(batch.data, self.adapter())  # [M, V], [M]
        return {"ce": Term(ce_sum(logits, labels), 1.0)}


def fit_lora(
    backbone: Backbone,
    examples: Sequence[PromptExample],
    rank: int,
    alpha: float,
    train: TrainConfig,
    out_dir: Path,
    mode: PromptMode = "concat",
    seed: int = 0,
    desc: str = "",
    *,
    state_dir: Path | None = None,
    log_path: Path | None = None,
    resume: bool = False,
    meta: dict | None = None,
) -> tuple[Path, LoopResult]:
    """:func:`train_lora_adapter`, also returning the loop's summary."""
    if not examples:
        raise TagiError(f"{desc or 'LoRA'}: no training examples")
    info = dist.current()
    lora = LoraParams(backbone.targets, rank, alpha, seed).to(backbone.device)
    objective = CEObjective(backbone, examples, lora.weights, mode)
    lengths = example_lengths(backbone, examples, instruction=mode != "none")
    result = train_loop(
        lora,
        objective,
        lengths,
        train,
        seed=seed,
        state_dir=state_dir,
        log_path=log_path,
        resume=resume,
        desc=desc or "lora",
        info=info,
    )
    out = Path(out_dir)
    if info.is_main:
        record = {"mode": mode, "num_examples": len(examples), "seed": seed, "train": result.to_dict()}
        save_adapter(
            lora.weights(), out, backbone.source, backbone.family, (meta or {}) | record, overwrite=True
        )
    dist.barrier(info)
    return out, result


def train_lora_adapter(
    backbone: Backbone,
    examples: list[PromptExample],
    rank: int,
    alpha: float,
    train: TrainConfig,
    out_dir: Path,
    mode: PromptMode = "concat",
    seed: int = 0,
    desc: str = "",
) -> Path:
    """Train one ordinary LoRA on ``examples`` (prompt ``mode``) and save it as a PEFT folder at ``out_dir``.

    The base model stays frozen; only the factors train (PEFT's init: A kaiming-uniform, B zero), with the
    shared loop's token-normalised cross-entropy. An existing folder at ``out_dir`` is replaced.
    """
    return fit_lora(backbone, examples, rank, alpha, train, Path(out_dir), mode, seed, desc)[0]


# ------------------------------------------------------------------------------------- groups and index


def group_of(task: Task, group_by: str) -> str:
    return task.category if group_by == "category" else task.name


def teacher_groups(tasks: Sequence[Task], group_by: str) -> dict[str, list[Task]]:
    """Tasks per teacher group, groups sorted by name (tasks keep their order)."""
    groups: dict[str, list[Task]] = {}
    for t in tasks:
        groups.setdefault(group_of(t, group_by), []).append(t)
    return dict(sorted(groups.items()))


def folder_names(groups: Sequence[str]) -> dict[str, str]:
    """A filesystem-safe, unique folder name per group ("Text Modification" -> "text_modification")."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for g in groups:
        base = re.sub(r"[^a-z0-9]+", "_", g.lower()).strip("_") or "group"
        name, i = base, 2
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        out[g] = name
    return out


def load_teachers(teachers_dir: str | Path) -> tuple[dict, dict[str, LoraWeights]]:
    """``(index, {group: adapter [1]})`` of a teachers folder written by stage 0."""
    root = Path(teachers_dir)
    if not (root / INDEX).is_file():
        raise TagiError(f"no teachers in {root} (missing {INDEX}); run `tagi train-teachers` first")
    index = json.loads((root / INDEX).read_text())
    adapters = {g: load_adapter(root / folder)[0] for g, folder in index["groups"].items()}
    return index, adapters
