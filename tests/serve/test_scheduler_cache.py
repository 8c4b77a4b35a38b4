"""Scheduler and cache units: batch keys, per-row adapter stacking, LRU bounds and regeneration by id."""

from __future__ import annotations

import threading

import pytest
import torch
from serve_testing import WAIT_S, make_checkpoint

from tagi import Tagi
from tagi.lora import LoraWeights
from tagi.serve.cache import AdapterCache, Entry, adapter_bytes, adapter_id
from tagi.serve.scheduler import Row, Scheduler, batch_key, stack_rows
from tagi.serve.streams import TextStream
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
    assert stack_rows([Row(None, "", "s", "fuse", 8)]) == (None, None, ["base"])
    r1 = [Row(w1, "", s, "fuse", 8, adapter_key="one") for s in "st"]
    shared, rows, keys = stack_rows(r1)
    assert shared is w1 and rows is None and keys == ["one"]  # one adapter for the batch: passed once
    mixed, rows, keys = stack_rows(
        [Row(w2, "", "s", "fuse", 8, adapter_key="two"), Row(None, "", "s", "fuse", 8), r1[0],
         Row(w2, "", "t", "fuse", 8, adapter_key="two"), Row(None, "", "t", "fuse", 8)]
    )  # fmt: skip
    assert isinstance(mixed, LoraWeights) and mixed.batch_size == 3 and rows == [0, 1, 2, 0, 1]
    assert keys == ["two", "base", "one"]
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
    keys = [
        adapter_id(tagi.checkpoint_sha256, a.instruction, a.fuse, tagi.backbone.cfg.dtype) for a in adapters
    ]
    for k, a, text in zip(keys, adapters, ("one", "two", "three")):
        cache.put(Entry(k, a, text, 0.0, 0), {"instruction": text, "pos_examples": []})
        assert cache.nbytes <= 2 * size
    assert cache.get(keys[0]) is None and cache.get(keys[2]) is not None and len(cache) == 2
    assert cache.recipe(keys[0]) == {"instruction": "one", "pos_examples": []}  # can be made again
    assert cache.recipe("f" * 32) is None
    assert len(set(keys)) == 3 and all(len(k) == 32 for k in keys)
    f32 = "float32"
    assert (
        adapter_id("x", "a", True, f32)
        != adapter_id("x", "a", False, f32)
        != adapter_id("y", "a", False, f32)
    )
    assert adapter_id("x", "a", True, f32) != adapter_id("x", "a", True, "bfloat16")


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


class ScriptedBatch:
    """A running batch whose rows produce token 2 per call and finish after ``max_tokens`` calls with their
    source as text; its first step waits (``started`` set) until the test opens ``gate``."""

    can_join = True

    def __init__(self, started, gate):
        self.started, self.gate = started, gate
        self.left: dict[int, tuple[int, str]] = {}
        self.joins: list[tuple[list[str], int]] = []  # (sources joining, rows already running)
        self.join_steps: list[int] = []  # decode steps taken before each join
        self.steps = 0

    def __len__(self):
        return len(self.left)

    def _emit(self, tags):
        from tagi.backbones.running import Events

        events = Events(tokens=[(t, 2) for t in tags])
        for t in tags:
            n, text = self.left[t]
            self.left[t] = (n - 1, text)
            if n == 1:
                events.finished.append((t, text))
                del self.left[t]
        return events

    def join(
        self, examples, weights, mode, max_tokens, adapter_rows, tags, prefix_store=None, keys=None,
        prefill="padded",
    ):  # fmt: skip
        """As ``RunningBatch.join``: with ``prefill="fused"`` and rows running, their step and the join in
        one call (running rows first)."""
        from tagi.backbones.running import Events

        running = list(self.left) if prefill == "fused" else []
        self.joins.append(([e.source for e in examples], len(self.left)))
        self.join_steps.append(self.steps)
        if running:
            self.steps += 1
        stepped = self._emit(running)
        self.left.update({t: (max_tokens, e.source) for t, e in zip(tags, examples)})
        joined = self._emit(tags)
        return Events(stepped.tokens + joined.tokens, stepped.finished + joined.finished)

    def step(self):
        if self.steps == 0:
            self.started.set()
            assert self.gate.wait(WAIT_S)
        self.steps += 1
        return self._emit(list(self.left))


class ContinuousStub(StubBackbone):
    def __init__(self):
        super().__init__()
        self.started, self.gate, self.batches = threading.Event(), threading.Event(), []

    def running_batch(self, temperature, top_p):
        self.batches.append(ScriptedBatch(self.started, self.gate))
        return self.batches[-1]


def test_a_request_arriving_mid_decode_joins_at_the_next_step_and_finishes_first():
    """Row "long" (6 tokens) is decoding when "short" (same settings, 6 tokens) and "other" (other
    max_tokens) arrive: "short" joins the running batch at the next step (``join_min_rows=1``); "other" waits
    for the batch to drain (nothing joins past it), then starts a batch of its own."""
    bb = ContinuousStub()
    scheduler = Scheduler(bb, batch_wait_s=0, join_min_rows=1)
    done = []
    try:
        (long,) = scheduler.submit_rows([Row(None, "", "long", "fuse", 6)])
        assert bb.started.wait(WAIT_S)  # "long" has joined and its first step is running
        (short,) = scheduler.submit_rows([Row(None, "", "short", "fuse", 6)])
        (other,) = scheduler.submit_rows([Row(None, "", "other", "fuse", 2)])
        (late,) = scheduler.submit_rows([Row(None, "", "late", "fuse", 6)])
        for f in (long, short, other, late):
            f.add_done_callback(lambda f: done.append(f.result()))
        bb.gate.set()
        assert [f.result(timeout=WAIT_S) for f in (long, short, other, late)] == [
            "long",
            "short",
            "other",
            "late",
        ]
    finally:
        scheduler.close()
    first, second, third = bb.batches
    assert first.joins == [(["long"], 0), (["short"], 1)]  # joined while "long" was decoding
    assert second.joins == [(["other"], 0)] and third.joins == [(["late"], 0)]  # no row jumps the queue
    assert done == ["long", "short", "other", "late"]


def test_seq2seq_rows_of_different_adapters_decode_as_one_batch_as_each_alone(backbones):
    """T5 has no running batch: the worker gathers the waiting rows and runs one ``generate``; each row's
    text equals the row decoded alone with its adapter (float64, see tagi_testing.float64_copy)."""
    from tagi.backbones import PromptExample
    from tagi_testing import float64_copy

    bb = float64_copy(backbones["tiny-t5"])
    torch.manual_seed(2)
    w = [random_adapter(bb, 1, scale=1.0, dtype=torch.float64) for _ in range(2)]
    sources = ["Input: moon.", "Input: a longer sky phrase.", "Input: x."]
    calls = []
    scheduler = Scheduler(bb, batch_wait_s=0, on_batch=lambda kind, rows, s: calls.append((kind, rows)))
    assert not scheduler.continuous
    try:
        rows = [
            Row(w[i % 2], "Copy the input.", s, "fuse", 5, adapter_key=str(i % 2))
            for i, s in enumerate(sources)
        ]
        outs = [f.result(timeout=WAIT_S) for f in scheduler.submit_rows(rows)]
    finally:
        scheduler.close()
    alone = [
        bb.generate([PromptExample("Copy the input.", s, "")], w[i % 2], "fuse", 5)[0]
        for i, s in enumerate(sources)
    ]
    assert outs == alone and calls == [("batch", 3)]  # one start-to-end batch


@pytest.mark.parametrize(
    ("running", "arriving", "max_batch", "joined_after_steps"),
    [
        (3, 3, 16, 1),  # a group of join_min_rows (3) joins at the next step
        (3, 2, 16, 3),  # fewer wait: held back join_max_steps (2) steps, then they join
        (3, 1, 4, 1),  # the one free row is "enough to fill the room"
        (2, 1, 16, 1),  # fewer than join_min_rows decode: few requests in flight, nothing to wait for
    ],
)
def test_rows_join_a_running_batch_in_groups(running, arriving, max_batch, joined_after_steps):
    """Rows arriving while a batch decodes join it as one prefill: at the next step once ``join_min_rows``
    (3) wait, they fill the room or fewer than 3 rows decode, else after ``join_max_steps`` (2) steps.
    Counted in decode steps, so the outcome does not depend on the machine's speed."""
    bb = ContinuousStub()
    scheduler = Scheduler(bb, max_batch=max_batch, batch_wait_s=0, join_min_rows=3, join_max_steps=2)
    first = [f"long{i}" for i in range(running)]
    try:
        # one request: its rows start the batch together
        started = scheduler.submit_rows([Row(None, "", src, "fuse", 8) for src in first])
        assert bb.started.wait(WAIT_S)  # the batch is decoding; its first step waits for the gate
        sources = [f"r{i}" for i in range(arriving)]
        futures = [scheduler.submit_rows([Row(None, "", src, "fuse", 8)])[0] for src in sources]
        bb.gate.set()
        assert [f.result(timeout=WAIT_S) for f in futures] == sources
        assert [f.result(timeout=WAIT_S) for f in started] == first
    finally:
        scheduler.close()
    (batch,) = bb.batches
    assert batch.joins == [(first, 0), (sources, running)]  # one prefill for the group
    assert batch.join_steps == [0, joined_after_steps]


@pytest.mark.parametrize(
    ("prefill", "calls"),
    [
        ("fused", [("prefill", 2), ("decode", 2), ("fused", 3), ("decode", 3), ("decode", 1), ("decode", 1)]),
        (
            "packed",
            [("prefill", 2), ("decode", 2), ("prefill", 1), ("decode", 3), ("decode", 3), ("decode", 1)],
        ),
    ],
)
def test_a_fused_join_is_the_running_rows_step(prefill, calls):
    """Two rows (4 tokens) decode when one more (4 tokens) arrives: fused, it joins in the call that steps
    the running two (one model call of 3 rows gives them their third token and it its first); packed, a
    prefill of its own gives it its first, then a step of all three. The same texts either way."""
    bb = ContinuousStub()
    seen = []
    scheduler = Scheduler(
        bb,
        batch_wait_s=0,
        join_min_rows=1,
        prefill=prefill,
        on_batch=lambda kind, rows, s: seen.append((kind, rows)),
    )
    try:
        first = scheduler.submit_rows([Row(None, "", src, "fuse", 4) for src in ("a", "b")])
        assert bb.started.wait(WAIT_S)  # the first step waits for the gate
        (late,) = scheduler.submit_rows([Row(None, "", "c", "fuse", 4)])
        bb.gate.set()
        assert [f.result(timeout=WAIT_S) for f in (*first, late)] == ["a", "b", "c"]
    finally:
        scheduler.close()
    assert seen == calls
    assert bb.batches[0].joins == [(["a", "b"], 0), (["c"], 2)]


def test_prefill_setting_is_checked():
    with pytest.raises(ValueError, match="prefill must be one of fused, packed, padded"):
        Scheduler(StubBackbone(), prefill="chunked")


@pytest.mark.parametrize(("min_rows", "max_steps"), [(0, 4), (4, -1)])
def test_join_settings_are_checked(min_rows, max_steps):
    with pytest.raises(ValueError, match="join_min_rows must be >= 1 and join_max_steps >= 0"):
        Scheduler(StubBackbone(), join_min_rows=min_rows, join_max_steps=max_steps)
