"""LoRA adapters as standard PEFT folders (``adapter_config.json`` + ``adapter_model.safetensors``).

Teachers, baselines and generated adapters are all saved this way, so ``PeftModel.from_pretrained(base,
folder)`` loads any of them. The safetensors file holds only ``lora_A`` / ``lora_B`` tensors under PEFT's
key names (``base_model.model.<module>.lora_A.weight``); tagi's own metadata (instruction, fusion, prompt
template, provenance) goes to a separate ``tagi.json`` that PEFT ignores.

Folders are written atomically (temporary folder, then rename) and an existing folder is only replaced
with ``overwrite=True``.

**Generated adapter folder** (:class:`Adapter`, ``Adapter.save``)::

    adapter_config.json, adapter_model.safetensors   standard PEFT LoRA (lora_A / lora_B tensors only)
    tagi.json   {"format", "instruction", "fuse", "mode", "requires_tagi_runtime", "family",
                 "model": ModelConfig, "checkpoint_sha256", "instruction_truncated",
                 "prompt": {"chat_template", "head", "source_template", "tail", "layout"}}

Every check of the format lives here: the folder's files, the ``tagi.json`` format version, one rank for
every module, and whether an adapter fits a loaded base model (:meth:`Adapter.check_fits`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import load_file, save_file

from tagi.backbones import EMBEDDED, EMBEDDED_HUB_ID
from tagi.backbones.base import PromptMode
from tagi.data.prompts import format_source
from tagi.files import atomic_dir, read_config_json
from tagi.lora import (
    AdapterError,
    LoraWeights,
    check_fits,
    from_peft_state_dict,
    peft_target_modules,
    to_peft_state_dict,
)

if TYPE_CHECKING:
    from tagi.backbones import Backbone
    from tagi.config import ModelConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TAGI_META = "tagi.json"
META_FORMAT = 1


def save_adapter(
    weights: LoraWeights,
    out_dir: str | Path,
    base_model: str,
    family: str,
    meta: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one adapter (batch size 1) as a PEFT LoRA folder; returns the folder.

    ``family`` is ``"causal"`` or ``"seq2seq"`` (PEFT ``task_type`` CAUSAL_LM / SEQ_2_SEQ_LM).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise AdapterError(f"output folder exists: {out} (pass overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise AdapterError(f"output path is a file, not a folder: {out}")
    rank = weights.rank
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM" if family == "seq2seq" else "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": weights.scaling * rank,
        "lora_dropout": 0.0,
        "target_modules": peft_target_modules(weights.names),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    with atomic_dir(out) as tmp:
        save_file(to_peft_state_dict(weights), tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        if meta is not None:
            (tmp / TAGI_META).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    return out


def read_adapter_config(folder: str | Path) -> dict:
    path = Path(folder)
    cfg = read_config_json(path, ADAPTER_CONFIG, ADAPTER_WEIGHTS, "PEFT LoRA folder", AdapterError)
    if cfg.get("peft_type") != "LORA":
        raise AdapterError(f"{path} holds a {cfg.get('peft_type')} adapter; only LORA is supported")
    return cfg


def load_adapter(folder: str | Path) -> tuple[LoraWeights, dict, dict]:
    """``(weights [1], adapter_config, tagi_meta)`` of a PEFT LoRA folder (tagi's or any PEFT LoRA)."""
    path = Path(folder)
    cfg = read_adapter_config(path)
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scaling = alpha / r**0.5 if cfg.get("use_rslora") else alpha / r
    try:
        state = load_file(path / ADAPTER_WEIGHTS)
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise AdapterError(f"cannot read {path / ADAPTER_WEIGHTS}: {str(e).splitlines()[0]}") from None
    weights = from_peft_state_dict(state, scaling)
    if weights.rank != r:
        raise AdapterError(f"{path}: adapter_config says r={r} but the tensors have rank {weights.rank}")
    meta_path = path / TAGI_META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return weights, cfg, meta


def check_out_dir(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse (before any work) an existing output unless ``overwrite`` and it is an adapter folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AdapterError(f"output path is a file, not a folder: {out}")
    if out.exists() and not overwrite:
        raise AdapterError(f"output folder exists: {out} (pass --overwrite to replace it)")
    if out.exists() and any(out.iterdir()) and not (out / ADAPTER_CONFIG).is_file():
        raise AdapterError(f"refusing to replace {out}: it is not an adapter folder")


def peft_base_name(cfg: ModelConfig) -> str:
    """``base_model_name_or_path`` for PEFT: the hub id of the embedded model, else the configured name."""
    return EMBEDDED_HUB_ID if cfg.name == EMBEDDED else cfg.name


@dataclass
class Adapter:
    """One generated adapter and everything needed to run it.

    ``weights`` holds a single adapter (batch 1; ``A[name]: [1, r, in]``, ``B[name]: [1, out, r]``).
    ``instruction`` is the exact text fused at inference (decoder-only: the prompt-prefix content);
    ``model`` is the base's tagi ``ModelConfig`` as a dict (enough to reload the base model);
    ``base_model`` is PEFT's ``base_model_name_or_path``; ``prompt`` describes the prompt layout
    (``Backbone.prompt_layout()``).
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
        text is tokenised at once; for bit-exact parity pass the ids of :meth:`tagi.Tagi.prompt_ids`.
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
        return cls(
            weights=weights,
            instruction=str(meta.get("instruction", "")),
            fuse=bool(meta.get("fuse", False)),
            family=family,
            model=meta.get("model") or {"name": EMBEDDED if base == EMBEDDED_HUB_ID else base},
            base_model=base,
            checkpoint_sha256=meta.get("checkpoint_sha256"),
            instruction_truncated=bool(meta.get("instruction_truncated")),
            prompt=meta.get("prompt", {}),
        )

    def check_fits(self, backbone: Backbone) -> None:
        """Raise :class:`AdapterError` if the adapter was made for another base model or does not fit it."""
        cfg = backbone.cfg
        mine = {cfg.name, peft_base_name(cfg)}
        theirs = {self.base_model, self.model.get("name")} - {None, ""}
        if theirs and not (mine & {str(n).rstrip("/") for n in theirs}):
            raise AdapterError(
                f"adapter was made for base model '{self.base_model or self.model.get('name')}' "
                f"but the loaded base model is '{cfg.name}'"
            )
        if self.family != backbone.family:
            raise AdapterError(f"adapter is for a {self.family} model, the base model is {backbone.family}")
        if self.weights.batch_size != 1:
            raise AdapterError(f"an Adapter holds one adapter, got a batch of {self.weights.batch_size}")
        check_fits(backbone.model, self.weights)
