"""Rank classification: option NLLs against a manual computation, argmin, accuracy."""

from __future__ import annotations

import pytest
import torch
from evalkit import single_thread  # noqa: F401

from tagi.data.options import OptionExample
from tagi.data.prompts import format_source
from tagi.evaluate.ranking import accuracy, option_nll, rank_classify, rank_predictions
from tagi.lora import apply_lora
from tagi_testing import EPS32, assert_close32, float64_copy, random_adapter

INSTRUCTION = "Definition: Answer yes or no.\n\n"
EXAMPLES = [
    OptionExample("is the sky blue", ("yes", "no", "maybe not"), 0),
    OptionExample("is fire cold", ("yes", "no", "maybe not"), 1),
]


def manual_nll(backbone, instruction: str, text: str, option: str, adapter) -> float:
    """-mean log p(option tokens + EOS | prompt), from the model's full logits."""
    tok = backbone.tokenizer
    target = tok(option, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad(), apply_lora(backbone.model, adapter):
        if backbone.family == "causal":
            prompt = backbone.prefix_ids(instruction, "concat") + backbone.suffix_ids(format_source(text))
            logits = backbone.model(input_ids=torch.tensor([prompt + target])).logits[0]
            logp = logits[len(prompt) - 1 : -1].log_softmax(-1)  # position t predicts token t+1
        else:
            from tagi.backbones import PromptExample

            enc = backbone.encoder_ids(PromptExample(instruction, format_source(text)), "concat")
            logits = backbone.model(input_ids=torch.tensor([enc]), labels=torch.tensor([target])).logits[0]
            logp = logits.log_softmax(-1)
    return float(-logp[torch.arange(len(target)), torch.tensor(target)].mean())


@pytest.mark.parametrize("with_adapter", [False, True])
def test_option_nll_matches_manual_computation(backbone, with_adapter: bool) -> None:
    bb = float64_copy(backbone)  # batched and padded vs one sequence: the same logits up to float64 rounding
    adapter = random_adapter(bb, 1, dtype=torch.float64) if with_adapter else None
    got = option_nll(bb, EXAMPLES, INSTRUCTION, adapter, "concat", batch_size=4)  # batches split examples
    want = [[manual_nll(bb, INSTRUCTION, ex.input, o, adapter) for o in ex.options] for ex in EXAMPLES]
    # sequence_nll takes its log-softmax in float32 (the float64 logits cast): a few float32 ulps of the NLLs
    ulps = 64
    assert_close32(torch.tensor(got, dtype=torch.float32), torch.tensor(want, dtype=torch.float64), ulps=ulps)
    # every example's best option beats the next by far more than that, so the argmin is the same anywhere
    tol = ulps * EPS32 * max(max(row) for row in want)
    assert all(sorted(row)[1] - sorted(row)[0] > 2 * tol for row in want)
    preds, acc = rank_classify(bb, EXAMPLES, INSTRUCTION, adapter, "concat")
    assert preds == [min(range(3), key=row.__getitem__) for row in want]
    assert acc == pytest.approx(100.0 * sum(p == ex.answer for p, ex in zip(preds, EXAMPLES)) / 2)


def test_rank_predictions_and_accuracy() -> None:
    assert rank_predictions([[2.0, 1.0, 3.0], [0.5, 0.5], [1.0, 0.9]]) == [1, 0, 1]  # ties -> first option
    assert accuracy([0, 0], EXAMPLES) == 50.0
    with pytest.raises(ValueError):
        accuracy([0], EXAMPLES)
