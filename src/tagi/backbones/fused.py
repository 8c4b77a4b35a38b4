"""A decode step and a packed prefill in one model call (the server's fused join).

Between two decode steps, the rows that join a running batch are prefilled (packed without padding,
:mod:`tagi.backbones.packing`), and the running rows then take their decode step: two model calls, and
each reads every weight of the model. On a CPU a call of a few tokens costs nearly what a call of a hundred
does (``benchmarks/serve_load.py`` records the calls), so the two are fused into one packed row::

    ids   [1, A + T]    the A running rows' pending tokens, then the K joining rows' T suffix tokens
    pos   [1, A + T]    each token's own position (running row i: pos[i]; joining tokens as packed)
    lora  token_rows    running row i's own adapter, then each joining row's (``apply_lora(token_rows=...)``)

A packed prefill with no running rows (``A = 0``) is the same call. Every layer's attention runs part by
part, so no score is computed between two rows (a mask over one ``[A + T, C + A L + T]`` score matrix would
compute them all and hide them):

    running  q [A, H, 1, D]    keys [A, H, L + 1, D]        the running cache with this step's key appended,
                                                           ``attn [A, L + 1]`` as mask (a decode step's own)
    joining  q [1, H, S_k, D]  keys [1, H, P_k + S_k, D]    for each joining row k: its prefix's columns of
                                                           the packed cache, then its own tokens', with its
                                                           causal mask (``Packed.segments``)

The joining part thus computes ``sum_k S_k (P_k + S_k)`` scores, not the ``T (C + T)`` of the packing's
block mask (``benchmarks/serve_load.py`` measured the fused call with both).

:class:`FusedCache` takes each layer's new keys and values ``[1, H, A + T, D]`` and appends the first ``A``
to the running cache (one column per row) and the rest to the packed cache; it hands both parts to the
attention as :class:`Parts`, which only :func:`fused_attention` reads. That function is registered with
transformers' ``AttentionInterface`` as ``"tagi_fused"`` and selected only for the duration of the call
(:func:`fused_attention_for`); each part goes through transformers' own SDPA attention, as in an unfused
call. The model must be called with explicit ``position_ids`` and a 4D ``attention_mask`` (the packing's
block mask, which transformers then uses as given; the attention reads the segments' masks instead): the
cache answers nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from tagi.backbones.packing import Segment

NAME = "tagi_fused"


@dataclass
class Parts:
    """One layer's keys (or values) for a fused call: the packed part ``[1, H, C + T, D]`` with the joining
    rows' segments, and the running rows' ``[A, H, L + 1, D]`` (with their mask ``[A, 1, 1, L + 1]``, True =
    a real key, on the keys); ``running`` is None when no row is running."""

    packed: torch.Tensor
    running: torch.Tensor | None
    running_mask: torch.Tensor | None = None
    segments: Sequence[Segment] = ()


class FusedCache:
    """Routes a fused call's new keys and values (module docstring): the first ``rows`` tokens' to
    ``running`` (a ``[A, H, L, D]`` cache, grown by one column), the others' to ``packed`` (``[1, H, C, D]``,
    grown by ``T``). ``running_attn [A, L + 1]`` is the running rows' mask including the new column;
    ``running=None`` (and ``running_attn=None``) for a packed prefill alone."""

    def __init__(
        self,
        packed: DynamicCache,
        running: Any,
        running_attn: torch.Tensor | None,
        segments: Sequence[Segment],
    ) -> None:
        self.packed, self.running, self.segments = packed, running, segments
        self.rows = running_attn.shape[0] if running_attn is not None else 0
        self.mask = running_attn.bool()[:, None, None, :] if running_attn is not None else None  # [A,1,1,L+1]

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        a = self.rows
        run_k = run_v = None
        if self.running is not None:
            run_k, run_v = self.running.update(
                keys[0, :, :a].transpose(0, 1).unsqueeze(2),
                values[0, :, :a].transpose(0, 1).unsqueeze(2),
                layer_idx,
            )  # [A, H, L + 1, D]
        pk, pv = self.packed.update(keys[:, :, a:], values[:, :, a:], layer_idx)  # [1, H, C + T, D]
        return Parts(pk, run_k, self.mask, self.segments), Parts(pv, run_v)


def segment_attention(module, query, key: Parts, value: Parts, **kwargs) -> torch.Tensor:
    """The joining rows' attention, row by row: ``query [1, H, T, D]`` -> ``[1, T, H, D]``. Row k's tokens
    see its prefix's columns then its own tokens' (``Packed.segments``), through its own causal mask."""
    c = key.packed.shape[2] - query.shape[2]  # the prefix columns before the packed tokens
    outs = []
    for seg in key.segments:
        own = slice(c + seg.tokens.start, c + seg.tokens.stop)
        k = torch.cat([key.packed[:, :, seg.prefix], key.packed[:, :, own]], 2)  # [1, H, P_k + S_k, D]
        v = torch.cat([value.packed[:, :, seg.prefix], value.packed[:, :, own]], 2)
        out, _ = sdpa_attention_forward(module, query[:, :, seg.tokens], k, v, seg.mask, **kwargs)
        outs.append(out)  # [1, S_k, H, D]
    return torch.cat(outs, 1)


def fused_attention(module, query, key, value, attention_mask, **kwargs) -> tuple[torch.Tensor, None]:
    """Attention of a fused call: ``query [1, H, A + T, D]`` -> ``[1, A + T, H, D]`` (module docstring)."""
    if not isinstance(key, Parts):
        raise TypeError("the tagi_fused attention runs only with a FusedCache (tagi.backbones.fused)")
    a = key.running.shape[0] if key.running is not None else 0
    out_pack = segment_attention(module, query[:, :, a:], key, value, **kwargs)
    if not a:
        return out_pack, None
    q_run = query[0, :, :a].transpose(0, 1).unsqueeze(2)  # [A, H, 1, D]
    out_run, _ = sdpa_attention_forward(module, q_run, key.running, value.running, key.running_mask, **kwargs)
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
