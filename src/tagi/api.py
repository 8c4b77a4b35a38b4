"""Using a trained hypernetwork: instruction -> LoRA adapter -> standard PEFT folder, and prediction.

Python API::

    from tagi import Adapter, Tagi

    tagi = Tagi.from_checkpoint("runs/exp/finetune/final")       # hypernet + its frozen base model
    adapter = tagi.generate_adapter("Translate the sentence to French")   # one hypernetwork call
    adapter.save("adapters/to-french")                            # PEFT LoRA folder + tagi.json
    tagi.predict(["Good morning"], adapter=adapter)               # batched, greedy by default
    with tagi.applied(adapter):                                   # the base model, adapted temporarily
        logits = tagi.backbone.model(input_ids=ids).logits

**Instruction text.** ``generate_adapter(text)`` treats ``text`` as a task *definition* and wraps it as
training did (Tk-Instruct, :func:`tagi.data.format_instruction` with no examples)::

    "Definition: " + text.strip() + ("." unless it ends in punctuation) + "\\n\\n"

``task=`` (an SNI task) uses ``format_instruction(task, pos_examples)``; ``raw=True`` uses the text
verbatim. An empty instruction is refused. An instruction longer than ``model.max_instruction_tokens``
is **truncated with a warning**, and the adapter stores the truncated text, so tagi, PEFT and vLLM all see
the same prompt.

**Fusion.** A checkpoint trained with instruction fusion (``fusion`` in its ``tagi_config.json``, default
true) makes adapters with ``fuse=True``: decoder-only models read ``head + instruction + source + tail``
(the instruction is a plain prompt prefix whose key/value cache tagi computes once per batch with the
adapter active — ``PeftModel`` / vLLM with the same prompt give the same logits); T5 cross-attends over
the separately encoded instruction (FiD), which only tagi's runtime does (``requires_tagi_runtime``).
Without fusion (mode ``none``) the prompt is the per-instance source alone.

The adapter folder format and its checks live in :mod:`tagi.adapters`; the ``tagi generate`` /
``tagi predict`` commands in :mod:`tagi.commands.generate`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from tagi.adapters import Adapter, peft_base_name
from tagi.backbones import Backbone, PromptExample, load_backbone
from tagi.config import Dtype, ModelConfig, from_dict, to_dict
from tagi.data import Task, format_instruction, format_source
from tagi.errors import TagiError
from tagi.files import file_sha256
from tagi.lora import apply_lora, merged
from tagi.model import CheckpointError, TagiModel, read_checkpoint_config

__all__ = ["Adapter", "GenerateError", "Tagi", "definition_instruction"]

log = logging.getLogger("tagi.generate")


class GenerateError(TagiError, ValueError):
    """Bad input to adapter generation or prediction (empty instruction, bad input file, bad option)."""


def definition_instruction(text: str) -> str:
    """A user's task definition in the training format: ``"Definition: {text}.\\n\\n"``."""
    return format_instruction(Task(name="user", definition=text, positive_examples=(), instances=()), 0)


class Tagi:
    """A frozen base model with (optionally) a trained hypernetwork: make adapters and run them.

    Built with :meth:`from_checkpoint` (hypernetwork + base) or :meth:`for_adapter` (base model only,
    to run saved adapters).
    """

    def __init__(
        self,
        backbone: Backbone,
        model: TagiModel | None = None,
        checkpoint_sha256: str | None = None,
        fusion: bool = True,
    ) -> None:
        self.backbone = backbone
        self.model = model
        self.checkpoint_sha256 = checkpoint_sha256
        self.fusion = fusion

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "cpu",
        backbone: Backbone | None = None,
        dtype: Dtype | None = None,
    ) -> Tagi:
        """Load a hypernetwork checkpoint folder (and its base model unless ``backbone`` is given).

        ``dtype`` (``"float32"``, ``"bfloat16"``, ``"float16"``) runs the base model in that dtype instead
        of the checkpoint's ``model.dtype``; adapters made then record it, so ``tagi predict --adapter``
        reloads the base model as they were made.
        """
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        if not path.is_dir():
            raise CheckpointError(
                f"checkpoint must be a folder (hypernet.safetensors + tagi_config.json): {path}"
            )
        if (path / "finetune" / "final").is_dir() and not (path / "tagi_config.json").exists():
            raise CheckpointError(f"{path} is a run folder; pass its checkpoint, e.g. {path}/finetune/final")
        cfg = read_checkpoint_config(path)
        if backbone is not None and dtype is not None and backbone.cfg.dtype != dtype:
            raise CheckpointError(f"dtype={dtype} but the given base model is loaded as {backbone.cfg.dtype}")
        model = TagiModel.load(path, backbone=backbone, device=device, dtype=dtype)
        sha = cfg.get("sha256") or file_sha256(path / "hypernet.safetensors")
        return cls(model.bb, model, checkpoint_sha256=sha, fusion=bool(cfg.get("fusion", True)))

    @classmethod
    def for_adapter(cls, adapter: Adapter, device: str = "cpu", dtype: Dtype | None = None) -> Tagi:
        """The base model an adapter was made for (no hypernetwork: runs adapters, cannot make them), in
        the dtype the adapter records unless ``dtype`` is given."""
        model = adapter.model | ({"dtype": dtype} if dtype else {})
        return cls(load_backbone(from_dict(ModelConfig, model), device=device))

    # ---- adapters
    def instruction_text(
        self,
        instruction: str | None = None,
        task: Task | None = None,
        pos_examples: int = 0,
        raw: bool = False,
    ) -> str:
        """The instruction as the hypernetwork reads it (see the module docstring); refuses empty text."""
        if (instruction is None) == (task is None):
            raise GenerateError("give exactly one of an instruction text or a task")
        if task is not None:
            if not task.definition.strip():
                raise GenerateError(f"task '{task.name}' has an empty definition")
            return format_instruction(task, pos_examples)
        if pos_examples:
            raise GenerateError("positive examples come from a task file; they need a task, not a text")
        if not instruction.strip():
            raise GenerateError("the instruction is empty")
        return instruction if raw else definition_instruction(instruction)

    def generate_adapter(
        self,
        instruction: str | None = None,
        *,
        task: Task | None = None,
        pos_examples: int = 0,
        raw: bool = False,
        fuse: bool | None = None,
    ) -> Adapter:
        """Encode the instruction with the frozen base and run the hypernetwork once -> :class:`Adapter`.

        ``fuse`` defaults to the checkpoint's training setting.
        """
        if self.model is None:
            raise GenerateError("generating adapters needs a hypernetwork checkpoint (Tagi.from_checkpoint)")
        text, truncated = self.backbone.fit_instruction(
            self.instruction_text(instruction, task, pos_examples, raw)
        )
        with torch.no_grad():
            weights = self.model.adapters([text]).detach()  # [1]
        bb = self.backbone
        return Adapter(
            weights=weights,
            instruction=text,
            fuse=self.fusion if fuse is None else fuse,
            family=bb.family,
            model=to_dict(bb.cfg),
            base_model=peft_base_name(bb.cfg),
            checkpoint_sha256=self.checkpoint_sha256,
            instruction_truncated=truncated,
            prompt=self.backbone.prompt_layout(),
        )

    def check_adapter(self, adapter: Adapter) -> None:
        """Raise :class:`~tagi.lora.AdapterError` if the adapter was made for another base model or does
        not fit it (:meth:`Adapter.check_fits`)."""
        adapter.check_fits(self.backbone)

    @contextmanager
    def applied(self, adapter: Adapter) -> Iterator[None]:
        """Run the base model with the adapter (forward hooks) inside the block; nothing is left behind."""
        self.check_adapter(adapter)
        with apply_lora(self.backbone.model, adapter.weights.to(self.backbone.device)):
            yield

    @contextmanager
    def merged(self, adapter: Adapter) -> Iterator[None]:
        """Merge ``s * B A`` into the base weights inside the block; the exact weights return on exit."""
        self.check_adapter(adapter)
        with merged(self.backbone.model, adapter.weights.to(self.backbone.device)):
            yield

    # ---- prediction
    def prompt_ids(self, adapter: Adapter, input_text: str) -> list[int]:
        """The exact token ids tagi runs for one input (decoder-only: prefix + suffix; T5: encoder ids)."""
        return self.backbone.prompt_ids(adapter.instruction, format_source(input_text), adapter.mode)

    def predict(
        self,
        inputs: Sequence[str],
        adapter: Adapter,
        batch_size: int = 16,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[str]:
        """Outputs for instance inputs (greedy unless ``temperature > 0``), ``batch_size`` at a time.

        Each batch shares the one adapter, so the fused instruction is computed once per batch (decoder-
        only: its key/value cache with the adapter active; T5: its encoding). ``seed`` makes sampling
        reproducible without touching the caller's global RNG state.
        """
        if isinstance(inputs, str):
            raise GenerateError("inputs must be a list of strings, not one string")
        if batch_size < 1 or temperature < 0 or not 0 < top_p <= 1:
            raise GenerateError(
                f"need batch_size >= 1, temperature >= 0, 0 < top_p <= 1 (got {batch_size}, {temperature}, "
                f"{top_p})"
            )
        if max_new_tokens is not None and max_new_tokens < 1:
            raise GenerateError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
        self.check_adapter(adapter)
        weights = adapter.weights.to(self.backbone.device)
        examples = [PromptExample(adapter.instruction, format_source(x), "") for x in inputs]
        outputs: list[str] = []
        with torch.random.fork_rng() if seed is not None else nullcontext():
            if seed is not None:
                torch.manual_seed(seed)
            for i in range(0, len(examples), batch_size):
                outputs += self.backbone.generate(
                    examples[i : i + batch_size], weights, adapter.mode, max_new_tokens, temperature, top_p
                )
        return outputs
