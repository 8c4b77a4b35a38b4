"""Using a trained hypernetwork: instruction -> LoRA adapter -> standard PEFT folder, and prediction.

Python API::

    from tagi import Tagi

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

**Adapter folder** (``Adapter.save``)::

    adapter_config.json, adapter_model.safetensors   standard PEFT LoRA (lora_A / lora_B tensors only)
    tagi.json   {"format", "instruction", "fuse", "mode", "requires_tagi_runtime", "family",
                 "model": ModelConfig, "checkpoint_sha256", "instruction_truncated",
                 "prompt": {"chat_template", "head", "source_template", "tail", "layout"}}
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tagi.adapters import ADAPTER_CONFIG, load_adapter, save_adapter
from tagi.backbones import EMBEDDED, Backbone, PromptExample, load_backbone
from tagi.backbones.base import PromptMode
from tagi.config import ModelConfig, from_dict, to_dict
from tagi.data import Task, format_instruction, format_source, load_task
from tagi.errors import TagiError
from tagi.files import file_sha256, jsonl_rows, write_jsonl
from tagi.lora import AdapterError, LoraWeights, apply_lora, check_fits, merged
from tagi.model import CheckpointError, TagiModel, read_checkpoint_config

__all__ = ["Adapter", "GenerateError", "Tagi", "generate_cmd", "predict_cmd"]

log = logging.getLogger("tagi.generate")
META_FORMAT = 1
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded model is, for PEFT / vLLM
# tagi.data.format_source as a template; the "." is left out when the input ends in punctuation
SOURCE_TEMPLATE = "Now complete the following example -\nInput: {input}.\nOutput: "


class GenerateError(TagiError, ValueError):
    """Bad input to adapter generation or prediction (empty instruction, bad input file, bad option)."""


def definition_instruction(text: str) -> str:
    """A user's task definition in the training format: ``"Definition: {text}.\\n\\n"``."""
    return format_instruction(Task(name="user", definition=text, positive_examples=(), instances=()), 0)


def peft_base_name(cfg: ModelConfig) -> str:
    """``base_model_name_or_path`` for PEFT: the hub id of the embedded model, else the configured name."""
    return EMBEDDED_HUB_ID if cfg.name == EMBEDDED else cfg.name


@dataclass
class Adapter:
    """One generated adapter and everything needed to run it.

    ``weights`` holds a single adapter (batch 1; ``A[name]: [1, r, in]``, ``B[name]: [1, out, r]``).
    ``instruction`` is the exact text fused at inference (decoder-only: the prompt-prefix content);
    ``model`` is the base's tagi ``ModelConfig`` as a dict (enough to reload the base model);
    ``base_model`` is PEFT's ``base_model_name_or_path``; ``prompt`` describes the prompt layout.
    """

    weights: LoraWeights
    instruction: str
    fuse: bool
    family: str
    model: dict[str, Any]
    base_model: str
    checkpoint_sha256: str | None = None
    instruction_truncated: bool = False
    prompt: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> PromptMode:
        """Prompt mode for the backbone: ``"fuse"`` or ``"none"``."""
        return "fuse" if self.fuse else "none"

    @property
    def rank(self) -> int:
        return self.weights.rank

    @property
    def requires_tagi_runtime(self) -> bool:
        """T5 fusion (FiD) is not something PEFT or vLLM do; decoder-only fusion is a plain prompt prefix."""
        return self.fuse and self.family == "seq2seq"

    def prompt_text(self, input_text: str) -> str:
        """The full prompt text for one input, as PEFT / vLLM should receive it (T5: the encoder text).

        Byte-level BPE tokenisers may split the instruction/source boundary differently when the whole
        text is tokenised at once; for bit-exact parity pass the ids of :meth:`Tagi.prompt_ids`.
        """
        ins = self.instruction if self.fuse and self.family == "causal" else ""
        return self.prompt.get("head", "") + ins + format_source(input_text) + self.prompt.get("tail", "")

    def meta(self) -> dict[str, Any]:
        return {
            "format": META_FORMAT,
            "instruction": self.instruction,
            "fuse": self.fuse,
            "mode": self.mode,
            "requires_tagi_runtime": self.requires_tagi_runtime,
            "family": self.family,
            "model": self.model,
            "checkpoint_sha256": self.checkpoint_sha256,
            "instruction_truncated": self.instruction_truncated,
            "prompt": self.prompt,
        }

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write a PEFT LoRA folder + ``tagi.json`` atomically; an existing folder needs ``overwrite``."""
        check_out_dir(out_dir, overwrite)
        return save_adapter(self.weights, out_dir, self.base_model, self.family, self.meta(), overwrite)

    @classmethod
    def load(cls, folder: str | Path) -> Adapter:
        """Read a folder written by :meth:`save` (or any PEFT LoRA folder: then no instruction, no fusion)."""
        weights, cfg, meta = load_adapter(folder)
        for name in weights.names:
            if weights.A[name].shape[1] != weights.rank:
                raise AdapterError(
                    f"{folder}: rank mismatch, module '{name}' has rank {weights.A[name].shape[1]} "
                    f"but adapter_config says r={weights.rank} (per-module ranks are not supported)"
                )
        if meta and meta.get("format") != META_FORMAT:
            raise AdapterError(f"{folder}/tagi.json has format {meta.get('format')}, expected {META_FORMAT}")
        base = str(cfg.get("base_model_name_or_path") or "")
        family = meta.get("family") or ("seq2seq" if cfg.get("task_type") == "SEQ_2_SEQ_LM" else "causal")
        model = meta.get("model") or {"name": EMBEDDED if base == EMBEDDED_HUB_ID else base}
        return cls(weights, str(meta.get("instruction", "")), bool(meta.get("fuse", False)), family, model, base,
                   meta.get("checkpoint_sha256"), bool(meta.get("instruction_truncated")), meta.get("prompt", {}))  # fmt: skip


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
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", backbone: Backbone | None = None) -> Tagi:
        """Load a hypernetwork checkpoint folder (and its base model unless ``backbone`` is given)."""
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
        model = TagiModel.load(path, backbone=backbone, device=device)
        sha = cfg.get("sha256") or file_sha256(path / "hypernet.safetensors")
        return cls(model.bb, model, checkpoint_sha256=sha, fusion=bool(cfg.get("fusion", True)))

    @classmethod
    def for_adapter(cls, adapter: Adapter, device: str = "cpu") -> Tagi:
        """The base model an adapter was made for (no hypernetwork: runs adapters, cannot make them)."""
        return cls(load_backbone(from_dict(ModelConfig, adapter.model), device=device))

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

    def _fit(self, text: str) -> tuple[str, bool]:
        """Truncate ``text`` to ``model.max_instruction_tokens`` tokens (T5 keeps one for eos), warning."""
        bb = self.backbone
        limit = bb.max_instruction_tokens - (1 if bb.family == "seq2seq" else 0)
        ids = bb.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= limit:
            return text, False
        log.warning(
            "instruction of %d tokens truncated to model.max_instruction_tokens=%d; the adapter stores the "
            "truncated text",
            len(ids),
            bb.max_instruction_tokens,
        )
        return bb.tokenizer.decode(ids[:limit], skip_special_tokens=True), True

    def prompt_info(self) -> dict[str, Any]:
        """How prompts are laid out (recorded in ``tagi.json``)."""
        bb = self.backbone
        info = {"chat_template": False, "head": "", "source_template": SOURCE_TEMPLATE, "tail": ""}
        if bb.family == "seq2seq":
            return info | {
                "layout": "encoder: source + eos; fuse: decoder attends over [instruction ; source]"
            }
        head, tail = getattr(bb, "head_ids", []), getattr(bb, "tail_ids", [])
        return info | {
            "chat_template": bool(getattr(bb, "use_chat", False)),
            "head": bb.tokenizer.decode(head) if head else "",
            "tail": bb.tokenizer.decode(tail) if tail else "",
            "layout": "head + instruction (if fused) + source + tail, each part tokenised separately",
        }

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
        text, truncated = self._fit(self.instruction_text(instruction, task, pos_examples, raw))
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
            prompt=self.prompt_info(),
        )

    def check_adapter(self, adapter: Adapter) -> None:
        """Raise :class:`AdapterError` if the adapter was made for another base model or does not fit it."""
        cfg = self.backbone.cfg
        mine = {cfg.name, peft_base_name(cfg)}
        theirs = {adapter.base_model, adapter.model.get("name")} - {None, ""}
        if theirs and not (mine & {str(n).rstrip("/") for n in theirs}):
            raise AdapterError(
                f"adapter was made for base model '{adapter.base_model or adapter.model.get('name')}' "
                f"but the loaded base model is '{cfg.name}'"
            )
        if adapter.family != self.backbone.family:
            raise AdapterError(
                f"adapter is for a {adapter.family} model, the base model is {self.backbone.family}"
            )
        if adapter.weights.batch_size != 1:
            raise AdapterError(f"an Adapter holds one adapter, got a batch of {adapter.weights.batch_size}")
        check_fits(self.backbone.model, adapter.weights)

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
        bb, src = self.backbone, format_source(input_text)
        if bb.family == "causal":
            return bb.prefix_ids(adapter.instruction, adapter.mode) + bb.suffix_ids(src)
        return bb.encoder_ids(PromptExample(adapter.instruction, src), adapter.mode)

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
            raise GenerateError(f"need batch_size >= 1, temperature >= 0, 0 < top_p <= 1 (got "
                                f"{batch_size}, {temperature}, {top_p})")  # fmt: skip
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


# -------------------------------------------------------------------------------------------- files


def check_out_dir(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse (before any work) an existing output unless ``overwrite`` and it is an adapter folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AdapterError(f"output path is a file, not a folder: {out}")
    if out.exists() and not overwrite:
        raise AdapterError(f"output folder exists: {out} (pass --overwrite to replace it)")
    if out.exists() and any(out.iterdir()) and not (out / ADAPTER_CONFIG).is_file():
        raise AdapterError(f"refusing to replace {out}: it is not an adapter folder")


def read_inputs(path: str | Path) -> list[dict[str, Any]]:
    """Rows ``{"input": ...}`` from a text file (one input per non-blank line) or ``.jsonl`` objects.

    JSONL rows need a string ``"input"``; other fields (e.g. ``"id"``) are passed through to the output.
    """
    path = Path(path)
    if not path.is_file():
        raise GenerateError(f"input file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GenerateError(f"input file is not UTF-8 text: {path}") from None
    if path.suffix != ".jsonl":
        rows = [{"input": line} for line in text.splitlines() if line.strip()]
    else:
        rows = []
        for n, row in jsonl_rows(text, path, GenerateError):
            if not isinstance(row, dict) or not isinstance(row.get("input"), str):
                raise GenerateError(f'{path}:{n}: expected an object with a string "input"')
            rows.append(row)
    if not rows:
        raise GenerateError(f"no inputs in {path}")
    return rows


# ---------------------------------------------------------------------------------------------- CLI


_FUSION = {"auto": None, "on": True, "off": False}


def _make_adapter(
    tagi: Tagi, instruction: str | None, task_file: str | None, pos_examples: int, raw: bool, fusion: str
) -> Adapter:
    task = load_task(task_file) if task_file is not None else None
    fuse = _FUSION[fusion]
    return tagi.generate_adapter(instruction, task=task, pos_examples=pos_examples, raw=raw, fuse=fuse)


def _check_fusion(fusion: str) -> None:
    if fusion not in _FUSION:
        raise GenerateError(f"--fusion must be auto, on or off (got {fusion!r})")


def generate_cmd(
    checkpoint: str,
    out: str,
    instruction: str | None = None,
    task_file: str | None = None,
    pos_examples: int = 0,
    raw: bool = False,
    fusion: str = "auto",
    overwrite: bool = False,
    device: str = "cpu",
) -> int:
    """Generate a LoRA adapter from an instruction and save it as a PEFT folder (+ tagi.json).

    Args:
        checkpoint: hypernetwork checkpoint folder (hypernet.safetensors + tagi_config.json).
        out: output folder (adapter_config.json, adapter_model.safetensors, tagi.json).
        instruction: task definition text; wrapped as "Definition: TEXT.\\n\\n" like training.
        task_file: SNI task JSON whose Definition (and positive examples) form the instruction.
        pos_examples: positive examples from --task-file to include (0 = Def, 2 = Def+2Pos).
        raw: use --instruction verbatim (already in Tk-Instruct format).
        fusion: fuse the instruction at inference: auto (as the checkpoint was trained), on or off.
        overwrite: replace an existing adapter folder.
        device: torch device.
    """
    if (instruction is None) == (task_file is None):
        raise GenerateError("give exactly one of --instruction or --task-file")
    _check_fusion(fusion)
    check_out_dir(out, overwrite)  # fail before loading anything
    tagi = Tagi.from_checkpoint(checkpoint, device=device)
    adapter = _make_adapter(tagi, instruction, task_file, pos_examples, raw, fusion)
    folder = adapter.save(out, overwrite=overwrite)
    log.info(
        "adapter (rank %d, %s, mode %s) written to %s", adapter.rank, adapter.base_model, adapter.mode, folder
    )
    print(folder)
    return 0


def predict_cmd(
    checkpoint: str | None = None,
    instruction: str | None = None,
    task_file: str | None = None,
    pos_examples: int = 0,
    raw: bool = False,
    fusion: str = "auto",
    adapter: str | None = None,
    input: list[str] | None = None,  # noqa: A002 - the flag is --input
    input_file: str | None = None,
    output: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    device: str = "cpu",
) -> int:
    """Run a generated adapter on inputs; prints JSONL rows {"input", "output"} (or writes --output).

    Args:
        checkpoint: hypernetwork checkpoint folder; with --instruction/--task-file generates the adapter.
        instruction: task definition text (with --checkpoint); wrapped as "Definition: TEXT.\\n\\n".
        task_file: SNI task JSON giving the instruction (with --checkpoint).
        pos_examples: positive examples from --task-file to include.
        raw: use --instruction verbatim (already in Tk-Instruct format).
        fusion: with --checkpoint: fuse the instruction: auto (as the checkpoint was trained), on or off.
        adapter: saved adapter folder (from 'tagi generate'); its base model is loaded unless --checkpoint.
        input: one or more input texts.
        input_file: inputs, one per line, or a .jsonl file of {"input": ...} objects (other fields kept).
        output: JSONL file to write (atomically) instead of printing to stdout.
        batch_size: inputs per generation batch (the instruction prefix is computed once per batch).
        max_new_tokens: generation length limit (default: model.max_target_tokens).
        temperature: 0 = greedy; > 0 samples.
        top_p: nucleus sampling threshold (with --temperature > 0).
        seed: random seed for sampling.
        device: torch device.
    """
    _check_fusion(fusion)
    if (input is None) == (input_file is None):
        raise GenerateError("give exactly one of --input or --input-file")
    has_ins = instruction is not None or task_file is not None
    if adapter is None and (checkpoint is None or not has_ins):
        raise GenerateError("give --adapter DIR, or --checkpoint with --instruction or --task-file")
    if adapter is not None and (has_ins or fusion != "auto"):
        raise GenerateError(
            "--adapter records its own instruction and fusion; drop --instruction/--task-file/--fusion"
        )
    if output is not None and Path(output).is_dir():
        raise GenerateError(f"output path is a folder, not a file: {output}")
    rows = [{"input": x} for x in input] if input is not None else read_inputs(input_file)
    if not rows:
        raise GenerateError("--input needs at least one text")
    saved = Adapter.load(adapter) if adapter is not None else None
    if checkpoint is not None:
        tagi = Tagi.from_checkpoint(checkpoint, device=device)
    else:
        tagi = Tagi.for_adapter(saved, device=device)
    ad = (
        saved if saved is not None else _make_adapter(tagi, instruction, task_file, pos_examples, raw, fusion)
    )
    outs = tagi.predict([r["input"] for r in rows], ad, batch_size, max_new_tokens, temperature, top_p, seed)
    results = [r | {"output": o} for r, o in zip(rows, outs, strict=True)]
    if output is not None:
        log.info("%d outputs written to %s", len(results), write_jsonl(output, results))
    else:
        sys.stdout.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    return 0
