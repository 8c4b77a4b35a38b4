"""Prefix caching across calls (backbones/prefix_store.py): stored prefixes are the computation they replace."""

from __future__ import annotations

import torch

from tagi.backbones import PromptExample
from tagi.backbones.prefix_store import PrefixStore, kv_bytes, storable
from tagi_testing import assert_rows_match_full_prompts, float64_copy, random_adapter

INS = "Definition: Copy the input word exactly.\n\n"
INS2 = "Definition: Answer with the input word written backwards, letter by letter.\n\n"
SRC = ["Input: moon.\nOutput: ", "Input: a longer sky phrase.\nOutput: ", "Input: x.\nOutput: "]


def test_one_stored_prefix_is_exactly_the_prefix_run_alone(backbones):
    """One prefix: computed alone, no mask, with and without the store — the same tensors bit for bit, and
    the second call takes it from the store."""
    bb = backbones["tiny-llama"]
    torch.manual_seed(0)
    w = random_adapter(bb, 1)
    prefixes = [bb.prefix_ids(INS, "fuse")] * 3
    store = PrefixStore(2**30)
    plain, mask = bb._prefix_cache(prefixes, [0, 0, 0], w)
    for _ in range(2):
        stored, smask = bb._prefix_cache(prefixes, [0, 0, 0], w, store, ["a"])
        assert torch.equal(smask, mask)
        for a, b in zip(plain.layers, stored.layers, strict=True):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert (store.misses, store.hits, len(store)) == (1, 1, 1)


def test_mixed_stored_and_new_prefixes_give_each_row_its_own_logits(backbones):
    """Rows over two adapters and the base model, one prefix already stored: every row's next-token logits
    equal its whole prompt run alone with its adapter (float64), and only the new prefixes were computed."""
    bb = float64_copy(backbones["tiny-llama"])
    torch.manual_seed(1)
    w = random_adapter(bb, 3, scale=1.0, dtype=torch.float64)
    w.A = {k: v.clone() for k, v in w.A.items()}
    for k in w.B:  # adapter 2 is the base model: zeros
        w.B[k] = w.B[k].clone()
        w.B[k][2] = 0
    store = PrefixStore(2**30)
    bb._prefix_cache([bb.prefix_ids(INS2, "fuse")], [0], w.index([1]), store, ["two"])  # stored beforehand
    examples = [PromptExample(INS, SRC[0], ""), PromptExample(INS2, SRC[1], ""), PromptExample(INS, SRC[2], ""),
                PromptExample(INS2, SRC[2], ""), PromptExample("", SRC[0], "")]  # fmt: skip
    groups = [0, 1, 0, 1, 2]
    prefixes = [bb.prefix_ids(e.instruction, "fuse") for e in examples]
    cache, pmask = bb._prefix_cache(prefixes, groups, w.index(groups), store, ["one", "two", "base"])
    assert (store.misses, store.hits, len(store)) == (3, 1, 3)  # "one" and "base" computed, "two" reused
    assert_rows_match_full_prompts(bb, cache, pmask, examples, w, groups)


def test_the_store_is_an_lru_bounded_in_bytes():
    kv = [(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4))]
    size = kv_bytes(kv)
    assert size == 2 * 2 * 5 * 4 * 4
    store = PrefixStore(2 * size)
    for key in "abc":
        store.put(key, kv)
        assert store.nbytes <= 2 * size
    assert store.get("a") is None and store.get("c") is kv and len(store) == 2
    store.put("b", kv)  # replacing keeps the count of bytes right
    assert store.nbytes == 2 * size and (store.hits, store.misses) == (1, 1)
    big = PrefixStore(1)
    big.put("x", kv)
    assert len(big) == 1  # the most recent entry always stays


def test_llama_caches_are_storable(backbones):
    assert storable(backbones["tiny-llama"].model)
