"""Packed prefill (backbones/packing.py): joining rows as one row without padding compute what they compute
alone."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from tagi.backbones import PromptExample
from tagi.backbones.packing import pack
from tagi.backbones.prefix_store import PrefixStore
from tagi.lora import apply_lora
from tagi_testing import assert_close64, float64_copy, random_adapter

INS = "Definition: Copy the input word exactly.\n\n"
INS2 = "Definition: Answer with the input word written backwards, letter by letter.\n\n"
SRC = [
    "Input: moon.\nOutput: ",
    "Input: a much longer sky phrase, with several more words than the others.\nOutput: ",
    "Input: x.\nOutput: ",
]


CFG = LlamaConfig(num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, hidden_size=8)


def _kv(length: int, tag: float):
    """One layer of keys / values ``[1, 1, length, 1]`` holding ``tag``."""
    t = torch.full((1, 1, length, 1), tag)
    return [(t, t.clone())]


def test_pack_lays_out_a_known_case():
    """Prefixes of 2 and 3 tokens; rows (prefix 0, 1 token), (prefix 1, 3 tokens), (prefix 0, 2 tokens):
    positions, mask, last tokens and the gather of each row's keys, written out by hand."""
    p = pack([_kv(2, 0.0), _kv(3, 1.0)], [0, 1, 0], [[7], [8, 9, 10], [11, 12]], CFG, "cpu")
    assert p.ids.tolist() == [[7, 8, 9, 10, 11, 12]]
    assert p.pos.tolist() == [[2, 3, 4, 5, 2, 3]]  # each row counts from its own prefix's length
    assert p.token_rows.tolist() == [0, 1, 1, 1, 2, 2] and p.last.tolist() == [0, 3, 5]
    assert p.last_pos.tolist() == [[2], [5], [3]]
    # columns: prefix 0 (0, 1), prefix 1 (2, 3, 4), then the six packed tokens (5 ... 10)
    want = [
        [1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1],
    ]
    assert p.mask.shape == (1, 1, 6, 11) and (p.mask[0, 0] == 0).long().tolist() == want
    assert p.mask.dtype == torch.float32 and p.mask.min() == torch.finfo(torch.float32).min
    assert p.attn.tolist() == [[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    assert p.gather[p.attn.bool()].tolist() == [0, 1, 5, 2, 3, 4, 6, 7, 8, 0, 1, 9, 10]
    assert p.cache.layers[0].keys[0, 0, :, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    # row by row: the prefix columns, the packed tokens, and the causal mask over prefix + own tokens
    assert [(s.prefix, s.tokens) for s in p.segments] == [
        (slice(0, 2), slice(0, 1)),
        (slice(2, 5), slice(1, 4)),
        (slice(0, 2), slice(4, 6)),
    ]
    assert p.segments[0].mask.tolist() == [[[[True, True, True]]]]
    assert p.segments[1].mask[0, 0].long().tolist() == [
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],
    ]
    assert p.segments[2].mask[0, 0].long().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    for seg, row in zip(p.segments, want[:1] + want[1:2] + want[4:5], strict=True):  # the block mask's rows
        cols = list(range(5))[seg.prefix] + [5 + t for t in range(6)[seg.tokens]]
        assert [row[c] for c in cols] == seg.mask[0, 0, 0].long().tolist()


def test_pack_without_prefixes_and_refuses_empty_rows():
    p = pack([], [], [[1, 2], [3]], CFG, "cpu")
    assert p.cache is None and p.pos.tolist() == [[0, 1, 0]]
    assert [(s.prefix, s.tokens) for s in p.segments] == [
        (slice(0, 0), slice(0, 2)),
        (slice(0, 0), slice(2, 3)),
    ]
    assert (p.mask[0, 0] == 0).long().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="at least one token"):
        pack([], [], [[1], []], CFG, "cpu")


def test_a_packed_join_gives_every_row_the_logits_of_its_prompt_alone(backbones):
    """Rows over two adapters, the base model and a stored prefix, one input much longer than the others:
    after one packed prefill each row's first-token logits, and then its logits at a decode step, equal its
    whole sequence run alone with its adapter (float64); the cache is one row per example, no longer than
    its longest prompt, its real keys counted by ``attn``."""
    bb = float64_copy(backbones["tiny-llama"])
    torch.manual_seed(6)
    w = random_adapter(bb, 3, scale=1.0, dtype=torch.float64)
    for k in w.B:  # adapter 2 is the base model: zeros
        w.B[k] = w.B[k].clone()
        w.B[k][2] = 0
    examples = [PromptExample(INS, SRC[0], ""), PromptExample(INS2, SRC[1], ""), PromptExample(INS, SRC[2], ""),
                PromptExample("", SRC[0], "")]  # fmt: skip
    groups = [0, 1, 0, 2]
    store = PrefixStore(2**30)
    bb.store_prefix(INS2, w.index([1]), store, "two")
    calls = []
    handle = bb.model.register_forward_hook(
        lambda m, a, kw, out: calls.append(
            out.logits[0] if torch.is_tensor(kw.get("logits_to_keep")) else out.logits[:, -1]
        ),  # fmt: skip
        with_kwargs=True,
    )
    batch = bb.running_batch()
    batch.stop = torch.tensor([], dtype=torch.long)
    try:
        events = batch.join(
            examples, w, "fuse", 3, groups, None, store, ["one", "two", "base"], prefill="packed"
        )
        step = batch.step()
    finally:
        handle.remove()
    first = dict(events.tokens)
    lengths = [len(bb.prompt_ids(e.instruction, e.source, "fuse")) for e in examples]
    assert batch.rows.attn[:, :-2].sum(1).tolist() == lengths  # real keys: the prompt (+ 1 fed token)
    assert batch.rows.attn.shape[1] - 2 == max(lengths)
    assert (store.hits, store.misses) == (1, 3)
    prefill, decode = calls[-2], calls[-1]
    for i, e in enumerate(examples):
        adapter = w.index([groups[i]])
        prompt = bb.prompt_ids(e.instruction, e.source, "fuse")
        with torch.no_grad(), apply_lora(bb.model, adapter):
            alone = bb.model(input_ids=torch.tensor([prompt])).logits[:, -1]
            assert_close64(prefill[i : i + 1], alone)
            assert first[i] == int(alone.argmax())
            alone = bb.model(input_ids=torch.tensor([prompt + [first[i]]])).logits[:, -1]
            assert_close64(decode[i : i + 1], alone)
    assert [t for t, _ in step.tokens] == [0, 1, 2, 3]


def test_packed_and_padded_joins_decode_the_same_text(backbones):
    """float32, greedy, through ``generate``'s join: packing changes no text on the tiny model."""
    bb = backbones["tiny-llama"]
    torch.manual_seed(7)
    w = random_adapter(bb, 2)
    examples = [PromptExample(INS, s, "") for s in SRC] + [PromptExample(INS2, SRC[1], "")]
    texts = {}
    for packed in (False, True):
        batch, out = bb.running_batch(), {}
        how = "packed" if packed else "padded"
        out.update(batch.join(examples, w, "fuse", 6, [0, 0, 0, 1], prefill=how).finished)
        while len(batch):
            out.update(batch.step().finished)
        texts[packed] = [out[i] for i in range(len(examples))]
    assert texts[True] == texts[False]
