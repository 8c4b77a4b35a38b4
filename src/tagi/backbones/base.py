"""The backbone interface shared by encoder-decoder (T5) and decoder-only (Llama-family) models.

A backbone wraps a frozen Hugging Face model and its tokenizer and knows:

- its **target modules** (:class:`Target`: full path, kind, layer, in/out features) — grouped-query
  attention makes ``v_proj`` narrower than ``q_proj``, so shapes are per module;
- how to **encode an instruction** once with the frozen base (``encode_instruction``: token states and
  padding mask, read by the hypernetwork; no adapter is ever active there);
- how to turn :class:`PromptExample` s into a :class:`ModelBatch` (``collate``) under one of three prompt modes:

  ``concat``  instruction and input in one prompt (in-context baselines, teachers, multi-task LoRA);
  ``fuse``    TAGI's instruction fusion: T5 encodes the instruction separately and the decoder attends
              over ``[instruction ; input]`` (FiD); decoder-only models put the instruction in a prompt
              prefix (identical tokens to ``concat``; at generation its key/value cache is computed once
              per task with the adapter active and reused for every instance);
  ``none``    the input alone (the "without fusion" ablation; the adapter must carry the task).

- ``forward(batch, adapter)``: logits at the label positions only, flat ``[M, V]``, with the labels
  ``[M]`` and the example index of each token ``[M]`` — the loss functions never see padding;
- ``generate(...)``: greedy (or sampled) decoding.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import nn

from tagi.config import ConfigError, ModelConfig
from tagi.examples import PromptExample
from tagi.lora import LoraWeights

log = logging.getLogger("tagi.backbones")
PromptMode = Literal["concat", "fuse", "none"]
IGNORE = -100


@dataclass(frozen=True)
class Target:
    """One linear layer that receives a LoRA."""

    name: str  # full module path, e.g. "model.layers.3.self_attn.v_proj"
    kind: str  # role shared by all layers, e.g. "v_proj" or "dec_cross_q" (no dots)
    layer: int
    in_features: int
    out_features: int


@dataclass
class ModelBatch:
    """Token tensors for one batch (all ``long``; masks 0/1).

    Decoder-only: ``input_ids/attention_mask [N, T]`` hold prompt + target (right-padded), ``labels [N, T]``
    is the target at its positions and ``-100`` elsewhere (unshifted). With a shared prefix
    (``collate(..., share_prefix=True)``) the distinct prompt prefixes are stored once, ``prefix_ids /
    prefix_mask [U, P]`` (right-padded), ``prefix_rows [N]`` says which one each example continues, and
    ``input_ids / attention_mask / labels [N, T']`` hold only the rest of the sequence. T5: ``input_ids
    [N, S]`` is the encoder input, ``labels [N, L]`` the decoder targets, ``fuse_ids/fuse_mask [N, Ti]`` the
    instruction encoded separately for FiD fusion (``None`` unless mode ``fuse``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    fuse_ids: torch.Tensor | None = None
    fuse_mask: torch.Tensor | None = None
    prefix_ids: torch.Tensor | None = None
    prefix_mask: torch.Tensor | None = None
    prefix_rows: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def to(self, device: torch.device | str) -> ModelBatch:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v.to(device)
        return ModelBatch(**kw)

    @property
    def num_label_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    @property
    def fused(self) -> bool:
        """True when the instructions are encoded separately for fusion (T5 FiD, mode ``fuse``)."""
        return self.fuse_ids is not None


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists: ``(ids [N, T], mask [N, T])``."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists: ``(ids [N, T], mask [N, T])``."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
            mask[i, : len(s)] = 1
    return ids, mask


class Backbone(ABC):
    """A frozen base model behind one interface (see the module docstring)."""

    family: str = ""
    KINDS: tuple[str, ...] = ()  # the target module kinds a config may name

    def __init__(self, model: nn.Module, tokenizer, cfg: ModelConfig, source: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.source = source  # what was loaded: hub id, folder, gguf path or builtin name
        model.requires_grad_(False)
        model.eval()
        self.targets: tuple[Target, ...] = tuple(
            self._find_targets(cfg.target_modules or self.default_kinds())
        )
        if not self.targets:
            raise ValueError(f"no target modules found for {cfg.target_modules}")
        self._check_context(getattr(model.config, "max_position_embeddings", None))

    def _check_context(self, positions: int | None) -> None:
        """Refuse token limits the model cannot attend to: instruction + input + target share one sequence
        in a decoder-only model (models with relative positions, e.g. T5, have no hard limit)."""
        c = self.cfg
        total = c.max_instruction_tokens + c.max_input_tokens + c.max_target_tokens
        if self.family == "causal" and positions and total > positions:
            raise ConfigError(
                f"model.max_instruction_tokens + max_input_tokens + max_target_tokens = {total} exceeds the "
                f"context of {c.name} ({positions} positions)"
            )

    # ---- structure
    @abstractmethod
    def default_kinds(self) -> list[str]:
        """Target kinds used when the config names none."""

    def _find_targets(self, kinds: list[str]) -> list[Target]:
        """Enumerate target modules for the requested kinds (raise ValueError for an unknown kind)."""
        unknown = set(kinds) - set(self.KINDS)
        if unknown:
            raise ValueError(
                f"unknown target module kind {sorted(unknown)[0]!r} (known: {', '.join(self.KINDS)})"
            )
        out = []
        for name, mod in self.model.named_modules():
            found = self._match_target(name) if isinstance(mod, nn.Linear) else None
            if found is not None and found[0] in kinds:
                out.append(Target(name, found[1], found[2], mod.in_features, mod.out_features))
        return self._order_targets(out, kinds)

    @abstractmethod
    def _match_target(self, name: str) -> tuple[str, str, int] | None:
        """``(kind as configured, Target.kind, layer)`` when the linear layer ``name`` can take a LoRA."""

    def _order_targets(self, targets: list[Target], kinds: list[str]) -> list[Target]:
        """The order the hypernetwork generates targets in (default: module order)."""
        return targets

    @property
    @abstractmethod
    def hidden_size(self) -> int:
        """Width of the instruction states read by the hypernetwork."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_instruction_tokens(self) -> int:
        return self.cfg.max_instruction_tokens

    @property
    def instruction_limit(self) -> int:
        """Instruction tokens kept: ``model.max_instruction_tokens`` (T5 keeps one of them for its eos)."""
        return self.cfg.max_instruction_tokens

    def output_tokens(self, text: str) -> int:
        """Number of tokens the model generates to write ``text`` (no special tokens, no EOS)."""
        return len(self._tok(text))

    # ---- text -> ids: the one place instructions are cut to the limit
    def _tok(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _truncate_instruction(self, ids: list[int], note: str = "") -> list[int]:
        """The first :attr:`instruction_limit` tokens, with a warning when that cuts any."""
        if len(ids) <= self.instruction_limit:
            return ids
        limit = self.cfg.max_instruction_tokens
        log.warning(
            "instruction of %d tokens truncated to model.max_instruction_tokens=%d%s", len(ids), limit, note
        )
        return ids[: self.instruction_limit]

    def fit_instruction(self, text: str) -> tuple[str, bool]:
        """``(text, truncated)``: the instruction cut to the limit as text (an adapter stores what it read)."""
        ids = self._tok(text)
        kept = self._truncate_instruction(ids, "; the adapter stores the truncated text")
        if len(kept) == len(ids):
            return text, False
        return self.tokenizer.decode(kept, skip_special_tokens=True), True

    @abstractmethod
    def instruction_ids(self, instruction: str) -> list[int]:
        """Tokens of an instruction as read by the hypernetwork (truncated to the limit, never empty)."""

    @abstractmethod
    def prompt_ids(self, instruction: str, source: str, mode: PromptMode) -> list[int]:
        """The exact token ids of one prompt (decoder-only: prefix + suffix; T5: the encoder input)."""

    @abstractmethod
    def prompt_layout(self) -> dict[str, Any]:
        """How prompts are laid out: ``{"chat_template", "head", "source_template", "tail", "layout"}``
        (recorded in an adapter's ``tagi.json`` so PEFT / vLLM users can build the same prompt)."""

    def collate_instructions(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [N, T], mask [N, T])`` of instructions for :meth:`encode_instruction`."""
        return pad_right([self.instruction_ids(t) for t in instructions], self.pad_id)

    @property
    def pad_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return int(pid if pid is not None else self.tokenizer.eos_token_id)

    @abstractmethod
    def collate(
        self,
        examples: Sequence[PromptExample],
        mode: PromptMode,
        add_eos: bool = True,
        share_prefix: bool = False,
    ) -> ModelBatch:
        """Tokenise examples into a :class:`ModelBatch` under a prompt mode.

        ``share_prefix``: decoder-only models store each distinct prompt prefix (chat head + instruction)
        once, and ``forward`` runs it once and reuses its key/value cache for every example that continues
        it — same logits, less compute when a batch holds several examples of one task. Encoder-decoder
        models ignore it: their fused instruction encoding is already computed once per task.
        """

    # ---- compute
    @abstractmethod
    def encode_instruction(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Frozen-base token states of the instructions, ``[N, T, H]`` (no adapter, no gradient)."""

    @abstractmethod
    def forward(
        self,
        batch: ModelBatch,
        adapter: LoraWeights | None = None,
        fuse_states: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits at label positions ``[M, V]``, labels ``[M]``, example index ``[M]``.

        ``adapter`` holds one adapter per example (or one for all). For a fused batch (``batch.fused``,
        T5 FiD) ``fuse_states`` may pass precomputed instruction encodings ``(states [N, Ti, H], mask [N,
        Ti])``; they are computed from ``batch.fuse_ids`` otherwise. Decoder-only models ignore it.
        """

    @abstractmethod
    def generate(
        self,
        examples: Sequence[PromptExample],
        adapter: LoraWeights | None = None,
        mode: PromptMode = "concat",
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        adapter_rows: Sequence[int] | None = None,
    ) -> list[str]:
        """Decode outputs for examples (greedy when ``temperature == 0``).

        ``adapter``: one adapter for every example (batch 1), one per example (batch N), or ``U`` distinct
        adapters with ``adapter_rows[i]`` the one example ``i`` uses."""

    def sequence_nll(self, batch: ModelBatch, adapter: LoraWeights | None = None) -> torch.Tensor:
        """Token-averaged negative log-likelihood of each example's target, ``[N]`` (rank classification)."""
        logits, labels, rows = self.forward(batch, adapter)
        nll = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")  # [M]
        n = batch.input_ids.shape[0]
        total = torch.zeros(n, device=nll.device).index_add_(0, rows, nll)
        count = torch.zeros(n, device=nll.device).index_add_(0, rows, torch.ones_like(nll))
        return total / count.clamp_min(1)


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Next tokens from last-position logits ``[N, V]``: argmax at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)


def row_adapters(
    adapter: LoraWeights | None, adapter_rows: Sequence[int] | None, n: int
) -> tuple[LoraWeights | None, list[Any]]:
    """``(adapter for the decode loop, each row's adapter group)``: batch 1 stays shared (every row in group
    0); ``U`` distinct adapters with ``adapter_rows`` are gathered to one row each, rows with the same
    distinct adapter in the same group; ``N`` per-row adapters are each their own group."""
    if adapter is None:
        return None, [0] * n
    if adapter_rows is not None:
        if len(adapter_rows) != n:
            raise ValueError(f"adapter_rows has {len(adapter_rows)} entries for {n} examples")
        if adapter.batch_size == 1:
            return adapter, [0] * n
        return adapter.index(list(adapter_rows)), list(adapter_rows)
    if adapter.batch_size == 1:
        return adapter, [0] * n
    if adapter.batch_size != n:
        raise ValueError(f"an adapter batch of {adapter.batch_size} for {n} examples")
    return adapter, list(range(n))
