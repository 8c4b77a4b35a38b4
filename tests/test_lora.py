"""Batched per-example LoRA: parity with PEFT, merge, no state left behind, PEFT key mapping."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

from tagi.backbones import PromptExample
from tagi.lora import (
    AdapterError,
    LoraWeights,
    apply_fused_lora,
    apply_lora,
    from_peft_state_dict,
    merged,
    to_peft_state_dict,
)
from tagi_testing import EPS32, assert_close64, float64_copy, random_adapter

EXAMPLES = [
    PromptExample(
        "Definition: Uppercase the word.\n\n",
        "Now complete the following example -\nInput: cat.\nOutput: ",
        "CAT",
    ),
    PromptExample(
        "Definition: Reverse it.\n\n",
        "Now complete the following example -\nInput: dog house.\nOutput: ",
        "esuoh god",
    ),
]


def peft_logits(backbone, weights: LoraWeights, batch, row: int):
    """Logits of a PEFT LoraModel holding adapter ``row`` of ``weights`` (alpha/r = weights.scaling)."""
    rank = weights.rank
    cfg = LoraConfig(
        r=rank, lora_alpha=weights.scaling * rank, target_modules=weights.names, lora_dropout=0.0
    )
    peft_model = get_peft_model(copy.deepcopy(backbone.model), cfg)
    set_peft_model_state_dict(peft_model, to_peft_state_dict(weights.index([row])))
    peft_model.eval()
    with torch.no_grad():
        if backbone.family == "seq2seq":
            out = peft_model(
                input_ids=batch.input_ids[row : row + 1],
                attention_mask=batch.attention_mask[row : row + 1],
                decoder_input_ids=backbone.model._shift_right(batch.labels[row : row + 1]),
            )
        else:
            out = peft_model(
                input_ids=batch.input_ids[row : row + 1], attention_mask=batch.attention_mask[row : row + 1]
            )
    return out.logits[0]


def own_logits(backbone, weights, batch):
    with torch.no_grad(), apply_lora(backbone.model, weights):
        if backbone.family == "seq2seq":
            return backbone.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                decoder_input_ids=backbone.model._shift_right(batch.labels),
            ).logits
        return backbone.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def test_batched_lora_matches_peft_for_mixed_batch(backbone):
    bb = float64_copy(backbone)  # equal up to rounding: checked in float64 (tagi_testing.float64_copy)
    weights = random_adapter(bb, n=2, dtype=torch.float64)
    batch = bb.collate(EXAMPLES, "concat")
    ours = own_logits(bb, weights, batch)  # one batch, two different adapters
    base = own_logits(bb, None, batch)
    for row in range(2):
        ref = peft_logits(bb, weights, batch, row)
        n = ref.shape[0] if bb.family == "seq2seq" else int(batch.attention_mask[row].sum())
        assert_close64(ours[row, :n], ref[:n])
        # the adapter really changed the logits (measured: by more than the logits' own magnitude)
        assert (ours[row, :n] - base[row, :n]).abs().max() > 0.1 * ref[:n].abs().max()


def test_apply_lora_leaves_no_state(backbone):
    batch = backbone.collate(EXAMPLES, "concat")
    before = own_logits(backbone, None, batch)
    with pytest.raises(RuntimeError), apply_lora(backbone.model, random_adapter(backbone, 2)):
        raise RuntimeError("boom")
    for name, _ in [(t.name, t) for t in backbone.targets]:
        assert not backbone.model.get_submodule(name)._forward_hooks
    assert torch.equal(own_logits(backbone, None, batch), before)


def test_merge_equals_hooks_and_restores_exactly(backbone):
    # W x + s B (A x) and (W + s B A) x are equal up to rounding: checked in float64
    bb = float64_copy(backbone)
    weights = random_adapter(bb, n=1, dtype=torch.float64)
    batch = bb.collate(EXAMPLES[:1], "concat")
    hooked = own_logits(bb, weights, batch)
    with merged(bb.model, weights):
        merged_logits = own_logits(bb, None, batch)
    assert_close64(merged_logits, hooked)
    assert (hooked - own_logits(bb, None, batch)).abs().max() > 0.1 * hooked.abs().max()  # a real update
    # the original weights come back bit for bit (copied back, not subtracted), in float32 as in use
    original = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    with merged(backbone.model, random_adapter(backbone, n=1)):
        assert not all(torch.equal(v, original[k]) for k, v in backbone.model.state_dict().items())
    for k, v in backbone.model.state_dict().items():
        assert torch.equal(v, original[k])


def test_peft_state_dict_round_trip(backbone):
    weights = random_adapter(backbone, n=1)
    state = to_peft_state_dict(weights)
    assert all(k.startswith("base_model.model.") and (".lora_A." in k or ".lora_B." in k) for k in state)
    back = from_peft_state_dict(state, weights.scaling)
    for name in weights.names:
        assert torch.equal(back.A[name], weights.A[name]) and torch.equal(back.B[name], weights.B[name])


def test_adapter_for_other_model_is_refused(backbones):
    llama, t5 = backbones["tiny-llama"], backbones["tiny-t5"]
    with pytest.raises(AdapterError, match="does not have"), apply_lora(llama.model, random_adapter(t5, 1)):
        pass
    w = random_adapter(llama, 1)
    name = w.names[0]
    w.A[name] = torch.randn(1, 4, 7)
    w.B[name] = torch.randn(1, w.B[name].shape[1], 4)
    with pytest.raises(AdapterError, match="another base model"), apply_lora(llama.model, w):
        pass


def test_batch_mismatch_is_clear(backbone):
    batch = backbone.collate(EXAMPLES, "concat")
    with pytest.raises(AdapterError, match="batch mismatch"):
        own_logits(backbone, random_adapter(backbone, 3), batch)


def test_stack_folds_scaling():
    # s_a * (B * s_b / s_a) A and s_b * B A: equal up to rounding, checked in float64
    a = LoraWeights({"m": torch.randn(1, 2, 3).double()}, {"m": torch.randn(1, 4, 2).double()}, 2.0)
    b = LoraWeights({"m": torch.randn(1, 2, 3).double()}, {"m": torch.randn(1, 4, 2).double()}, 0.5)
    s = LoraWeights.stack([a, b])
    assert_close64(s.delta("m")[1], b.delta("m")[0])
    assert_close64(s.delta("m")[0], a.delta("m")[0])


def test_gram_equals_explicit_delta_inner_products():
    torch.manual_seed(0)
    a = {"m1": torch.randn(4, 3, 7), "m2": torch.randn(4, 3, 5)}
    b = {"m1": torch.randn(4, 6, 3), "m2": torch.randn(4, 2, 3)}
    w = LoraWeights(a, b, scaling=0.7)
    exact = LoraWeights({m: v.double() for m, v in a.items()}, {m: v.double() for m, v in b.items()}, 0.7)
    flat = torch.stack(
        [torch.cat([exact.delta(m)[i].flatten() for m in w.names]) for i in range(4)]
    )  # [4, D]
    got, ref = w.gram(), flat @ flat.T  # gram() computes in float32; the reference in float64
    # gram()'s entries are sums of products of the float32 factors nested at most ~30 terms deep (over out,
    # in, r x r and the modules), so each entry's rounding error is at most ~30 float32 ulps of the same
    # sums of absolute values: the Gram of |A|, |B| (checked with a factor 2 margin, entry by entry)
    absolute = LoraWeights({m: v.abs() for m, v in a.items()}, {m: v.abs() for m, v in b.items()}, 0.7)
    assert got.dtype == torch.float32
    assert ((got.double() - ref).abs() <= 64 * EPS32 * absolute.gram().double()).all()


def test_packed_rows_each_get_their_own_adapter():
    """``token_rows``: one packed row of 2 + 3 + 1 tokens through a Linear equals each segment run alone
    with its own adapter of three (explicit ``W x + s B A x`` in float64)."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4)).double()
    w = LoraWeights({"0": torch.randn(3, 2, 5).double()}, {"0": torch.randn(3, 4, 2).double()}, 1.5)
    x = torch.randn(1, 6, 5).double()
    rows = torch.tensor([0, 0, 1, 1, 1, 2])
    with torch.no_grad(), apply_lora(model, w, token_rows=rows):
        got = model(x)
    lin = model[0]
    for t, k in enumerate(rows.tolist()):
        want = lin.weight @ x[0, t] + lin.bias + w.delta("0")[k] @ x[0, t]
        assert_close64(got[0, t], want)
    with pytest.raises(AdapterError, match="token_rows"), apply_lora(model, w, token_rows=torch.tensor([3])):
        pass
    with pytest.raises(AdapterError, match="packed LoRA mismatch"), apply_lora(model, w, token_rows=rows):
        model(torch.randn(2, 6, 5).double())


@pytest.mark.parametrize("running_kind", ["per-row", "shared", "base"])
@pytest.mark.parametrize("packed_kind", ["adapters", "base"])
def test_a_fused_row_gives_running_and_packed_tokens_their_own_adapters(running_kind, packed_kind):
    """``apply_fused_lora``: 3 running tokens (their own adapters, one shared, or none), then 2 + 1 packed
    tokens over two adapters (or none), through a Linear: each token equals ``W x + s B A x`` with its own
    adapter (float64)."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4)).double()
    run = LoraWeights({"0": torch.randn(3, 2, 5).double()}, {"0": torch.randn(3, 4, 2).double()}, 1.5)
    pack = LoraWeights({"0": torch.randn(2, 2, 5).double()}, {"0": torch.randn(2, 4, 2).double()}, 0.5)
    running = {"per-row": run, "shared": run.index([1]), "base": None}[running_kind]
    packed = pack if packed_kind == "adapters" else None
    x = torch.randn(1, 6, 5).double()
    rows = torch.tensor([0, 0, 1])
    with torch.no_grad(), apply_fused_lora(model, 3, running, packed, rows):
        got = model(x)
    lin = model[0]
    for t in range(6):
        want = lin.weight @ x[0, t] + lin.bias
        if t < 3 and running is not None:
            want = want + running.delta("0")[t if running.batch_size > 1 else 0] @ x[0, t]
        if t >= 3 and packed is not None:
            want = want + packed.delta("0")[rows[t - 3]] @ x[0, t]
        assert_close64(got[0, t], want)
    assert not lin._forward_hooks  # nothing left behind


def test_fused_lora_refuses_adapters_that_do_not_fit_the_rows():
    model = torch.nn.Sequential(torch.nn.Linear(5, 4)).double()
    w = LoraWeights({"0": torch.randn(2, 2, 5).double()}, {"0": torch.randn(2, 4, 2).double()}, 1.0)
    with (
        pytest.raises(AdapterError, match="2 running adapters for 3"),
        apply_fused_lora(model, 3, w, None, torch.tensor([0])),
    ):
        pass
    with (
        pytest.raises(AdapterError, match="token_rows"),
        apply_fused_lora(model, 1, None, w, torch.tensor([2])),
    ):
        pass
