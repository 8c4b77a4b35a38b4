"""Encoder-decoder backbone: T5, T5-LM-adapt, T0, Flan-T5 (``T5ForConditionalGeneration``).

Target kinds are named by place and role: ``enc_self_q``, ``dec_self_q``, ``dec_cross_q`` (and k, v, o;
``enc_ffn_wi``, ``dec_ffn_wo``, ...). ``model.target_modules: [q, v]`` selects q and v in all three
attentions (the paper's default).

Instruction fusion (mode ``fuse``, FiD-style): the frozen encoder encodes the instruction once per task,
``I [Ti, d]`` (no adapter; the same states the hypernetwork reads), the adapted encoder encodes the
instance input ``X [S, d]``, and the decoder cross-attends over ``[I ; X]`` with the concatenated padding
mask. In mode ``concat`` the instruction and input are one encoder input (Tk-Instruct).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutput

from tagi.backbones.base import (
    IGNORE,
    Backbone,
    ModelBatch,
    PromptExample,
    PromptMode,
    pad_right,
    row_adapters,
)
from tagi.data.prompts import SOURCE_TEMPLATE
from tagi.lora import LoraWeights, apply_lora

log = logging.getLogger("tagi.backbones")
_T5_RE = re.compile(
    r"^(?P<stack>encoder|decoder)\.block\.(?P<layer>\d+)\.layer\.\d+\."
    r"(?P<part>SelfAttention|EncDecAttention|DenseReluDense)\.(?P<kind>\w+)$"
)
T5_KINDS = ("q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1")
_PART = {"SelfAttention": "self", "EncDecAttention": "cross", "DenseReluDense": "ffn"}


class T5Backbone(Backbone):
    family = "seq2seq"
    KINDS = T5_KINDS

    def default_kinds(self) -> list[str]:
        return ["q", "v"]

    def _match_target(self, name: str) -> tuple[str, str, int] | None:
        m = _T5_RE.match(name)
        return (m["kind"], f"{m['stack'][:3]}_{_PART[m['part']]}_{m['kind']}", int(m["layer"])) if m else None

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def instruction_limit(self) -> int:
        return self.cfg.max_instruction_tokens - 1  # the eos takes the last place

    # ---- text -> ids
    def instruction_ids(self, instruction: str) -> list[int]:
        return self._truncate_instruction(self._tok(instruction)) + [self.eos_id]

    def encoder_ids(self, ex: PromptExample, mode: PromptMode) -> list[int]:
        src = self._tok(ex.source)[-self.cfg.max_input_tokens :]
        ins = self._truncate_instruction(self._tok(ex.instruction)) if mode == "concat" else []
        return ins + src + [self.eos_id]

    def prompt_ids(self, instruction: str, source: str, mode: PromptMode) -> list[int]:
        return self.encoder_ids(PromptExample(instruction, source), mode)

    def prompt_layout(self) -> dict[str, Any]:
        return {
            "chat_template": False,
            "head": "",
            "source_template": SOURCE_TEMPLATE,
            "tail": "",
            "layout": "encoder: source + eos; fuse: decoder attends over [instruction ; source]",
        }

    def collate(
        self,
        examples: Sequence[PromptExample],
        mode: PromptMode,
        add_eos: bool = True,
        share_prefix: bool = False,
    ) -> ModelBatch:
        ids, mask = pad_right([self.encoder_ids(e, mode) for e in examples], self.pad_id)
        tgts = [
            self._tok(e.target)[: self.cfg.max_target_tokens] + ([self.eos_id] if add_eos else [])
            for e in examples
        ]
        labels, _ = pad_right(tgts, IGNORE)
        fuse_ids = fuse_mask = None
        if mode == "fuse":
            fuse_ids, fuse_mask = self.collate_instructions([e.instruction for e in examples])
        return ModelBatch(ids, mask, labels, fuse_ids, fuse_mask)

    # ---- compute
    @torch.no_grad()
    def encode_instruction(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # [N, Ti, d]

    def _encode(
        self, batch: ModelBatch, fused: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted encoder states of the input, with the instruction states prepended in mode fuse (FiD)."""
        enc = self.model.encoder(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).last_hidden_state
        if fused is None:
            return enc, batch.attention_mask  # [N, S, d], [N, S]
        states, fmask = fused[0], fused[1].to(batch.attention_mask)  # [N or 1, Ti, d], [N or 1, Ti]
        if states.shape[0] == 1 and enc.shape[0] > 1:  # one task's encoding shared by the batch
            states, fmask = states.expand(enc.shape[0], -1, -1), fmask.expand(enc.shape[0], -1)
        return torch.cat([states.to(enc.dtype), enc], 1), torch.cat([fmask, batch.attention_mask], 1)

    def _fuse_states(
        self, batch: ModelBatch, fuse_states: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The instruction encodings FiD attends over: the given ones, else the frozen encoder's (computed
        outside the adapter context); None for a batch that is not fused."""
        if not batch.fused:
            return None
        if fuse_states is not None:
            return fuse_states
        return self.encode_instruction(batch.fuse_ids, batch.fuse_mask), batch.fuse_mask

    def forward(self, batch, adapter=None, fuse_states=None):
        fs = self._fuse_states(batch, fuse_states)
        sel = batch.labels != IGNORE  # [N, L]
        with apply_lora(self.model, adapter):
            enc, mask = self._encode(batch, fs)  # [N, Ti+S, d]
            dec_in = self.model._shift_right(batch.labels)  # [N, L]; -100 -> pad
            hidden = self.model.decoder(
                input_ids=dec_in, encoder_hidden_states=enc, encoder_attention_mask=mask, use_cache=False
            ).last_hidden_state  # [N, L, d]
        # the vocabulary projection only at label positions (padding never costs an [*, V] row)
        hidden = hidden[sel]  # [M, d]
        if self.model.config.scale_decoder_outputs:  # T5 rescales before a tied lm_head (transformers' rule)
            hidden = hidden * self.model.model_dim**-0.5
        rows = torch.arange(sel.shape[0], device=sel.device)[:, None].expand_as(sel)[sel]
        return self.model.lm_head(hidden), batch.labels[sel], rows  # [M, V], [M], [M]

    @torch.no_grad()
    def generate(
        self,
        examples,
        adapter: LoraWeights | None = None,
        mode: PromptMode = "concat",
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        adapter_rows: Sequence[int] | None = None,
    ) -> list[str]:
        adapter, _ = row_adapters(adapter, adapter_rows, len(examples))  # [U] distinct -> one per row
        batch = self.collate(examples, mode).to(self.device)
        if batch.fuse_ids is not None and len({e.instruction for e in examples}) == 1:
            # one task: encode its instruction once and share it across the batch
            batch.fuse_ids, batch.fuse_mask = batch.fuse_ids[:1], batch.fuse_mask[:1]
        fs = self._fuse_states(batch, None)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {}
        with apply_lora(self.model, adapter):
            enc, mask = self._encode(batch, fs)
            out = self.model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=enc),
                attention_mask=mask,
                max_new_tokens=max_new_tokens or self.cfg.max_target_tokens,
                num_beams=1,
                **({"do_sample": False} | sampling),
            )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
