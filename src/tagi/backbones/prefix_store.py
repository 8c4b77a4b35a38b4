"""Key/value caches of instruction prefixes kept across calls (prefix caching, for a server).

Every request for one adapter starts with the same prompt prefix (chat head + the adapter's instruction),
and the prefix's key/value cache depends only on (adapter, prefix tokens). A :class:`PrefixStore` keeps
those caches — per layer ``keys / values [1, H, P, D]`` — in an LRU bounded in bytes, so a server runs each
adapter's prefix once instead of once per request. :func:`prefix_kvs` gives each prefix's own keys and
values: stored prefixes are taken as they are, the missing ones run as one right-padded batch (each with its
adapter active) and are stored, cut to their own length. :func:`unique_prefix_cache` (the store-aware
version of the prefix run in ``CausalBackbone._prefix_cache``) right-pads them with zeros to one length ``P``
(the mask ``[U, P]`` hides the padding); a packed prefill (``tagi.backbones.packing``) lays them side by side.

A stored prefix computed alone is exactly the computation ``tagi predict`` makes; one computed beside other
prefixes equals it up to float rounding (padding is masked). Models with sliding-window attention layers
cannot be stored (their cache is not a plain prefix of keys): whoever creates a store checks
:func:`storable` once (``tagi serve`` does), so the per-request path does not.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence

import torch
from transformers import DynamicCache

from tagi.backbones.base import pad_right
from tagi.lora import LoraWeights, apply_lora

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, H, P, D]


def kv_bytes(kv: KV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


class PrefixStore:
    """Thread-safe LRU of prefix caches keyed by ``(adapter key, prefix token ids)``, bounded by
    ``max_bytes`` (the most recent entry always stays). Counts hits and misses."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, KV] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> KV | None:
        with self._lock:
            kv = self._entries.get(key)
            if kv is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return kv

    def put(self, key: Hashable, kv: KV) -> None:
        with self._lock:
            if key in self._entries:
                self._bytes -= kv_bytes(self._entries.pop(key))
            self._entries[key] = kv
            self._bytes += kv_bytes(kv)
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, old = self._entries.popitem(last=False)
                self._bytes -= kv_bytes(old)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)


def storable(model) -> bool:
    """The model's cache is a plain prefix of keys in every layer (no sliding window)."""
    return all(not getattr(layer, "is_sliding", False) for layer in DynamicCache(config=model.config).layers)


def run_prefixes(
    bb, prefixes: Sequence[Sequence[int]], adapter: LoraWeights | None
) -> tuple[DynamicCache, torch.Tensor]:
    """Run ``U`` prefixes as one right-padded batch, prefix ``u`` with row ``u`` of ``adapter`` (``[U]``, or
    ``[1]`` / ``None`` for all): the cache ``[U, H, P, D]`` and mask ``[U, P]``. One prefix runs without a
    mask: the computation ``tagi predict`` makes."""
    ids, mask = pad_right(prefixes, bb.pad_id)
    ids, mask = ids.to(bb.device), mask.to(bb.device)
    extra = {"attention_mask": mask} if len(prefixes) > 1 else {}
    with apply_lora(bb.model, adapter):
        return bb.model(input_ids=ids, use_cache=True, logits_to_keep=1, **extra).cache, mask


def prefix_kvs(
    bb,
    prefixes: Sequence[Sequence[int]],
    adapter: LoraWeights | None,
    store: PrefixStore | None = None,
    keys: Sequence[Hashable] | None = None,
) -> list[KV]:
    """Each of ``U`` distinct prefixes' own keys / values (per layer ``[1, H, P_u, D]``, no padding); prefix
    ``u`` runs with row ``u`` of ``adapter`` (``[U]``, or ``[1]`` / ``None`` for all) unless ``store`` holds
    ``(keys[u], prefix)``. The missing ones run as one right-padded batch and are stored (with a store)."""
    found = [store.get((keys[u], tuple(p))) if store is not None else None for u, p in enumerate(prefixes)]
    missing = [u for u, kv in enumerate(found) if kv is None]
    if missing:
        per_row = adapter is not None and adapter.batch_size > 1
        cache, _ = run_prefixes(
            bb, [prefixes[u] for u in missing], adapter.index(missing) if per_row else adapter
        )
        for j, u in enumerate(missing):
            n = len(prefixes[u])
            kv = [
                (la.keys[j : j + 1, :, :n].clone(), la.values[j : j + 1, :, :n].clone())
                for la in cache.layers
            ]
            if store is not None:
                store.put((keys[u], tuple(prefixes[u])), kv)
            found[u] = kv
    return found


def unique_prefix_cache(
    bb,
    prefixes: Sequence[Sequence[int]],
    adapter: LoraWeights | None,
    store: PrefixStore,
    keys: Sequence[Hashable],
) -> tuple[DynamicCache, torch.Tensor]:
    """The cache ``[U, H, P, D]`` and mask ``[U, P]`` of ``U`` distinct prefixes (:func:`prefix_kvs`), each
    right-padded with zeros to the longest."""
    found = prefix_kvs(bb, prefixes, adapter, store, keys)
    width = max(len(p) for p in prefixes)
    layers = []
    for li in range(len(found[0])):
        ks = [_right_pad(kv[li][0], width) for kv in found]
        vs = [_right_pad(kv[li][1], width) for kv in found]
        layers.append((torch.cat(ks), torch.cat(vs)))
    _, pmask = pad_right(prefixes, bb.pad_id)
    return DynamicCache(ddp_cache_data=layers, config=bb.model.config), pmask.to(bb.device)


def _right_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    extra = width - t.shape[2]
    return t if extra == 0 else torch.cat([t, t.new_zeros((*t.shape[:2], extra, t.shape[3]))], 2)
