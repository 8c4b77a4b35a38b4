"""Scheduler and cache units: batch keys, per-row adapter stacking, LRU bounds and regeneration by id."""

from __future__ import annotations

import torch
from serve_testing import WAIT_S, make_checkpoint

from tagi import Tagi
from tagi.lora import LoraWeights
from tagi.serve.cache import AdapterCache, Entry, adapter_bytes, adapter_id
from tagi.serve.scheduler import Row, Scheduler, TextStream, batch_key, stack_rows
from tagi_testing import random_adapter


def test_batch_key_ignores_the_adapter_but_not_the_decoding_settings(backbones):
    bb = backbones["tiny-llama"]
    w1, w2 = random_adapter(bb, 1), random_adapter(bb, 1)
    greedy = Row(w1, "ins a", "src", "fuse", 8)
    assert batch_key(greedy, "causal") == batch_key(Row(w2, "ins b", "s", "fuse", 8), "causal")
    assert batch_key(greedy, "causal") == batch_key(Row(None, "", "s", "none", 8), "causal")
    assert batch_key(greedy, "seq2seq") != batch_key(Row(None, "", "s", "none", 8), "seq2seq")
    assert batch_key(greedy, "causal") != batch_key(Row(w1, "i", "s", "fuse", 9), "causal")
    assert batch_key(greedy, "causal") != batch_key(Row(w1, "i", "s", "fuse", 8, temperature=0.7), "causal")
    seeded = [Row(w1, "i", "s", "fuse", 8, 0.7, 1.0, seed=3, group=g) for g in (1, 1, 2)]
    assert batch_key(seeded[0], "causal") == batch_key(seeded[1], "causal") != batch_key(seeded[2], "causal")


def test_stack_rows_gives_each_distinct_adapter_once_and_base_rows_zeros(backbones):
    bb = backbones["tiny-llama"]
    w1, w2 = random_adapter(bb, 1), random_adapter(bb, 1)
    assert stack_rows([Row(None, "", "s", "fuse", 8)]) == (None, None)
    shared, rows = stack_rows([Row(w1, "", "s", "fuse", 8), Row(w1, "", "t", "fuse", 8)])
    assert shared is w1 and rows is None  # one adapter for the batch: passed once, batch 1
    mixed, rows = stack_rows(
        [Row(w2, "", "s", "fuse", 8), Row(None, "", "s", "fuse", 8), Row(w1, "", "s", "fuse", 8),
         Row(w2, "", "t", "fuse", 8), Row(None, "", "t", "fuse", 8)]
    )  # fmt: skip
    assert isinstance(mixed, LoraWeights) and mixed.batch_size == 3 and rows == [0, 1, 2, 0, 1]
    name = w1.names[0]
    assert torch.equal(mixed.A[name][0], w2.A[name][0]) and torch.equal(mixed.A[name][2], w1.A[name][0])
    assert not mixed.A[name][1].any() and not mixed.B[name][1].any()


def test_lru_is_bounded_in_bytes_and_evicted_ids_are_regenerated(backbones, tmp_path):
    tagi = Tagi.from_checkpoint(
        make_checkpoint(backbones["tiny-llama"], tmp_path / "c"), backbone=backbones["tiny-llama"]
    )
    adapters = [tagi.generate_adapter(t) for t in ("one", "two", "three")]
    size = adapter_bytes(adapters[0])
    cache = AdapterCache(max_bytes=2 * size)
    keys = [adapter_id(tagi.checkpoint_sha256, a.instruction, a.fuse) for a in adapters]
    for k, a, text in zip(keys, adapters, ("one", "two", "three")):
        cache.put(Entry(k, a, text, 0.0, 0), {"instruction": text, "pos_examples": []})
        assert cache.nbytes <= 2 * size
    assert cache.get(keys[0]) is None and cache.get(keys[2]) is not None and len(cache) == 2
    assert cache.recipe(keys[0]) == {"instruction": "one", "pos_examples": []}  # can be made again
    assert cache.recipe("f" * 32) is None
    assert len(set(keys)) == 3 and all(len(k) == 32 for k in keys)
    assert adapter_id("x", "a", True) != adapter_id("x", "a", False) != adapter_id("y", "a", False)


class FakeTokenizer:
    """Token t decodes to VOCAB[t]; special tokens (0) are skipped."""

    VOCAB = {0: "<eos>", 1: " ", 2: "ab", 3: "c", 4: "\ufffd"}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.VOCAB[i] for i in ids if not (skip_special_tokens and i == 0))


def test_text_stream_pieces_concatenate_to_the_final_output():
    pieces = []
    stream = TextStream(FakeTokenizer(), {0}, pieces.append)
    for t in (1, 2, 1, 3, 4, 3, 1, 0, 2):  # leading / trailing spaces, a partial character, then a stop
        stream.push(t)
    assert pieces == ["ab", " c", "\ufffdc"]  # whitespace and an incomplete character wait for more text
    stream.finish("ab c\ufffdc")
    assert "".join(pieces) == "ab c\ufffdc"


def test_text_stream_sends_the_rest_at_the_end_and_survives_a_gone_listener():
    pieces = []
    stream = TextStream(FakeTokenizer(), {0}, pieces.append)
    stream.finish("whole text")  # no steps reported (T5): everything at the end
    assert pieces == ["whole text"]

    def gone(_piece):
        raise RuntimeError("event loop closed")

    TextStream(FakeTokenizer(), {0}, gone).push(2)  # does not raise


class StubBackbone:
    """Decodes tokens 2, 1, 3 ("ab", " ", "c") for one row, reporting each step, then returns "ab c"."""

    family, stop_ids, device, tokenizer = "causal", {0}, torch.device("cpu"), FakeTokenizer()

    def __init__(self):
        self.finished = False

    def generate(
        self, examples, weights, mode, max_tokens, temperature, top_p, on_step=None, adapter_rows=None
    ):
        for t in (2, 1, 3, 0):
            on_step(torch.tensor([0]), torch.tensor([t]))
        self.finished = True
        return ["ab c"]


def test_the_scheduler_streams_pieces_while_the_batch_decodes():
    bb, seen = StubBackbone(), []
    scheduler = Scheduler(bb, batch_wait_s=0)
    try:
        row = Row(None, "", "src", "fuse", 4, stream=lambda piece: seen.append((piece, bb.finished)))
        (future,) = scheduler.submit_rows([row])
        assert future.result(timeout=WAIT_S) == "ab c"
    finally:
        scheduler.close()
    assert seen == [("ab", False), (" c", False)]  # both pieces arrived before decoding ended
