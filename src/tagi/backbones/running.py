"""A decoder-only decode that rows join and leave between steps (continuous batching).

A :class:`RunningBatch` holds ``A`` rows in the middle of decoding::

    cache    keys / values per layer, [A, H, L, D]    row i's real keys are where attn[i, :L] == 1
    attn     [A, L + 1]   1 = a real key; the last column is the token each row feeds next
    pos      [A, 1]       position of that token (each row counts only its own real tokens)
    ids      [A, 1]       that token: the one the row just produced
    adapter  None, one LoraWeights [1] shared by every row, or [A] (one adapter per row)

:meth:`RunningBatch.join` prefills new rows — each distinct (instruction prefix, adapter) once
(``CausalBackbone._prefix_cache``), then their sources, left-padded, or packed into one row without padding
(``prefill="packed"``, :mod:`tagi.backbones.packing`) — samples their first token and appends them. The two
caches are left-padded to one length after dropping leading columns no row uses: every row keeps its own
keys and positions, and a masked column adds an exact zero to attention.
:meth:`RunningBatch.step` feeds every row its last token; ``join(..., prefill="fused")`` does both in one
model call, the running rows' step and the new rows' packed prefill (:mod:`tagi.backbones.fused`). A row
leaves as soon as it emits a stop token or reaches its ``max_new_tokens``; its cache, mask, position and
adapter row go with it, so a step costs what the unfinished rows cost.

``CausalBackbone.generate`` is one join into an empty batch followed by steps until it is empty (no
padding is ever added or dropped then). A server joins the requests that arrive while a batch decodes at
the next step, instead of letting them wait for the batch's longest row (``tagi.serve.scheduler``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from tagi.backbones.base import pad_left, row_adapters, sample_next
from tagi.backbones.fused import FusedCache, fused_attention_for
from tagi.backbones.packing import Packed, pack
from tagi.backbones.prefix_store import PrefixStore
from tagi.lora import LoraWeights, apply_fused_lora, apply_lora

PREFILLS = ("fused", "packed", "padded")
"""How :meth:`RunningBatch.join` prefills joining rows (see there)."""


@dataclass
class Events:
    """What one join or step produced: ``tokens`` = (tag, token) for every row that ran, in batch order;
    ``finished`` = (tag, text) for the rows that left."""

    tokens: list[tuple[Hashable, int]] = field(default_factory=list)
    finished: list[tuple[Hashable, str]] = field(default_factory=list)


def _per_row(adapter: LoraWeights | None, n: int, like: LoraWeights) -> LoraWeights:
    """``adapter`` as ``n`` rows: a shared adapter repeated, the base model as rows of zeros."""
    if adapter is None:
        return like.zeros(n)
    return adapter if adapter.batch_size == n else adapter.index([0] * n)


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zeros before ``t`` along ``dim`` up to ``width``."""
    extra = width - t.shape[dim]
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim)


@dataclass
class _Rows:
    """The state of some rows (see the module docstring); ``attn`` includes the pending token's column."""

    cache: Any
    attn: torch.Tensor
    pos: torch.Tensor
    ids: torch.Tensor | None
    adapter: LoraWeights | None
    tags: list[Hashable]
    limits: list[int]
    tokens: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = self.tokens or [[] for _ in self.tags]

    def select(self, keep: torch.Tensor) -> None:
        """Keep rows ``keep`` (indices into the current rows)."""
        if self.cache is not None:
            self.cache.batch_select_indices(keep)
        self.attn, self.pos = self.attn[keep], self.pos[keep]
        if self.adapter is not None and self.adapter.batch_size > 1:
            self.adapter = self.adapter.index(keep)
        kept = keep.tolist()
        self.tags = [self.tags[i] for i in kept]
        self.tokens = [self.tokens[i] for i in kept]
        self.limits = [self.limits[i] for i in kept]


class RunningBatch:
    """Rows decoding together; see the module docstring. Not thread-safe: one owner drives it."""

    def __init__(
        self, backbone, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
    ) -> None:
        self.bb, self.temperature, self.top_p, self.generator = backbone, temperature, top_p, generator
        self.stop = torch.tensor(sorted(backbone.stop_ids), device=backbone.device)
        self.rows: _Rows | None = None

    def __len__(self) -> int:
        return len(self.rows.tags) if self.rows is not None else 0

    @property
    def can_join(self) -> bool:
        """Rows can join a batch in progress: every cache layer is a plain growing one (no sliding window)."""
        cache = self.rows.cache if self.rows is not None else None
        return cache is None or all(
            not getattr(layer, "is_sliding", False) and hasattr(layer, "keys") for layer in cache.layers
        )

    @torch.no_grad()
    def join(
        self,
        examples,
        adapter: LoraWeights | None,
        mode: str,
        max_new_tokens: int,
        adapter_rows: Sequence[int] | None = None,
        tags: Sequence[Hashable] | None = None,
        prefix_store: PrefixStore | None = None,
        adapter_keys: Sequence[Hashable] | None = None,
        prefill: str = "padded",
    ) -> Events:
        """Prefill ``examples`` (adapters as in ``generate``), sample their first token and add the rows
        that go on. ``tags`` name the rows in the events (default: their order of joining). With a
        ``prefix_store``, instruction prefixes are reused across calls; ``adapter_keys`` names each
        distinct adapter (``adapter_rows`` indexes it; one name for a shared adapter or none).

        ``prefill``: ``"padded"`` left-pads the new rows to the longest; ``"packed"`` prefills several rows
        as one row without padding (``tagi.backbones.packing``); ``"fused"`` also runs the running rows'
        decode step in the same model call (:mod:`tagi.backbones.fused`), so the events hold the running
        rows' next tokens too (with no row running it is ``"packed"``)."""
        if prefill not in PREFILLS:
            raise ValueError(f"prefill must be one of {', '.join(PREFILLS)}, got {prefill!r}")
        n, bb = len(examples), self.bb
        if len(self) and not self.can_join:
            raise RuntimeError("this model's cache cannot take rows into a batch in progress")
        adapter, groups = row_adapters(adapter, adapter_rows, n)
        prefixes = [bb.prefix_ids(e.instruction, mode) for e in examples]
        suffixes = [bb.suffix_ids(e.source) for e in examples]
        tags = list(range(n)) if tags is None else list(tags)
        if prefill == "fused" and len(self):
            if all(suffixes):
                return self._join_fused(prefixes, suffixes, groups, adapter, prefix_store, adapter_keys,
                                        tags, max_new_tokens)  # fmt: skip
            events = self.step()  # a row with nothing to pack: the step, then a padded join
            prefill = "padded"
        else:
            events = Events()
        packed = prefill != "padded" and n > 1 and all(suffixes)
        run = self._prefill_packed if packed else self._prefill_padded
        nxt, cache, attn, pos = run(prefixes, suffixes, groups, adapter, prefix_store, adapter_keys)
        new = _Rows(cache, attn, pos, None, adapter, tags, [max_new_tokens] * n)
        joined = self._advance(new, nxt)
        if new.tags:
            self.rows = new if self.rows is None else _merged(self.rows, new)
        return Events(events.tokens + joined.tokens, events.finished + joined.finished)

    def _join_fused(self, prefixes, suffixes, groups, adapter, store, keys, tags, max_new_tokens) -> Events:
        """The running rows' decode step and the packed prefill of new rows in one model call: the running
        rows' next tokens and the new rows' first ones, as ``step`` then a packed ``join`` give them."""
        old = self.rows
        p = self._pack(prefixes, suffixes, groups, adapter, store, keys)
        nxt, packed_cache = self._fused_forward(old, p, adapter)
        a = len(old.tags)
        events = self._advance(old, nxt[:a])  # the running cache grew in place (FusedCache)
        new = _Rows(
            p.unpack(packed_cache), p.attn, p.last_pos, None, adapter, tags, [max_new_tokens] * len(tags)
        )
        joined = self._advance(new, nxt[a:])
        if new.tags:
            self.rows = _merged(old, new) if old.tags else new
        elif not old.tags:
            self.rows = None
        return Events(events.tokens + joined.tokens, events.finished + joined.finished)

    def _fused_forward(self, old: _Rows | None, p: Packed, adapter: LoraWeights | None):
        """One call for the running rows' pending tokens (none when ``old`` is None) then the packed rows:
        ``(next tokens [A + K], the packed cache [1, H, C + T, D])``; the running rows' cache gains its
        column in place. Each joining row attends to its own keys only (``tagi.backbones.fused``)."""
        bb, a = self.bb, len(old.tags) if old is not None else 0
        packed = p.cache if p.cache is not None else DynamicCache(config=bb.model.config)
        per_row = adapter is not None and adapter.batch_size > 1
        token_rows = p.token_rows if per_row else torch.zeros_like(p.token_rows)
        run_adapter, run_cache, run_attn, ids, pos = None, None, None, p.ids, p.pos
        if a:
            run_adapter, run_cache, run_attn = old.adapter, old.cache, old.attn
            ids, pos = torch.cat([old.ids.T, p.ids], 1), torch.cat([old.pos.T, p.pos], 1)  # [1, A + T]
        cache = FusedCache(packed, run_cache, run_attn, p.segments)
        with apply_fused_lora(bb.model, a, run_adapter, adapter, token_rows), fused_attention_for(bb.model):
            out = bb.model(
                input_ids=ids,
                attention_mask=p.mask,
                position_ids=pos,
                cache=cache,
                use_cache=True,
                logits_to_keep=torch.cat([torch.arange(a, device=bb.device), a + p.last]),
            )
        return sample_next(out.logits[0], self.temperature, self.top_p, self.generator), packed

    @torch.no_grad()
    def step(self) -> Events:
        """One token for every row."""
        rows = self.rows
        nxt, rows.cache = self._forward(rows.ids, rows.attn, rows.pos, rows.cache, rows.adapter)
        events = self._advance(rows, nxt)
        if not rows.tags:
            self.rows = None
        return events

    # ---- internals
    def _prefill_padded(self, prefixes, suffixes, groups, adapter, store, keys):
        """The rows' prefixes right-padded, then their suffixes left-padded: ``(first tokens [K], cache
        [K, H, P + S, D], attn [K, P + S], last positions [K, 1])``."""
        bb = self.bb
        cache, prefix_mask = None, torch.ones(len(suffixes), 0, dtype=torch.long, device=bb.device)
        if prefixes[0]:  # the mode and the chat head are the batch's: every prefix is empty, or none is
            cache, prefix_mask = bb._prefix_cache(prefixes, groups, adapter, store, keys)
        ids, mask = pad_left(suffixes, bb.pad_id)
        attn = torch.cat([prefix_mask, mask.to(bb.device)], 1)  # [K, P + S]: the padding holes masked out
        pos = (attn.cumsum(-1) - 1).clamp_min(0)[:, prefix_mask.shape[1] :]  # counting each row's prefix
        nxt, cache = self._forward(ids.to(bb.device), attn, pos, cache, adapter)
        return nxt, cache, attn, pos[:, -1:]

    def _prefill_packed(self, prefixes, suffixes, groups, adapter, store, keys):
        """As :meth:`_prefill_padded`, as one packed row (``tagi.backbones.packing``; the fused call with no
        running rows); the cache ``[K, H, L, D]`` and ``attn [K, L]`` come back left-padded, each row's keys
        contiguous."""
        p = self._pack(prefixes, suffixes, groups, adapter, store, keys)
        nxt, cache = self._fused_forward(None, p, adapter)
        return nxt, p.unpack(cache), p.attn, p.last_pos

    def _pack(self, prefixes, suffixes, groups, adapter, store, keys) -> Packed:
        """The packed layout of rows with these prompt parts (``tagi.backbones.packing``)."""
        bb = self.bb
        if not all(suffixes):
            raise ValueError("every packed row needs at least one source token")
        kvs, rows = bb._prefix_kvs(prefixes, groups, adapter, store, keys) if prefixes[0] else ([], [])
        return pack(kvs, rows, suffixes, bb.model.config, bb.device, bb.model.dtype)

    def _forward(self, ids, attn, pos, cache, adapter) -> tuple[torch.Tensor, Any]:
        with apply_lora(self.bb.model, adapter):
            out = self.bb.model(
                input_ids=ids,
                attention_mask=attn,
                position_ids=pos,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return sample_next(out.logits[:, -1], self.temperature, self.top_p, self.generator), out.cache

    def _advance(self, rows: _Rows, nxt: torch.Tensor) -> Events:
        """Record each row's new token, let finished rows leave, and queue the others' next input."""
        events = Events(tokens=list(zip(rows.tags, nxt.tolist(), strict=True)))
        done = torch.isin(nxt, self.stop)
        for i, t in enumerate(nxt.tolist()):
            if not bool(done[i]):
                rows.tokens[i].append(t)
                done[i] = len(rows.tokens[i]) >= rows.limits[i]
        for i in done.nonzero().squeeze(1).tolist():
            text = self.bb._decode(torch.tensor([rows.tokens[i]], dtype=torch.long))[0]
            events.finished.append((rows.tags[i], text))
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            rows.select(keep)
            nxt = nxt[keep]
        if rows.tags:
            rows.attn = torch.cat([rows.attn, torch.ones_like(rows.attn[:, :1])], 1)
            rows.pos, rows.ids = rows.pos + 1, nxt[:, None]
        return events


def _merged(old: _Rows, new: _Rows) -> _Rows:
    """``old`` then ``new`` as one batch: leading columns neither uses are dropped, the shorter cache is
    left-padded with masked zeros. A shared adapter (or none) common to both stays shared."""
    keys_old, keys_new = old.attn[:, :-1], new.attn[:, :-1]  # without the pending token's column
    s_old, s_new = _first_used(keys_old), _first_used(keys_new)
    width = max(keys_old.shape[1] - s_old, keys_new.shape[1] - s_new)
    for a, b in zip(old.cache.layers, new.cache.layers, strict=True):
        for name in ("keys", "values"):
            ka = _left_pad(getattr(a, name)[:, :, s_old:], width, 2)
            kb = _left_pad(getattr(b, name)[:, :, s_new:], width, 2)
            setattr(a, name, torch.cat([ka, kb]))
    attn = torch.cat([_left_pad(keys_old[:, s_old:], width, 1), _left_pad(keys_new[:, s_new:], width, 1)])
    adapter = old.adapter
    if new.adapter is not old.adapter:
        like = new.adapter if new.adapter is not None else old.adapter
        parts = [_per_row(old.adapter, len(old.tags), like), _per_row(new.adapter, len(new.tags), like)]
        adapter = LoraWeights.stack(parts)
    return _Rows(
        old.cache,
        torch.cat([attn, torch.ones_like(attn[:, :1])], 1),
        torch.cat([old.pos, new.pos]),
        torch.cat([old.ids, new.ids]),
        adapter,
        old.tags + new.tags,
        old.limits + new.limits,
        old.tokens + new.tokens,
    )


def _first_used(attn: torch.Tensor) -> int:
    """The first column some row uses (leading all-zero columns can be dropped)."""
    used = attn.any(0).nonzero()
    return int(used[0, 0]) if len(used) else attn.shape[1]
