"""Backbones: target enumeration, prompt modes, prefix-cache parity, FiD fusion, generation."""

from __future__ import annotations

import copy

import pytest
import torch

from tagi.backbones import PromptExample, load_backbone
from tagi.backbones.base import IGNORE
from tagi.config import ModelConfig
from tagi.lora import LoraWeights, apply_lora
from tagi_testing import assert_close64, assert_rows_match_full_prompts, float64_copy, random_adapter

INS = (
    "Definition: Copy the input word exactly.\n\n Positive PromptExample 1 -\nInput: sun.\n Output: sun.\n\n"
)
EXS = [
    PromptExample(INS, "Now complete the following example -\nInput: moon.\nOutput: ", "moon"),
    PromptExample(
        INS,
        "Now complete the following example -\nInput: a longer sky phrase.\nOutput: ",
        "a longer sky phrase",
    ),
    PromptExample(INS, "Now complete the following example -\nInput: x.\nOutput: ", "x"),
]

# GREEDY: rows decoded in different batches (another padding, a shared prefix cache) get logits that are
# equal up to rounding, so their greedy tokens are equal unless two logits nearly tie; in float32 a tie
# within rounding could flip on some CPU, in float64 (tagi_testing.float64_copy) it is out of reach.


def test_targets_default_and_gqa_shapes(backbones):
    llama = backbones["tiny-llama"]
    kinds = {t.kind for t in llama.targets}
    assert kinds == {"q_proj", "v_proj"} and len(llama.targets) == 4
    q = next(t for t in llama.targets if t.kind == "q_proj")
    v = next(t for t in llama.targets if t.kind == "v_proj")
    assert (q.in_features, q.out_features) == (32, 32)
    assert (v.in_features, v.out_features) == (32, 16)  # grouped-query attention: 2 kv heads of 8
    t5 = backbones["tiny-t5"]
    assert {t.kind for t in t5.targets} == {
        f"{p}_{x}" for p in ("enc_self", "dec_self", "dec_cross") for x in "qv"
    }
    assert len(t5.targets) == 12


def test_labels_cover_target_tokens_only(backbone):
    batch = backbone.collate(EXS, "concat")
    for i, ex in enumerate(EXS):
        lab = batch.labels[i][batch.labels[i] != IGNORE].tolist()
        expect = backbone.tokenizer(ex.target, add_special_tokens=False)["input_ids"] + [
            backbone.tokenizer.eos_token_id
        ]
        assert lab == expect
    logits, labels, rows = backbone.forward(batch)
    assert logits.shape == (batch.num_label_tokens, backbone.model.config.vocab_size)
    assert rows.tolist() == sorted(rows.tolist())


def test_forward_logits_equal_the_models_own_at_label_positions(backbone):
    """Our forward projects only label positions; transformers' forward projects all. Same rows (up to
    rounding: compared in float64)."""
    bb = float64_copy(backbone)
    batch = bb.collate(EXS, "concat")
    torch.manual_seed(3)
    adapter = random_adapter(bb, n=len(EXS), dtype=torch.float64)
    cfg = bb.model.config
    scales = [True, False] if bb.family == "seq2seq" else [None]  # T5: tied (scaled) and untied head
    for scale in scales:
        if scale is not None:
            cfg.scale_decoder_outputs = scale
        logits, labels, _ = bb.forward(batch, adapter)
        with torch.no_grad(), apply_lora(bb.model, adapter):
            if bb.family == "seq2seq":
                full = bb.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                labels=batch.labels).logits  # [N, L, V]  # fmt: skip
                ref = full[batch.labels != IGNORE]
            else:
                full = bb.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                ref = full[:, :-1][batch.labels[:, 1:] != IGNORE]  # token t predicts t+1
        assert logits.shape == ref.shape and labels.shape == (ref.shape[0],)
        assert_close64(logits.detach(), ref)


@pytest.mark.parametrize("mode", ["fuse", "concat"])
def test_shared_prefix_gives_the_same_logits_and_gradients(backbone, mode):
    """Training with each distinct prompt prefix run once == every row run in full (decoder-only); T5
    ignores the switch. Two tasks, rows of one task share their adapter, as generated adapters do."""
    other = "Definition: Reverse the word.\n\n"
    exs = [*EXS, PromptExample(other, EXS[0].source, "noom"), PromptExample(other, EXS[2].source, "x")]
    bb = float64_copy(backbone)  # the same logits and gradients up to rounding: compared in float64
    torch.manual_seed(5)
    two = random_adapter(bb, n=2, scale=1.0, dtype=torch.float64)
    rows = [0, 0, 0, 1, 1]
    full, shared = bb.collate(exs, mode), bb.collate(exs, mode, share_prefix=True)
    if bb.family == "seq2seq":
        assert shared.prefix_ids is None and torch.equal(shared.input_ids, full.input_ids)
        return
    assert shared.prefix_ids.shape[0] == 2 and shared.prefix_rows.tolist() == rows
    assert (
        shared.input_ids.shape[1] < full.input_ids.shape[1]
        and shared.num_label_tokens == full.num_label_tokens
    )
    results = []
    for batch in (full, shared):
        a = {k: v.detach().clone().requires_grad_(True) for k, v in two.A.items()}
        b = {k: v.detach().clone().requires_grad_(True) for k, v in two.B.items()}
        logits, labels, idx = bb.forward(batch, LoraWeights(a, b, two.scaling).index(rows))
        (logits.log_softmax(-1).mean(-1) * torch.arange(1, len(labels) + 1)).sum().backward()
        grads = torch.cat([t.grad.flatten() for t in [*a.values(), *b.values()]])
        results.append((logits.detach(), labels, idx, grads))
    (lf, yf, rf, gf), (ls, ys, rs, gs) = results
    assert torch.equal(yf, ys) and torch.equal(rf, rs)
    assert_close64(ls, lf)  # measured: 7e-15 of max |logit|
    assert_close64(gs, gf)  # measured: 6e-15 of max |gradient|


def test_causal_shared_prefix_needs_two_prefix_tokens(backbones):
    """An empty prefix (mode "none" without a chat head) cannot be shared: the batch stays unshared."""
    bb = backbones["tiny-llama"]
    batch = bb.collate(EXS, "none", share_prefix=True)
    assert batch.prefix_ids is None and torch.equal(batch.input_ids, bb.collate(EXS, "none").input_ids)


def test_causal_prefix_cache_equals_full_prompt(backbones):
    """Logits with the instruction's KV cache (computed with the adapter) == the whole prompt at once."""
    bb = float64_copy(backbones["tiny-llama"])  # equal up to rounding: compared in float64
    w = random_adapter(bb, 1, dtype=torch.float64)
    prefix = torch.tensor([bb.prefix_ids(INS, "fuse")])
    suffix = torch.tensor([bb.suffix_ids(EXS[0].source)])
    with torch.no_grad(), apply_lora(bb.model, w):
        full = bb.model(input_ids=torch.cat([prefix, suffix], 1)).logits[:, prefix.shape[1] :]
        cache = bb.model(input_ids=prefix, use_cache=True).cache
        cached = bb.model(input_ids=suffix, cache=copy.deepcopy(cache), use_cache=True).logits
    assert_close64(cached, full)


def test_causal_generate_shared_prefix_equals_unshared(backbones):
    """Batched generation with one cached prefix gives the same text as rows decoded alone."""
    bb = float64_copy(backbones["tiny-llama"])  # see GREEDY
    w = random_adapter(bb, 1, scale=1.0, dtype=torch.float64)
    together = bb.generate(EXS, w, "fuse", max_new_tokens=6)
    alone = [bb.generate([e], w, "fuse", max_new_tokens=6)[0] for e in EXS]
    assert together == alone


@pytest.mark.parametrize("per_row", [True, False])
def test_causal_rows_that_stop_leave_the_batch(backbones, monkeypatch, per_row):
    """A row that emits a stop token is dropped from the batch; every row still decodes as if alone."""
    bb = float64_copy(backbones["tiny-llama"])  # see GREEDY
    torch.manual_seed(5)
    w = random_adapter(bb, 3 if per_row else 1, scale=1.0, dtype=torch.float64)
    row_adapter = [w.index([i]) if per_row else w for i in range(3)]
    monkeypatch.setattr(bb, "_decode", lambda gen: gen.tolist())  # token ids instead of text
    monkeypatch.setattr(bb, "stop_ids", set())
    ids = bb.generate(EXS, w, "fuse", max_new_tokens=8)  # nothing stops: 8 tokens per row
    stop = next(t for t in ids[0] if t not in ids[1])  # row 0 stops early, row 1 never does
    monkeypatch.setattr(bb, "stop_ids", {stop})
    monkeypatch.delattr(bb, "_decode")
    sizes = []
    hook = bb.model.register_forward_pre_hook(
        lambda m, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        together = bb.generate(EXS, w, "fuse", max_new_tokens=8)
    finally:
        hook.remove()
    alone = [bb.generate([e], row_adapter[i], "fuse", max_new_tokens=8)[0] for i, e in enumerate(EXS)]
    assert together == alone
    prefix_rows, decode_sizes = sizes[0], sizes[1:]  # the prefix runs first, once per distinct adapter
    assert prefix_rows == (3 if per_row else 1)
    assert decode_sizes[0] == 3 and min(decode_sizes) < 3 and len(decode_sizes) == 8


def test_t5_fusion_attends_over_instruction(backbones):
    bb = backbones["tiny-t5"]
    fused = bb.collate(EXS, "fuse")
    plain = bb.collate(EXS, "none")
    assert fused.fuse_ids is not None and torch.equal(fused.input_ids, plain.input_ids)
    lf, _, _ = bb.forward(fused)
    ln, _, _ = bb.forward(plain)
    assert (lf - ln).abs().max() > 0.01 * lf.abs().max()  # measured: 8% of the largest logit
    # precomputed instruction states give the same logits as computing them inside forward: the same
    # computation on the same inputs, so bit for bit
    states = bb.encode_instruction(fused.fuse_ids, fused.fuse_mask)
    lp, _, _ = bb.forward(fused, fuse_states=(states, fused.fuse_mask))
    assert torch.equal(lf, lp)


def test_generate_with_per_example_adapters_matches_single(backbone):
    bb = float64_copy(backbone)  # see GREEDY
    w = random_adapter(bb, 3, scale=1.0, dtype=torch.float64)
    mixed = bb.generate(EXS, w, "fuse", max_new_tokens=5)
    single = [bb.generate([e], w.index([i]), "fuse", max_new_tokens=5)[0] for i, e in enumerate(EXS)]
    assert mixed == single


INS2 = "Definition: Answer with the input word written backwards.\n\n"


def _two_task_rows(bb):
    """Four rows of two tasks (instructions of different lengths), each task with its own adapter."""
    torch.manual_seed(11)
    w = random_adapter(bb, 2, scale=1.0, dtype=torch.float64)  # [U=2] distinct adapters
    exs = [EXS[0], PromptExample(INS2, EXS[1].source, ""), EXS[2], PromptExample(INS2, EXS[0].source, "")]
    return exs, w, [0, 1, 0, 1]


def test_causal_distinct_prefixes_cache_equals_full_prompts(backbones):
    """Prefixes of different lengths (right-padded, one run per distinct prefix + adapter) then left-padded
    sources: every row's next-token logits equal its whole prompt run alone with its adapter."""
    bb = float64_copy(backbones["tiny-llama"])
    exs, w, rows = _two_task_rows(bb)
    prefixes = [bb.prefix_ids(e.instruction, "fuse") for e in exs]
    assert len({len(p) for p in prefixes}) == 2
    cache, pmask = bb._prefix_cache(prefixes, rows, w)
    assert pmask.shape[0] == 4 and cache.get_seq_length() == max(len(p) for p in prefixes)
    assert_rows_match_full_prompts(bb, cache, pmask, exs, w, rows)


def test_causal_rows_of_a_few_adapters_encode_each_prefix_once(backbones):
    """``adapter_rows``: 4 rows over 2 adapters run 2 prefixes, and decode as each row alone does."""
    bb = float64_copy(backbones["tiny-llama"])  # see GREEDY
    exs, w, rows = _two_task_rows(bb)
    sizes = []
    hook = bb.model.register_forward_pre_hook(
        lambda m, args, kwargs: sizes.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        together = bb.generate(exs, w, "fuse", max_new_tokens=6, adapter_rows=rows)
    finally:
        hook.remove()
    assert sizes[0][0] == 2 and sizes[1][0] == 4  # 2 distinct prefixes, then 4 rows decode
    alone = [bb.generate([e], w.index([rows[i]]), "fuse", max_new_tokens=6)[0] for i, e in enumerate(exs)]
    per_row = bb.generate(exs, w.index(rows), "fuse", max_new_tokens=6)  # no sharing: 4 prefix runs
    assert together == alone == per_row


def test_adapter_rows_must_name_every_example(backbones):
    bb = backbones["tiny-llama"]
    with pytest.raises(ValueError, match="adapter_rows"):
        bb.generate(EXS, random_adapter(bb, 2), "fuse", max_new_tokens=2, adapter_rows=[0, 1])


def test_sequence_nll_prefers_trained_answer(backbone):
    batch = backbone.collate(EXS[:2], "concat")
    nll = backbone.sequence_nll(batch)
    assert nll.shape == (2,) and torch.isfinite(nll).all()


def test_low_precision_output_head_never_copies_its_weight():
    """A bfloat16 head reads ``hidden[:, -1:]`` (a strided view) as a dense tensor: without that, torch's
    CPU matmul broadcasts and copies the whole [V, d] weight on every prefill. The logits are unchanged."""
    bb = load_backbone(ModelConfig(name="tiny-llama", dtype="bfloat16"))
    head = bb.model.get_output_embeddings()
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.inference_mode(), torch.profiler.profile(record_shapes=True) as prof:
        logits = bb.model(input_ids=ids, logits_to_keep=1).logits  # [1, 1, V]
    weight_shape = [1, *head.weight.t().shape]  # [1, d, V]: the broadcast weight of a batched product
    copies = [e for e in prof.events() if e.name == "aten::copy_" and weight_shape in e.input_shapes]
    assert not copies
    with torch.inference_mode():
        last = bb.model.model(input_ids=ids).last_hidden_state[:, -1:]  # [1, 1, d]
        assert torch.equal(logits, torch.nn.functional.linear(last.contiguous(), head.weight))
    float32 = load_backbone(ModelConfig(name="tiny-llama"))
    assert not float32.model.get_output_embeddings()._forward_pre_hooks  # float32 keeps its own path
