"""LoRA adapters as standard PEFT folders (``adapter_config.json`` + ``adapter_model.safetensors``).

Teachers, baselines and generated adapters are all saved this way, so ``PeftModel.from_pretrained(base,
folder)`` loads any of them. The safetensors file holds only ``lora_A`` / ``lora_B`` tensors under PEFT's
key names (``base_model.model.<module>.lora_A.weight``); tagi's own metadata (instruction, fusion, prompt
template, provenance) goes to a separate ``tagi.json`` that PEFT ignores.

Folders are written atomically (temporary folder, then rename) and an existing folder is only replaced
with ``overwrite=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from tagi.files import atomic_dir, read_config_json
from tagi.lora import AdapterError, LoraWeights, from_peft_state_dict, peft_target_modules, to_peft_state_dict

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TAGI_META = "tagi.json"


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
