"""Rank-classification accuracy (P3 / T0 style) for tasks with answer options.

For an example with input ``x`` and options ``o_1..o_K``, each option is scored by the token-averaged
negative log-likelihood of its tokens (plus the end-of-sequence token, so an option is judged as a
complete answer) given the prompt::

    NLL_k = -(1 / |o_k|) * sum_t log p(o_k,t | instruction, x, o_k,<t)

and the prediction is ``argmin_k NLL_k`` (ties: the first option). Accuracy = share of examples whose
prediction is the correct option. The prompt is the Tk-Instruct prompt of :mod:`tagi.data.prompts` in any
prompt mode of the backbone, with any adapter; inputs come from SNI classification tasks
(:func:`tagi.data.options.from_sni_task`) or JSONL / P3 rows (:mod:`tagi.data.options`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tagi.backbones.base import Backbone, PromptExample, PromptMode
from tagi.data.options import OptionExample
from tagi.data.prompts import format_source
from tagi.lora import LoraWeights


def option_prompts(example: OptionExample, instruction: str) -> list[PromptExample]:
    """One prompt example per option (target = the option text)."""
    source = format_source(example.input)
    return [PromptExample(instruction, source, option) for option in example.options]


@torch.no_grad()
def option_nll(
    backbone: Backbone,
    examples: Sequence[OptionExample],
    instruction: str,
    adapter: LoraWeights | None = None,
    mode: PromptMode = "concat",
    batch_size: int = 16,
) -> list[list[float]]:
    """Token-averaged NLL of every option of every example, ``[len(examples)][num_options]``.

    All (example, option) pairs are flattened and scored ``batch_size`` at a time with
    :meth:`Backbone.sequence_nll`; ``adapter`` is one adapter for all of them (batch size 1) or ``None``.
    """
    flat = [p for ex in examples for p in option_prompts(ex, instruction)]
    scores: list[float] = []
    for start in range(0, len(flat), batch_size):
        batch = backbone.collate(flat[start : start + batch_size], mode, add_eos=True).to(backbone.device)
        scores.extend(backbone.sequence_nll(batch, adapter).tolist())
    out, pos = [], 0
    for ex in examples:
        out.append(scores[pos : pos + len(ex.options)])
        pos += len(ex.options)
    return out


def rank_predictions(nlls: Sequence[Sequence[float]]) -> list[int]:
    """Index of the lowest-NLL option per example (the first one on ties)."""
    return [min(range(len(row)), key=lambda k: (row[k], k)) for row in nlls]


def accuracy(predictions: Sequence[int], examples: Sequence[OptionExample]) -> float:
    """Share (×100) of examples whose predicted option index equals ``answer``."""
    if not examples or len(predictions) != len(examples):
        raise ValueError("need one prediction per example and at least one example")
    return 100.0 * sum(p == ex.answer for p, ex in zip(predictions, examples)) / len(examples)


def rank_classify(
    backbone: Backbone,
    examples: Sequence[OptionExample],
    instruction: str,
    adapter: LoraWeights | None = None,
    mode: PromptMode = "concat",
    batch_size: int = 16,
) -> tuple[list[int], float]:
    """``(predicted option index per example, accuracy ×100)``."""
    preds = rank_predictions(option_nll(backbone, examples, instruction, adapter, mode, batch_size))
    return preds, accuracy(preds, examples)
