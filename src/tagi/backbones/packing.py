"""Packed prefill: the rows joining a decode run as one row of concatenated tokens, with no padding.

Rows ``k = 0..K-1`` join with prompt prefix ``u_k`` (one of ``U`` distinct prefixes whose keys and values
are already computed, per layer ``[1, H, P_u, D]``: ``tagi.backbones.prefix_store.prefix_kvs``) and suffix
tokens ``s_k`` (``S_k >= 1`` of them). Left-padding the suffixes to one length computes ``K * max_k S_k``
tokens where ``sum_k S_k`` are needed; on a CPU a prefill costs about the same per token computed, so
padding is time lost (a long input makes every row of its join as long). Packed::

    ids         [1, T]             s_0 ++ s_1 ++ ... ++ s_{K-1}            T = sum_k S_k
    pos         [1, T]             P_{u_k} + j for token j of row k        (each row's own positions)
    cache       [1, H, C, D]       the U prefixes side by side             C = sum_u P_u
    mask        [1, 1, T, C + T]   token (k, j) sees the columns of prefix u_k and tokens (k, 0..j):
                                   0 there, the dtype's lowest value elsewhere (additive, as every
                                   attention implementation takes it)
    token_rows  [T]                k for each token of row k: its adapter (``apply_lora(token_rows=...)``)
    last        [K]                the index of row k's last token: its logits give row k's first new token
    segments    K x Segment        row k's prefix columns, its tokens and its own causal mask
                                   ``[1, 1, S_k, P_{u_k} + S_k]`` (bool), for attention row by row

so a token sees exactly the keys it sees alone, at the same positions, through the same adapter; only the
order of float sums differs. The block mask computes every score of ``[T, C + T]`` and hides most of them;
``segments`` let an attention (``tagi.backbones.fused``) compute row k's ``[S_k, P_{u_k} + S_k]`` alone,
``sum_k S_k (P_{u_k} + S_k)`` scores in all. After the forward, the cache holds ``[1, H, C + T, D]``; :meth:`Packed.unpack`
gathers row k's columns (its prefix's, then its own tokens') into the running batch's layout
``[K, H, L, D]``, left-padded to ``L = max_k (P_{u_k} + S_k)``; ``attn [K, L]`` is 1 on a row's real keys.
A padding slot holds a copy of some real key, masked: it adds an exact zero to attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from tagi.backbones.prefix_store import KV


@dataclass(frozen=True)
class Segment:
    """Row ``k`` of a packing: its prefix's columns of the packed cache, its tokens (positions in the packed
    row; in the cache they follow the ``C`` prefix columns) and the mask of those tokens over its keys
    (prefix then own tokens): ``[1, 1, S, P + S]``, True where token ``i`` sees key ``j`` (``j <= P + i``)."""

    prefix: slice
    tokens: slice
    mask: torch.Tensor


@dataclass
class Packed:
    """The inputs of one packed prefill (module docstring) and how to unpack its cache."""

    ids: torch.Tensor  # [1, T]
    pos: torch.Tensor  # [1, T]
    mask: torch.Tensor  # [1, 1, T, C + T] additive: 0 = seen, the dtype's lowest value = hidden
    cache: DynamicCache | None  # [1, H, C, D]; None without prefixes (C = 0)
    token_rows: torch.Tensor  # [T]
    last: torch.Tensor  # [K]
    gather: torch.Tensor  # [K, L] columns of the packed cache, row k's keys right-aligned
    attn: torch.Tensor  # [K, L] 1 = a real key
    segments: list[Segment]  # per row: its prefix columns, its tokens, its causal mask over its own keys

    @property
    def last_pos(self) -> torch.Tensor:
        """``[K, 1]``: the position of each row's last token."""
        return self.pos[0, self.last][:, None]

    def unpack(self, cache: Any) -> Any:
        """The forward's cache ``[1, H, C + T, D]`` as the rows' cache ``[K, H, L, D]``, in place."""
        for layer in cache.layers:
            layer.keys = layer.keys[0][:, self.gather].transpose(0, 1).contiguous()
            layer.values = layer.values[0][:, self.gather].transpose(0, 1).contiguous()
        return cache


def _exclusive_cumsum(t: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(t, 0) - t


def pack(
    kvs: Sequence[KV],
    rows: Sequence[int],
    suffixes: Sequence[Sequence[int]],
    config,
    device,
    dtype: torch.dtype = torch.float32,
) -> Packed:
    """Pack ``K`` rows: row ``k`` continues prefix ``kvs[rows[k]]`` (``kvs`` empty: no prefixes) with the
    tokens ``suffixes[k]`` (at least one each); ``dtype`` is the model's (the mask's)."""
    if any(len(s) == 0 for s in suffixes):
        raise ValueError("every packed row needs at least one token")
    slen = torch.tensor([len(s) for s in suffixes])  # [K]
    plen = torch.tensor([kv[0][0].shape[2] for kv in kvs] or [0])  # [U]
    row_u = torch.tensor(list(rows) if kvs else [0] * len(suffixes))  # [K]
    poff, start = _exclusive_cumsum(plen), _exclusive_cumsum(slen)  # [U], [K]
    c = int(plen.sum())
    token_rows = torch.repeat_interleave(torch.arange(len(suffixes)), slen)  # [T]
    t = torch.arange(len(token_rows))
    pos = plen[row_u][token_rows] + t - start[token_rows]  # [T]
    owner = torch.repeat_interleave(torch.arange(len(plen)), plen)  # [C]: the prefix of each column
    see_prefix = row_u[token_rows][:, None] == owner[None, :]  # [T, C]
    see_own = (token_rows[:, None] == token_rows[None, :]) & (t[None, :] <= t[:, None])  # [T, T]
    seen = torch.cat([see_prefix, see_own], 1)[None, None]
    mask = torch.zeros(seen.shape, dtype=dtype).masked_fill(~seen, torch.finfo(dtype).min)
    length = plen[row_u] + slen  # [K]
    width = int(length.max())
    gather = torch.zeros(len(suffixes), width, dtype=torch.long)
    attn = torch.zeros(len(suffixes), width, dtype=torch.long)
    segments = []
    for k in range(len(suffixes)):
        u, n = int(row_u[k]), int(length[k])
        cols = torch.cat([poff[u] + torch.arange(plen[u]), c + start[k] + torch.arange(slen[k])])
        gather[k, width - n :], attn[k, width - n :] = cols, 1
        p0, s0, pl, sl = int(poff[u]), int(start[k]), int(plen[u]), int(slen[k])
        causal = torch.ones(sl, pl + sl, dtype=torch.bool, device=device).tril(pl)[None, None]
        segments.append(Segment(slice(p0, p0 + pl), slice(s0, s0 + sl), causal))
    cache = None
    if c:
        layers = [
            (torch.cat([kv[li][0] for kv in kvs], 2), torch.cat([kv[li][1] for kv in kvs], 2))
            for li in range(len(kvs[0]))
        ]
        cache = DynamicCache(ddp_cache_data=layers, config=config)
    ids = torch.tensor([tok for s in suffixes for tok in s], dtype=torch.long)[None]
    return Packed(
        ids.to(device),
        pos[None].to(device),
        mask.to(device),
        cache,
        token_rows.to(device),
        (start + slen - 1).to(device),
        gather.to(device),
        attn.to(device),
        segments,
    )
