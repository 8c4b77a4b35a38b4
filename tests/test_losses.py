"""Each loss term on a known case (SPEC §8: KL(p||p)=0, a hand-computed KL > 0, alignment)."""

from __future__ import annotations

import math

import pytest
import torch

from tagi.lora import AdapterError, LoraWeights
from tagi.losses import align_loss, ce_sum, kl_sum, kl_topk_sum, mismatch_sum, teacher_topk, update_sq_norms
from tagi_testing import EPS32, assert_close64, float64_copy, random_adapter


def test_ce_sum_hand_computed():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    labels = torch.tensor([1, 0])
    # p(1)=3/4 for row 0, p(0)=1/2 for row 1; ce_sum computes in float32: a few ulps of the value
    assert ce_sum(logits, labels).item() == pytest.approx(-math.log(0.75) - math.log(0.5), rel=8 * EPS32)


def test_mismatch_hinge_hand_computed():
    """Two examples (2 and 1 label tokens), two-way vocabulary: the hinge on per-token means, times n_e."""
    labels = torch.tensor([0, 0, 1])
    rows = torch.tensor([0, 0, 1])
    own = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    other = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, math.log(3.0)]], dtype=torch.float64)
    # example 0: own CE -log(3/4) - log(1/2), other 2 log 2: own beats other by log(3/2) in total;
    # example 1: own CE log 2, other -log(3/4): other beats own by log(3/2)
    m = 0.1
    expect = max(0.0, 2 * m - math.log(1.5)) + max(0.0, m + math.log(1.5))
    # computed in float32 (the logits are cast, as for every term): a few ulps of the value
    assert mismatch_sum(own, other, labels, rows, m).item() == pytest.approx(expect, rel=8 * EPS32)
    assert mismatch_sum(own, own, labels, rows, 0.0).item() == 0.0  # own == other, no margin: 0
    assert mismatch_sum(own, own, labels, rows, m).item() == pytest.approx(3 * m, rel=8 * EPS32)  # n_e * m
    # the gradient lowers the own CE and raises the other's where the hinge is active
    own.requires_grad_(True), other.requires_grad_(True)
    mismatch_sum(own, other, labels, rows, 1.0).backward()
    assert own.grad[0, 0] < 0 and other.grad[0, 0] > 0  # label 0 of example 0: raise own, lower other


def test_update_sq_norms_is_the_dense_updates_norm_and_gauge_invariant():
    g = torch.Generator().manual_seed(0)
    a = {
        "q": torch.randn(3, 2, 5, generator=g, dtype=torch.float64),
        "v": torch.randn(3, 2, 4, generator=g, dtype=torch.float64),
    }
    b = {
        "q": torch.randn(3, 6, 2, generator=g, dtype=torch.float64),
        "v": torch.randn(3, 7, 2, generator=g, dtype=torch.float64),
    }
    w = LoraWeights(a, b, 1.5)
    dense = sum(((1.5 * b[k] @ a[k]) ** 2).sum((1, 2)) for k in a)  # [3]: the updates formed explicitly
    torch.testing.assert_close(update_sq_norms(w).double(), dense, rtol=1e-5, atol=0)  # float32 Gram products
    r = torch.tensor([[2.0, 1.0], [0.0, 0.5]], dtype=torch.float64)  # A -> R A, B -> B R^-1: the same dW
    moved = LoraWeights(
        {k: r @ v for k, v in a.items()}, {k: v @ torch.linalg.inv(r) for k, v in b.items()}, 1.5
    )
    torch.testing.assert_close(update_sq_norms(moved), update_sq_norms(w), rtol=1e-5, atol=0)
    zero = LoraWeights({k: torch.zeros_like(v) for k, v in a.items()}, b, 1.5)
    assert update_sq_norms(zero).abs().max().item() == 0.0


def test_kl_of_identical_is_zero_and_hand_computed_case():
    p = torch.randn(5, 11)
    assert kl_sum(p, p, tau=3.0).item() == 0.0  # log p - log p: exact zeros
    teacher = torch.log(torch.tensor([[0.5, 0.5]]))
    student = torch.log(torch.tensor([[0.9, 0.1]]))
    expect = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    # float32 (inputs rounded to float32, two log-softmaxes, a sum of terms twice the result's size): a few
    # ulps of the value, checked at 32
    assert kl_sum(student, teacher, tau=1.0).item() == pytest.approx(expect, rel=32 * EPS32)
    # temperature: logits are divided by tau and the result multiplied by tau^2
    t2 = torch.tensor([[0.0, 2.0]])
    s2 = torch.tensor([[0.0, 0.0]])
    pt = torch.softmax(t2 / 2, -1)[0]
    expect2 = 4 * float((pt * (pt.log() - math.log(0.5))).sum())
    assert kl_sum(s2, t2, tau=2.0).item() == pytest.approx(expect2, rel=32 * EPS32)


def test_topk_kl_with_full_k_equals_full_kl():
    s, t = torch.randn(4, 9), torch.randn(4, 9)
    idx, logp = teacher_topk(t, 9, tau=2.0)
    # two float32 routes (sorted and gathered vs in place) to the same sum of 36 terms: measured 3 ulps
    assert kl_topk_sum(s, idx, logp, 2.0).item() == pytest.approx(kl_sum(s, t, 2.0).item(), rel=64 * EPS32)
    idx, logp = teacher_topk(t, 3, tau=2.0)
    assert kl_topk_sum(s, idx, logp, 2.0).item() >= 0


def test_masked_positions_never_enter_the_loss(backbone):
    from tagi.backbones import PromptExample

    short = PromptExample("Definition: x.", "Input: a.\nOutput: ", "b")
    long = PromptExample("Definition: x.", "Input: a much longer input text.\nOutput: ", "a longer answer")
    bb = float64_copy(backbone)  # padded or alone, the same logits up to rounding: compared in float64
    alone_logits, alone_labels, _ = bb.forward(bb.collate([short], "concat"))
    logits, labels, rows = bb.forward(bb.collate([short, long], "concat"))
    assert torch.equal(labels[rows == 0], alone_labels)
    assert_close64(logits[rows == 0], alone_logits)
    # ce_sum computes in float32: logits equal to ~1e-15 give the same loss up to a few float32 ulps
    alone, padded = ce_sum(alone_logits, alone_labels), ce_sum(logits[rows == 0], labels[rows == 0])
    assert padded.item() == pytest.approx(alone.item(), rel=8 * EPS32)


def test_alignment_zero_for_identical_and_gauge_invariance(backbone):
    w = random_adapter(backbone, 2)
    for mode in ("delta", "factors"):
        assert align_loss(w, w, mode).item() == 0.0  # the same numbers on both sides: exact zeros
    # an invertible gauge change A -> R A, B -> B R^-1 leaves dW unchanged: delta distance 0, factor distance > 0
    r = torch.eye(w.rank) + 0.5 * torch.randn(w.rank, w.rank)
    g = LoraWeights(
        {k: r @ v for k, v in w.A.items()}, {k: v @ torch.linalg.inv(r) for k, v in w.B.items()}, w.scaling
    )
    zero = LoraWeights({k: 0 * v for k, v in w.A.items()}, {k: 0 * v for k, v in w.B.items()}, w.scaling)
    size = align_loss(w, zero, "delta").item()  # the mean square of dW itself
    # float32: R^-1 carries rounding times cond(R), and the delta distance ||g||^2 + ||w||^2 - 2<g, w> cancels
    # terms of the size of ||dW||^2, so it is ~cond(R) ulps of that size (measured <= 2 cond(R)), not 0
    cond = float(torch.linalg.cond(r))
    assert align_loss(g, w, "delta").item() <= 16 * cond * EPS32 * size
    # the factors really moved (measured: 0.6 to 75 times their own mean square)
    assert align_loss(g, w, "factors").item() > 0.01 * align_loss(w, zero, "factors").item()


def test_delta_distance_matches_explicit_matrices(backbone):
    g, t = random_adapter(backbone, 2, rank=3, scaling=2.0), random_adapter(backbone, 2, rank=5, scaling=0.5)
    g64, t64 = g.to(torch.float64), t.to(torch.float64)
    expect = sum(((g64.delta(n) - t64.delta(n)) ** 2).mean() for n in g.names) / len(g.names)
    # align_loss works in float32 through Gram matrices; for two independent adapters ||g||^2 + ||t||^2 - 2<g, t>
    # hardly cancels, so it is a few ulps off the float64 value (measured < 1)
    assert align_loss(g, t, "delta").item() == pytest.approx(expect.item(), rel=16 * EPS32)
    with pytest.raises(AdapterError, match="equal shapes"):
        align_loss(g, t, "factors")


def test_factor_alignment_uses_one_convention():
    a, b = torch.randn(1, 2, 3), torch.randn(1, 4, 2)
    gen = LoraWeights({"m": a}, {"m": b}, 2.0)
    teacher = LoraWeights({"m": a}, {"m": b * 2.0}, 1.0)  # the same update at another scaling
    assert align_loss(gen, teacher, "factors").item() == 0.0  # B * 2 * 0.5 is B exactly
