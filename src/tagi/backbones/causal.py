"""Decoder-only (Llama-family: SmolLM2, Llama, Qwen2, Mistral) backbone.

Prompt layout (chat models get the tokenizer's chat template around the user turn)::

    prefix  = chat_head + instruction          (mode "concat"/"fuse"; chat_head alone in mode "none")
    suffix  = source + chat_tail               (chat_tail = end of user turn + assistant header)
    target  = output tokens + eos

Prefix, suffix and target are tokenised separately and concatenated as ids, so the prefix is a token
prefix of every prompt of a task: at generation its key/value cache is computed once per task — with the
adapter active, exactly as a PEFT model with the same adapter would compute it — and repeated over the
batch. In training, ``collate(..., share_prefix=True)`` does the same for the rows of a batch that share
a prefix (task-grouped micro-batches): the prefix runs once, differentiably. The hypernetwork reads the
frozen model's hidden states over the bare instruction tokens (layer ``ModelConfig.instruction_layer``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from tagi.backbones.base import (
    IGNORE,
    Backbone,
    ModelBatch,
    PromptExample,
    PromptMode,
    Target,
    pad_right,
)
from tagi.backbones.prefix_store import KV, PrefixStore, prefix_kvs, run_prefixes, unique_prefix_cache
from tagi.backbones.running import RunningBatch
from tagi.data.prompts import SOURCE_TEMPLATE
from tagi.lora import LoraWeights, apply_lora

log = logging.getLogger("tagi.backbones")
_SENTINEL = "\x00TAGI_SENTINEL\x00"
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)$")
CAUSAL_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _dense_input(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The output head's input ``[N, k, d]`` as a dense tensor.

    transformers hands the head ``hidden[:, -1:, :]`` on a prefill (``logits_to_keep=1``), a strided view.
    With a bfloat16 or float16 weight, torch's CPU matmul does not fold such an input into one product: it
    broadcasts the whole ``[V, d]`` weight to a batched product and copies it, on every call (torch.profiler
    showed 55 ms of copy per 140-token prefill of SmolLM2's 49152 x 576 head on 2 cores). float32 takes
    another path and keeps its exact rounding: the hook is only installed for other dtypes.
    """
    return (args[0].clone(memory_format=torch.contiguous_format), *args[1:])


class CausalBackbone(Backbone):
    family = "causal"
    KINDS = CAUSAL_KINDS

    def __init__(self, model, tokenizer, cfg, source: str) -> None:
        super().__init__(model, tokenizer, cfg, source)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if cfg.chat_template == "on" and not has_template:
            raise ValueError("model.chat_template=on but the tokenizer has no chat template")
        self.use_chat = cfg.chat_template == "on" or (cfg.chat_template == "auto" and has_template)
        if self.use_chat:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
            )
            head, tail = text.split(_SENTINEL)
            self.head_ids = self._tok(head)
            self.tail_ids = self._tok(tail)
        else:
            bos = tokenizer.bos_token_id
            add_bos = bos is not None and getattr(tokenizer, "add_bos_token", True)
            self.head_ids = [bos] if add_bos else []
            self.tail_ids = []
        self.stop_ids = self._stop_ids()
        head = model.get_output_embeddings()
        if head is not None and head.weight.dtype != torch.float32:
            head.register_forward_pre_hook(_dense_input)

    # ---- structure
    def default_kinds(self) -> list[str]:
        return ["q_proj", "v_proj"]

    def _match_target(self, name: str) -> tuple[str, str, int] | None:
        m = _LAYER_RE.search(name)
        return (m[2], m[2], int(m[1])) if m else None

    def _order_targets(self, targets: list[Target], kinds: list[str]) -> list[Target]:
        return sorted(targets, key=lambda t: (t.layer, kinds.index(t.kind)))

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def _stop_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return {int(i) for i in ids if i is not None}

    # ---- text -> ids
    def instruction_ids(self, instruction: str) -> list[int]:
        ids = self._truncate_instruction(self._tok(instruction))
        return ids or [int(self.tokenizer.eos_token_id)]  # an empty instruction still has one state

    def prefix_ids(self, instruction: str, mode: PromptMode) -> list[int]:
        ins = [] if mode == "none" else self._truncate_instruction(self._tok(instruction))
        return self.head_ids + ins

    def suffix_ids(self, source: str) -> list[int]:
        return self._tok(source)[-self.cfg.max_input_tokens :] + self.tail_ids

    def prompt_ids(self, instruction: str, source: str, mode: PromptMode) -> list[int]:
        return self.prefix_ids(instruction, mode) + self.suffix_ids(source)

    def prompt_layout(self) -> dict[str, Any]:
        return {
            "chat_template": self.use_chat,
            "head": self.tokenizer.decode(self.head_ids) if self.head_ids else "",
            "source_template": SOURCE_TEMPLATE,
            "tail": self.tokenizer.decode(self.tail_ids) if self.tail_ids else "",
            "layout": "head + instruction (if fused) + source + tail, each part tokenised separately",
        }

    def target_ids(self, target: str, add_eos: bool = True) -> list[int]:
        ids = self._tok(target)[: self.cfg.max_target_tokens]
        return ids + [int(self.tokenizer.eos_token_id)] if add_eos else ids

    def collate(
        self,
        examples: Sequence[PromptExample],
        mode: PromptMode,
        add_eos: bool = True,
        share_prefix: bool = False,
    ) -> ModelBatch:
        prefixes = [self.prefix_ids(ex.instruction, mode) for ex in examples]
        rests = [self.suffix_ids(ex.source) for ex in examples]
        targets = [self.target_ids(ex.target, add_eos) for ex in examples]
        if share_prefix and all(len(p) > 1 for p in prefixes):
            return self._collate_shared(prefixes, rests, targets)
        return self._collate_rows([p + r for p, r in zip(prefixes, rests)], targets)

    def _collate_rows(self, prompts: list[list[int]], targets: list[list[int]]) -> ModelBatch:
        """Right-padded ``prompt + target`` rows with labels on the target tokens."""
        seqs = [p + t for p, t in zip(prompts, targets)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        lab = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (s, p) in enumerate(zip(seqs, prompts)):
            ids[i, : len(s)] = torch.tensor(s)
            lab[i, len(p) : len(s)] = torch.tensor(s[len(p) :])
            mask[i, : len(s)] = 1
        return ModelBatch(ids, mask, lab)

    def _collate_shared(
        self, prefixes: list[list[int]], rests: list[list[int]], targets: list[list[int]]
    ) -> ModelBatch:
        """Each distinct prefix once (``prefix_ids [U, P]``); the rows hold the rest of their sequence.

        A prefix's last token stays in the row, so every row predicts its first target token itself.
        """
        keys = [tuple(p[:-1]) for p in prefixes]
        unique = list(dict.fromkeys(keys))
        index = {k: i for i, k in enumerate(unique)}
        batch = self._collate_rows([[p[-1], *r] for p, r in zip(prefixes, rests)], targets)
        batch.prefix_ids, batch.prefix_mask = pad_right(unique, self.pad_id)
        batch.prefix_rows = torch.tensor([index[k] for k in keys], dtype=torch.long)
        return batch

    # ---- compute
    @torch.no_grad()
    def encode_instruction(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[self.cfg.instruction_layer]  # [N, T, H]

    def forward(self, batch, adapter=None, fuse_states=None):
        cache, attn, pos = None, batch.attention_mask, None
        if batch.prefix_ids is not None:
            cache, attn, pos = self._run_prefixes(batch, adapter)
        with apply_lora(self.model, adapter):
            hidden = self.model.model(
                input_ids=batch.input_ids, attention_mask=attn, position_ids=pos, cache=cache
            ).last_hidden_state  # [N, T, H]
        labels = batch.labels[:, 1:]  # token t predicts t+1
        sel = labels != IGNORE  # [N, T-1]
        logits = self.model.get_output_embeddings()(hidden[:, :-1][sel])  # [M, V]
        rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)[sel]
        return logits, labels[sel], rows

    def _run_prefixes(self, batch: ModelBatch, adapter: LoraWeights | None):
        """Run each distinct prefix once and give every row its key/value cache (differentiably).

        Rows that share a prefix must share an adapter (true of generated and teacher adapters: both are
        functions of the task); the prefix runs with the adapter of its first row. Returns the cache
        expanded to the ``N`` rows, the attention mask ``[N, P + T]`` and the positions ``[N, T]`` of the rest.
        """
        rows, pmask = batch.prefix_rows, batch.prefix_mask  # [N], [U, P]
        first = [int((rows == u).nonzero()[0, 0]) for u in range(pmask.shape[0])]
        per_row = adapter is not None and adapter.batch_size > 1
        with apply_lora(self.model, adapter.index(first) if per_row else adapter):
            cache = self.model.model(input_ids=batch.prefix_ids, attention_mask=pmask, use_cache=True).cache
        cache.batch_select_indices(rows)  # [U] -> [N]: indexing, so gradients flow back to each prefix
        attn = torch.cat([pmask[rows], batch.attention_mask], 1)  # [N, P + T]
        steps = torch.arange(batch.input_ids.shape[1], device=rows.device)
        pos = pmask.sum(1)[rows][:, None] + steps[None]  # [N, T]: right after each row's prefix
        return cache, attn, pos

    def running_batch(
        self, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
    ) -> RunningBatch:
        """An empty batch that rows join and leave between decode steps (continuous batching)."""
        return RunningBatch(self, temperature, top_p, generator)

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
        on_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
        adapter_rows: Sequence[int] | None = None,
    ) -> list[str]:
        """Decode outputs for examples; ``on_step(rows [A], tokens [A])``, if given, is called after every step
        with the (original) indices of the rows still decoding and the token each just produced (streaming).

        ``adapter`` is one adapter for every row (batch 1), one per row (batch N), or, with ``adapter_rows``,
        ``U`` distinct adapters of which row ``i`` uses ``adapter_rows[i]``. Rows with the same prefix and
        the same adapter share one key/value cache of the prefix (:meth:`_prefix_cache`).
        """
        batch = self.running_batch(temperature, top_p, generator)
        events = batch.join(
            examples, adapter, mode, max_new_tokens or self.cfg.max_target_tokens, adapter_rows
        )
        texts: dict[Any, str] = {}
        while True:
            if on_step is not None:
                rows, tokens = zip(*events.tokens, strict=True)
                on_step(torch.tensor(rows), torch.tensor(tokens))
            texts.update(events.finished)
            if not len(batch):
                return [texts[i] for i in range(len(examples))]
            events = batch.step()

    @torch.no_grad()
    def store_prefix(
        self, instruction: str, adapter: LoraWeights | None, store: PrefixStore, key: Hashable
    ) -> None:
        """Run the ``fuse`` prompt prefix of ``instruction`` with ``adapter`` and keep it in ``store`` under
        ``key`` (the name ``join`` is later given for that adapter), unless it is held already: the first
        request for an adapter then finds its prefix computed."""
        prefix = self.prefix_ids(instruction, "fuse")
        if prefix:
            unique_prefix_cache(self, [prefix], adapter, store, [key])

    def _prefix_cache(
        self,
        prefixes: list[list[int]],
        groups: list[Any],
        adapter: LoraWeights | None,
        store: PrefixStore | None = None,
        group_keys: Sequence[Hashable] | None = None,
    ) -> tuple[Any, torch.Tensor]:
        """The key/value cache of every row's prefix, each distinct (prefix, adapter) pair computed once.

        The ``U`` distinct prefixes run right-padded as one batch ``[U, P]``, each with its adapter active
        (exactly as a PEFT model with that adapter computes it), and the cache is then gathered to the
        ``N`` rows. One task's rows (``tagi predict``, the evaluation) thus encode its instruction once; a
        server batch of rows for a few adapters encodes each adapter's instruction once. With a ``store``
        (:mod:`tagi.backbones.prefix_store`; ``group_keys[g]`` names the adapter of group ``g``; only for
        models whose cache is :func:`~tagi.backbones.prefix_store.storable`), prefixes computed by earlier
        calls are reused and new ones kept. Returns the cache and the mask ``[N, P]``.
        """
        unique, rows, unique_adapter, names = self._distinct_prefixes(prefixes, groups, adapter, group_keys)
        if store is not None:
            cache, pmask = unique_prefix_cache(self, unique, unique_adapter, store, names)
        else:
            cache, pmask = run_prefixes(self, unique, unique_adapter)
        index = torch.tensor(rows, dtype=torch.long, device=self.device)  # [N]
        if len(unique) == 1:
            cache.batch_repeat_interleave(len(rows))
        else:
            cache.batch_select_indices(index)  # [U] -> [N]
        return cache, pmask[index]

    def _prefix_kvs(
        self,
        prefixes: list[list[int]],
        groups: list[Any],
        adapter: LoraWeights | None,
        store: PrefixStore | None = None,
        group_keys: Sequence[Hashable] | None = None,
    ) -> tuple[list[KV], list[int]]:
        """As :meth:`_prefix_cache`, but each distinct prefix's own keys and values (no padding, for a packed
        prefill: ``tagi.backbones.packing``) and each row's index into them."""
        unique, rows, unique_adapter, names = self._distinct_prefixes(prefixes, groups, adapter, group_keys)
        return prefix_kvs(self, unique, unique_adapter, store, names), rows

    @staticmethod
    def _distinct_prefixes(prefixes, groups, adapter, group_keys):
        """``(distinct (prefix, group) prefixes [U], each row's index into them, their adapters ([U], or the
        shared one), their store names)``."""
        keys = [(tuple(p), g) for p, g in zip(prefixes, groups)]
        unique = list(dict.fromkeys(keys))
        index = {k: u for u, k in enumerate(unique)}
        first = [keys.index(k) for k in unique]  # a row of each distinct prefix
        per_row = adapter is not None and adapter.batch_size > 1
        names = [group_keys[g] for _, g in unique] if group_keys is not None else None
        unique_adapter = adapter.index(first) if per_row else adapter
        return [list(p) for p, _ in unique], [index[k] for k in keys], unique_adapter, names

    def _decode(self, gen: torch.Tensor) -> list[str]:
        texts = []
        for row in gen.tolist():
            cut = next((i for i, t in enumerate(row) if t in self.stop_ids), len(row))
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return texts
