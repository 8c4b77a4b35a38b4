"""Generated adapters kept in memory: server-made ids, an LRU bounded in bytes, PEFT folders as zip files.

**Ids.** An adapter id is a content hash, ``sha256(checkpoint sha256, the instruction as the hypernetwork
reads it, fusion)``, cut to 32 hex digits: the same instruction on the same checkpoint always gets the same
id, and a client never names a path. Ids are only ever dictionary keys here; the one place an adapter
touches the file system (:func:`peft_zip`) writes into a fresh temporary folder the server named.

**Memory.** :class:`AdapterCache` holds the generated :class:`~tagi.Adapter` objects in least-recently-used
order and evicts the oldest when their tensors exceed ``max_bytes``. The *recipe* of every id (instruction
text and fusion, a few hundred bytes) is kept in a second, larger LRU, so an evicted adapter is regenerated
on its next use instead of answering "unknown adapter" — the hypernetwork is deterministic, so it is the
same adapter.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagi import Adapter

ID_HEX = 32


def adapter_id(checkpoint_sha256: str | None, instruction: str, fuse: bool, dtype: str) -> str:
    """The server-made id of an adapter: a hash of what determines it (never anything path-like), the base
    model's dtype included (it rounds the instruction states the hypernetwork reads)."""
    h = hashlib.sha256()
    for part in (checkpoint_sha256 or "", instruction, "fuse" if fuse else "nofuse", dtype):
        h.update(part.encode("utf-8") + b"\0")
    return h.hexdigest()[:ID_HEX]


def adapter_bytes(adapter: Adapter) -> int:
    """Memory held by an adapter's LoRA factors."""
    w = adapter.weights
    return sum(t.numel() * t.element_size() for d in (w.A, w.B) for t in d.values())


@dataclass
class Entry:
    """One generated adapter and what the API reports about it."""

    id: str
    adapter: Adapter
    instruction: str  # as the client sent it (before the Definition wrapping)
    generation_s: float
    created: int  # unix time

    def info(self) -> dict[str, Any]:
        a = self.adapter
        return {
            "id": self.id,
            "object": "adapter",
            "created": self.created,
            "instruction": self.instruction,
            "instruction_read": a.instruction,
            "instruction_truncated": a.instruction_truncated,
            "rank": a.rank,
            "fuse": a.fuse,
            "base_model": a.base_model,
            "family": a.family,
            "bytes": adapter_bytes(a),
            "generation_s": round(self.generation_s, 4),
            "checkpoint_sha256": a.checkpoint_sha256,
        }


class AdapterCache:
    """Thread-safe LRU of :class:`Entry` bounded by ``max_bytes`` of adapter tensors (see module docstring).

    The most recent adapter always stays, even when it alone exceeds the bound.
    """

    def __init__(self, max_bytes: int, max_recipes: int = 10_000) -> None:
        self.max_bytes = max_bytes
        self.max_recipes = max_recipes
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._recipes: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._by_recipe: dict[str, str] = {}  # recipe (as canonical JSON) -> id, for every kept recipe
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def get(self, key: str) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._recipes.move_to_end(key)
            return entry

    def find(self, recipe: dict[str, Any]) -> Entry | None:
        """The cached entry an equal recipe made, if it is still held (a repeated request skips the
        hypernetwork); ``None`` otherwise."""
        with self._lock:
            key = self._by_recipe.get(_canonical(recipe))
        return self.get(key) if key is not None else None

    def recipe(self, key: str) -> dict[str, Any] | None:
        """How to regenerate an id that was evicted (``None``: this server never made it)."""
        with self._lock:
            return self._recipes.get(key)

    def put(self, entry: Entry, recipe: dict[str, Any]) -> None:
        with self._lock:
            if entry.id in self._entries:
                self._bytes -= adapter_bytes(self._entries.pop(entry.id).adapter)
            self._entries[entry.id] = entry
            self._bytes += adapter_bytes(entry.adapter)
            if entry.id in self._recipes:  # another wording of the same adapter: keep one recipe per id
                self._by_recipe.pop(_canonical(self._recipes[entry.id]), None)
            self._recipes[entry.id] = recipe
            self._recipes.move_to_end(entry.id)
            self._by_recipe[_canonical(recipe)] = entry.id
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, old = self._entries.popitem(last=False)
                self._bytes -= adapter_bytes(old.adapter)
                self.evictions += 1
            while len(self._recipes) > self.max_recipes:
                _, gone = self._recipes.popitem(last=False)
                self._by_recipe.pop(_canonical(gone), None)

    def entries(self) -> list[Entry]:
        """The cached entries, least recently used first."""
        with self._lock:
            return list(self._entries.values())

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)


def _canonical(recipe: dict[str, Any]) -> str:
    return json.dumps(recipe, sort_keys=True, ensure_ascii=False)


def peft_zip(adapter: Adapter, folder_name: str) -> bytes:
    """The adapter's PEFT folder (``adapter_config.json``, ``adapter_model.safetensors``, ``tagi.json``) as
    ``tagi generate`` writes it — the same ``Adapter.save``, so byte-identical files — zipped in memory."""
    with tempfile.TemporaryDirectory(prefix="tagi-serve-") as tmp:
        folder = adapter.save(Path(tmp) / folder_name)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.iterdir()):
                zf.write(path, f"{folder_name}/{path.name}")
        return buf.getvalue()
