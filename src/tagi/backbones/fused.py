"""A decode step and a packed prefill in one model call (the server's fused join).

Between two decode steps, the rows that join a running batch are prefilled (packed without padding,
:mod:`tagi.backbones.packing`), and the running rows then take their decode step: two model calls, and
each reads every weight of the model. On a CPU a call of a few tokens costs nearly what a call of a hundred
does (``benchmarks/serve_load.py`` records the calls), so the two are fused into one packed row::

    ids   [1, A + T]    the A running rows' pending tokens, then the K joining rows' T suffix tokens
    pos   [1, A + T]    each token's own position (running row i: pos[i]; joining tokens as packed)
    lora  token_rows    running row i's own adapter, then each joining row's (``apply_lora(token_rows=...)``)

Every layer's attention runs in two parts, so no score is computed between a running row and a joining one
(a mask over one ``[A + T, C + A L + T]`` score matrix would compute them all and hide them):

    running  q [A, H, 1, D]  keys [A, H, L + 1, D]   the running cache with this step's key appended,
                                                      ``attn [A, L + 1]`` as mask (a decode step's own)
    joining  q [1, H, T, D]  keys [1, H, C + T, D]   the packed prefixes and tokens, the packing's block
                                                      mask ``[1, 1, T, C + T]``

:class:`FusedCache` takes each layer's new keys and values ``[1, H, A + T, D]`` and appends the first ``A``
to the running cache (one column per row) and the rest to the packed cache; it hands both parts to the
attention as :class:`Parts`, which only :func:`fused_attention` reads. That function is registered with
transformers' ``AttentionInterface`` as ``"tagi_fused"`` and selected only for the duration of the call
(:func:`fused_attention_for`); each part goes through transformers' own SDPA attention, as in an unfused
call. The model must be called with the joining block mask as its 4D ``attention_mask`` (used as given)
and explicit ``position_ids``: the cache answers nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "tagi_fused"


@dataclass
class Parts:
    """One layer's keys (or values) for a fused call: the packed part ``[1, H, C + T, D]`` and the running
    rows' ``[A, H, L + 1, D]`` (with their mask ``[A, 1, 1, L + 1]``, True = a real key, on the keys)."""

    packed: torch.Tensor
    running: torch.Tensor
    running_mask: torch.Tensor | None = None


class FusedCache:
    """Routes a fused call's new keys and values (module docstring): the first ``rows`` tokens' to
    ``running`` (a ``[A, H, L, D]`` cache, grown by one column), the others' to ``packed`` (``[1, H, C, D]``,
    grown by ``T``). ``running_attn [A, L + 1]`` is the running rows' mask including the new column."""

    def __init__(self, packed: DynamicCache, running: Any, running_attn: torch.Tensor) -> None:
        self.packed, self.running = packed, running
        self.rows = running_attn.shape[0]
        self.mask = running_attn.bool()[:, None, None, :]  # [A, 1, 1, L + 1]

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        a = self.rows
        run_k, run_v = self.running.update(
            keys[0, :, :a].transpose(0, 1).unsqueeze(2),
            values[0, :, :a].transpose(0, 1).unsqueeze(2),
            layer_idx,
        )  # [A, H, L + 1, D]
        pk, pv = self.packed.update(keys[:, :, a:], values[:, :, a:], layer_idx)  # [1, H, C + T, D]
        return Parts(pk, run_k, self.mask), Parts(pv, run_v)


def fused_attention(module, query, key, value, attention_mask, **kwargs) -> tuple[torch.Tensor, None]:
    """Attention of a fused call: ``query [1, H, A + T, D]`` -> ``[1, A + T, H, D]`` (module docstring)."""
    if not isinstance(key, Parts):
        raise TypeError("the tagi_fused attention runs only with a FusedCache (tagi.backbones.fused)")
    a = key.running.shape[0]
    q_run = query[0, :, :a].transpose(0, 1).unsqueeze(2)  # [A, H, 1, D]
    out_run, _ = sdpa_attention_forward(module, q_run, key.running, value.running, key.running_mask, **kwargs)
    out_pack, _ = sdpa_attention_forward(
        module, query[:, :, a:], key.packed, value.packed, attention_mask, **kwargs
    )
    return torch.cat([out_run.transpose(0, 1), out_pack], 1), None  # [1, A, H, D] ++ [1, T, H, D]


AttentionInterface.register(NAME, fused_attention)


@contextmanager
def fused_attention_for(model) -> Iterator[None]:
    """Select :func:`fused_attention` for ``model``'s calls inside the block; the previous one returns."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
