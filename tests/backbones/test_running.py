"""Continuous batching (backbones/running.py): rows joining and leaving a decode in progress.

Every claim is checked in float64 against each row decoded alone (see ``tagi_testing.float64_copy``): the
logits a row gets at every step of the running batch equal its whole sequence run alone with its adapter.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tagi.backbones import PromptExample
from tagi.lora import apply_lora
from tagi_testing import assert_close64, float64_copy, random_adapter

INS = "Definition: Copy the input word exactly.\n\n Positive Example 1 -\nInput: sun.\n Output: sun.\n\n"
INS2 = "Definition: Answer with the input word written backwards.\n\n"
SRC = [
    "Now complete the following example -\nInput: moon.\nOutput: ",
    "Now complete the following example -\nInput: a longer sky phrase.\nOutput: ",
    "Now complete the following example -\nInput: x.\nOutput: ",
]


class LogitsTap:
    """Records the last-position logits of every decoding call (prefills and steps, which pass positions;
    not the prefix runs): ``calls[i]`` is ``[rows, V]`` (a packed prefill keeps one position per row)."""

    def __init__(self, model) -> None:
        self.calls: list[torch.Tensor] = []

        def hook(module, args, kwargs, out):
            if kwargs.get("position_ids") is not None:
                packed = torch.is_tensor(kwargs.get("logits_to_keep"))
                self.calls.append(out.logits[0] if packed else out.logits[:, -1])

        self.handle = model.register_forward_hook(hook, with_kwargs=True)

    def close(self) -> None:
        self.handle.remove()


def alone_logits(bb, example: PromptExample, adapter, tokens: list[int]) -> torch.Tensor:
    """Logits after ``prompt + tokens`` run as one sequence with ``adapter`` (no cache, no padding)."""
    ids = torch.tensor([bb.prompt_ids(example.instruction, example.source, "fuse") + tokens])
    with torch.no_grad(), apply_lora(bb.model, adapter):
        return bb.model(input_ids=ids).logits[:, -1]


def endless(bb):
    """A running batch whose rows stop at their token limit only (no stop token), so which rows share each
    step does not depend on what a random model emits."""
    batch = bb.running_batch()
    batch.stop = torch.tensor([], dtype=torch.long)
    return batch


def alone_text(bb, example: PromptExample, adapter, limit: int) -> str:
    batch, out = endless(bb), {}
    out.update(batch.join([example], adapter, "fuse", limit).finished)
    while len(batch):
        out.update(batch.step().finished)
    return out[0]


def drive(batch, tap, schedule):
    """Run ``schedule`` (("join", args...) or ("step",)) then steps until the batch is empty; returns, per
    tag, its text and, per model call, the tags in batch order (``Events.tokens``)."""
    texts, order, tokens = {}, [], {}

    def record(events):
        order.append([t for t, _ in events.tokens])
        for tag, tok in events.tokens:
            tokens.setdefault(tag, []).append(tok)
        texts.update(events.finished)

    for item in schedule:
        record(batch.join(*item[1:]) if item[0] == "join" else batch.step())
    while len(batch):
        record(batch.step())
    assert len(tap.calls) == len(order)
    return texts, order, tokens


@pytest.mark.parametrize(
    ("how", "calls"),
    [
        ("padded", [2, 2, 2, 4, 1, 5, 5, 2, 2]),
        ("packed", [2, 2, 2, 4, 1, 5, 5, 2, 2]),
        ("fused", [2, 2, 4, 4, 5, 5, 3]),  # a join into running rows is their step too: running rows first
    ],
)
def test_rows_joining_a_running_batch_get_the_logits_of_their_own_sequence(backbones, how, calls):
    """A batch of one shared adapter runs two steps; rows of another task (another prefix length) over two
    adapters join, then a base-model row: at every call each row's logits equal its whole sequence run
    alone, each row stops at its own limit, and its text equals the row decoded alone. Joining rows are
    prefilled left-padded, packed into one row without padding, or packed in the running rows' decode step
    (one model call)."""
    bb = float64_copy(backbones["tiny-llama"])
    torch.manual_seed(3)
    w = random_adapter(bb, 3, scale=1.0, dtype=torch.float64)
    rows = {  # tag -> (example, adapter, max_new_tokens)
        "a0": (PromptExample(INS, SRC[0], ""), w.index([0]), 7),
        "a1": (PromptExample(INS, SRC[1], ""), w.index([0]), 7),
        "b0": (PromptExample(INS2, SRC[2], ""), w.index([1]), 4),
        "b1": (PromptExample(INS2, SRC[0], ""), w.index([2]), 4),
        "c0": (PromptExample("", SRC[1], ""), None, 3),
    }
    batch, tap = endless(bb), LogitsTap(bb.model)
    batch.join = functools.partial(batch.join, prefill=how)  # "fused": a join into an empty batch is packed
    try:
        texts, order, tokens = drive(batch, tap, [
            ("join", [rows["a0"][0], rows["a1"][0]], rows["a0"][1], "fuse", 7, None, ["a0", "a1"]),
            ("step",),
            ("join", [rows["b0"][0], rows["b1"][0]], w.index([1, 2]), "fuse", 4, [0, 1], ["b0", "b1"]),
            ("step",),
            ("join", [rows["c0"][0]], None, "fuse", 3, None, ["c0"]),
        ])  # fmt: skip
    finally:
        tap.close()
    seen: dict[str, list[int]] = {tag: [] for tag in rows}
    for logits, tags in zip(tap.calls, order, strict=True):
        for i, tag in enumerate(tags):
            example, adapter, _ = rows[tag]
            assert_close64(logits[i : i + 1], alone_logits(bb, example, adapter, seen[tag]))
            seen[tag].append(int(logits[i].argmax()))
    assert [len(t) for t in order] == calls  # joins, steps, rows leaving at their limits
    for tag, (example, adapter, limit) in rows.items():
        assert len(tokens[tag]) == limit and texts[tag] == alone_text(bb, example, adapter, limit)
    assert not len(batch) and batch.rows is None


def test_joining_drops_leading_columns_no_row_uses(backbones):
    """Long-prompt rows leave; rows joining later do not carry their padding: the merged cache starts at
    the first column a row uses, and the rows still decode as alone."""
    bb = float64_copy(backbones["tiny-llama"])
    torch.manual_seed(4)
    w = random_adapter(bb, 1, scale=1.0, dtype=torch.float64)
    long_ex, short = PromptExample(INS, SRC[1], ""), PromptExample(INS2, SRC[2], "")
    batch = endless(bb)
    batch.join([long_ex], w, "fuse", 1)  # one token: leaves at once
    assert not len(batch)
    batch.join([long_ex], w, "fuse", 2, tags=["long"])
    batch.join([short], w, "fuse", 8, tags=["short"])  # left-padded to the long row's length
    rows = batch.rows
    assert rows.cache.get_seq_length() == rows.attn.shape[1] - 1 and not rows.attn[1, 0]
    out = {}
    while "long" not in out:
        out.update(batch.step().finished)
    batch.join([short], w, "fuse", 8, tags=["short2"])
    rows = batch.rows
    assert rows.attn[:, 0].any() and rows.cache.get_seq_length() == rows.attn.shape[1] - 1
    assert rows.adapter is w  # one shared adapter stays shared (the computation `tagi predict` makes)
    while len(batch):
        out.update(batch.step().finished)
    assert out["short"] == out["short2"] == alone_text(bb, short, w, 8)


def test_generate_is_one_join_and_steps(backbones):
    """``generate`` = join everything, then step: the same texts and the same per-step rows reported."""
    bb = backbones["tiny-llama"]
    torch.manual_seed(5)
    w = random_adapter(bb, 3)
    examples = [PromptExample(INS, s, "") for s in SRC]
    reported = []
    texts = bb.generate(examples, w, "fuse", 6, on_step=lambda rows, toks: reported.append(rows.tolist()))
    batch = bb.running_batch()
    events, steps, by_tag = batch.join(examples, w, "fuse", 6), [], {}
    while True:
        steps.append([t for t, _ in events.tokens])
        by_tag.update(events.finished)
        if not len(batch):
            break
        events = batch.step()
    assert texts == [by_tag[i] for i in range(3)] and reported == steps


def test_a_cache_without_growing_layers_refuses_to_join(backbones):
    bb = backbones["tiny-llama"]
    batch = endless(bb)
    batch.join([PromptExample(INS, SRC[0], "")], None, "fuse", 50)
    assert batch.can_join
    for layer in batch.rows.cache.layers:
        layer.is_sliding = True  # as a sliding-window layer would be
    assert not batch.can_join
    with pytest.raises(RuntimeError, match="cannot take rows"):
        batch.join([PromptExample(INS, SRC[1], "")], None, "fuse", 4)


@pytest.mark.parametrize("how", ["packed", "fused"])
def test_joining_rows_attend_to_their_own_keys_only(backbones, how, monkeypatch):
    """A packed or fused join of three rows over two stored prefixes: every attention call of the joining
    part runs one row, its queries over exactly its prefix and its own tokens (no score between two rows);
    the running rows' part, in a fused call, runs their ``[A, H, 1, D]`` queries over their own caches."""
    from tagi.backbones import fused

    bb = backbones["tiny-llama"]
    torch.manual_seed(8)
    w = random_adapter(bb, 2)
    batch = endless(bb)
    batch.join([PromptExample(INS, SRC[0], "")] * 2, w.index([0]), "fuse", 5, None, ["r0", "r1"])
    shapes = []
    real = fused.sdpa_attention_forward

    def spy(module, query, key, value, mask, **kwargs):
        shapes.append((query.shape[0], query.shape[2], key.shape[2]))  # (rows, queries, keys)
        return real(module, query, key, value, mask, **kwargs)

    monkeypatch.setattr(fused, "sdpa_attention_forward", spy)
    joining = [
        PromptExample(INS, SRC[1], ""),
        PromptExample(INS2, SRC[2], ""),
        PromptExample(INS, SRC[2], ""),
    ]
    if how == "packed":
        batch.rows = None  # a packed prefill of a new batch: the same call with no running rows
    batch.join(joining, w, "fuse", 5, [0, 1, 0], ["j0", "j1", "j2"], prefill=how)
    own = [
        (1, len(bb.suffix_ids(e.source)), len(bb.prompt_ids(e.instruction, e.source, "fuse")))
        for e in joining
    ]
    running = [(2, 1, len(bb.prompt_ids(INS, SRC[0], "fuse")) + 1)] if how == "fused" else []
    layers = bb.model.config.num_hidden_layers
    assert shapes == (own + running) * layers


def test_a_fused_join_with_an_empty_source_is_a_step_then_a_padded_join(backbones):
    """A joining row with no source token cannot be packed: a fused join then steps the running rows and
    joins the rows padded, with exactly the events and texts of doing those two calls itself."""
    bb = backbones["tiny-llama"]
    torch.manual_seed(8)
    w = random_adapter(bb, 2)
    running = [PromptExample(INS, SRC[0], ""), PromptExample(INS2, SRC[1], "")]
    joining = [PromptExample(INS, "", ""), PromptExample(INS2, SRC[2], "")]
    assert not bb.suffix_ids("")  # the case itself: nothing to pack for the first joining row
    runs = []
    for fused in (True, False):
        batch, texts, calls = endless(bb), {}, []
        batch.join(running, w, "fuse", 5, [0, 1], ["r0", "r1"])
        if fused:
            events = [batch.join(joining, w, "fuse", 3, [0, 1], ["j0", "j1"], prefill="fused")]
        else:
            events = [batch.step(), batch.join(joining, w, "fuse", 3, [0, 1], ["j0", "j1"])]
        calls.append([t for e in events for t in e.tokens])
        while len(batch):
            e = batch.step()
            calls.append(e.tokens)
            texts.update(e.finished)
        runs.append((calls, texts))
    assert runs[0] == runs[1] and set(runs[0][1]) == {"r0", "r1", "j0", "j1"}


def test_join_rejects_an_unknown_prefill(backbones):
    batch = backbones["tiny-llama"].running_batch()
    with pytest.raises(ValueError, match="prefill must be one of fused, packed, padded"):
        batch.join([PromptExample(INS, SRC[0], "")], None, "fuse", 2, prefill="fast")
    assert len(batch) == 0
