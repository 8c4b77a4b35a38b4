"""What an evaluated method runs with: its prompt mode and adapter source (:class:`Prepared`).

:func:`prepare` trains what a method needs through :class:`tagi.pipeline.Pipeline` (each stage skips when
its ``DONE.json`` exists) or loads it: nothing (prompting only), a fixed adapter folder, the multi-task
LoRA, one oracle LoRA per test task, or a hypernetwork checkpoint (the main run's or a training
variant's). :func:`adapter_specificity` measures how task-specific a hypernetwork method's adapters are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tagi.adapters import ADAPTER_WEIGHTS, load_adapter
from tagi.backbones.base import PromptMode
from tagi.config import ConfigError
from tagi.data.sni import Task
from tagi.evaluate.compare import generated_spread
from tagi.evaluate.methods import MethodSpec, instructions_for, prompt_mode, setting_name, variant_config
from tagi.files import file_sha256
from tagi.lora import LoraWeights
from tagi.model import TagiModel, read_checkpoint_config
from tagi.pipeline import Pipeline

log = logging.getLogger("tagi.evaluate")


@dataclass
class Prepared:
    """A method ready to run: its prompt mode and adapter source (or why it is unavailable)."""

    spec: MethodSpec
    mode: PromptMode = "concat"
    model: TagiModel | None = None  # hypernetwork methods
    adapter: LoraWeights | None = None  # one adapter for every task (multi-task LoRA, fixed)
    per_task: dict[str, LoraWeights] = field(default_factory=dict)  # oracle
    info: dict[str, Any] = field(default_factory=dict)
    unavailable: str = ""
    identity: str = ""  # checksum(s) of the weights: part of the cache fingerprint

    def adapter_for(self, task: str, hyper_instruction: str) -> tuple[LoraWeights | None, float]:
        """The task's adapter and the seconds it took to generate (0 unless a hypernetwork ran)."""
        if self.model is None:
            return self.per_task.get(task, self.adapter), 0.0
        start = time.perf_counter()
        with torch.no_grad():
            weights = self.model.adapters([hyper_instruction])  # [1]: encode once + one hypernet call
        return weights, time.perf_counter() - start


def prepare(spec: MethodSpec, pipe: Pipeline, tasks: list[Task]) -> Prepared:
    """Train or load what ``spec`` needs; a variant whose config cannot be built is marked unavailable."""
    mode = spec.mode or "concat"
    if spec.adapter == "none":
        return Prepared(spec, mode)
    if spec.adapter == "fixed":
        weights, _, _ = load_adapter(spec.path)
        sha = file_sha256(Path(spec.path) / ADAPTER_WEIGHTS)
        return Prepared(spec, mode, adapter=weights, info={"path": spec.path}, identity=sha)
    if spec.adapter == "multitask":
        weights, sha, info = pipe.multitask()
        return Prepared(spec, mode, adapter=weights, info=info, identity=sha)
    if spec.adapter == "oracle":
        per_task, sha, info = pipe.oracles(tasks)
        return Prepared(spec, mode, per_task=per_task, info=info, identity=sha)
    try:
        variant = variant_config(pipe.cfg, spec)
    except ConfigError as e:
        reason = f"its training variant ({', '.join(spec.train_overrides)}) does not apply: {e}"
        log.warning("method %s is unavailable: %s", spec.name, reason)
        return Prepared(spec, unavailable=reason)
    ckpt = Path(spec.path) if spec.path else pipe.checkpoint(spec.variant, variant)
    model = TagiModel.load(ckpt, backbone=pipe.backbone)
    model.eval()
    sha = str(read_checkpoint_config(ckpt).get("sha256", ""))
    return Prepared(
        spec, prompt_mode(spec, variant), model=model, info={"checkpoint": str(ckpt)}, identity=sha
    )


@torch.no_grad()
def adapter_specificity(prep: Prepared, tasks: list[Task], num_pos: int, batch: int = 8) -> dict:
    """How task-specific a hypernetwork method's adapters are over the test instructions.

    One adapter per test task from its instruction (``num_pos`` demonstrations, what the method's
    hypernetwork reads), then :func:`~tagi.evaluate.compare.adapter_spread` of their Gram matrix:
    ``task_specific_share = 1 - ||mean dW||^2 / mean ||dW||^2`` (0 = one adapter for every task) and the
    mean pairwise cosine of the updates dW.
    """
    texts = [instructions_for(prep.spec, t, num_pos, {}, None)[1] for t in tasks]
    return generated_spread(prep.model, texts, batch) | {"setting": setting_name(num_pos)}
