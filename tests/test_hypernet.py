"""Hypernetwork: shapes for both families, zero update at init with live gradients, pooling masks padding."""

from __future__ import annotations

import pytest
import torch

from tagi.config import HyperConfig
from tagi.hypernet import AttentionPool, HyperNetwork, masked_mean

INSTRUCTIONS = ["Definition: Uppercase the word.", "Definition: Count the letters of the word please."]


def make(backbone, **kw):
    return HyperNetwork(
        HyperConfig(rank=4, hidden=32, module_embed_dim=8, **kw), backbone.targets, backbone.hidden_size
    )


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_shapes_for_every_target(backbone, pooling):
    hn = make(backbone, pooling=pooling)
    ids, mask = backbone.collate_instructions(INSTRUCTIONS)
    w = hn(backbone.encode_instruction(ids, mask), mask)
    assert set(w.names) == {t.name for t in backbone.targets}
    for t in backbone.targets:
        assert w.A[t.name].shape == (2, 4, t.in_features)
        assert w.B[t.name].shape == (2, t.out_features, 4)
    assert hn.num_parameters() == sum(p.numel() for p in hn.parameters()) > 0


def test_zero_update_at_init_but_gradients_flow(backbone):
    hn = make(backbone)
    ids, mask = backbone.collate_instructions(INSTRUCTIONS)
    states = backbone.encode_instruction(ids, mask)
    w = hn(states, mask)
    for name in w.names:
        assert torch.count_nonzero(w.delta(name)) == 0
    from tagi.backbones import PromptExample

    batch = backbone.collate([PromptExample(t, "Input: ab.\nOutput: ", "AB") for t in INSTRUCTIONS], "fuse")
    base_logits, labels, _ = backbone.forward(batch)
    logits, labels, _ = backbone.forward(batch, w)
    assert torch.equal(base_logits, logits)  # B = 0 exactly: the hooks add exact zeros, bit for bit
    torch.nn.functional.cross_entropy(logits, labels).backward()
    heads_b = [p.grad for k, p in hn.named_parameters() if k.startswith("head_b")]
    assert all(g is not None and g.abs().sum() > 0 for g in heads_b)
    assert all(p.grad is None for p in backbone.model.parameters())


def test_masked_mean_ignores_padding():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(masked_mean(states, mask), torch.tensor([[2.0, 3.0]]))  # exact in float32
    pool = AttentionPool(2, 3)
    changed = states.clone()
    changed[0, 2] = -5.0
    # a padded token gets attention weight exactly 0 (score -inf), so it changes nothing, bit for bit
    assert torch.equal(pool(states, mask), pool(changed, mask))


def test_instructions_give_different_adapters_after_a_step(backbone):
    hn = make(backbone)
    ids, mask = backbone.collate_instructions(INSTRUCTIONS)
    states = backbone.encode_instruction(ids, mask)
    opt = torch.optim.SGD(hn.parameters(), lr=0.1)
    w = hn(states, mask)
    sum((w.B[n] ** 2).sum() - w.B[n].sum() for n in w.names).backward()
    opt.step()
    w = hn(states, mask)
    name = w.names[0]
    d0, d1 = w.delta(name)[0], w.delta(name)[1]
    # different beyond rounding (~1e-7 relative in float32): measured 5e-3 (T5) and 3e-2 of max |dW|
    assert (d0 - d1).abs().max() > 1e-4 * d0.abs().max()


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_standardized_input_removes_the_shared_part(backbone, pooling):
    """After fitting, the pooled training instructions have mean 0 and std 1 per dimension, whatever pooling
    (both are convex combinations of the tokens, so standardising the tokens standardises the pool)."""
    net = make(backbone, pooling=pooling, input_norm="standardize")
    shared = torch.randn(backbone.hidden_size) * 10  # a large component every instruction shares
    states = shared + torch.randn(6, 5, backbone.hidden_size)
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[0, 3:] = 0
    pooled = masked_mean(states, mask)
    net.fit_input_stats(pooled)
    standardized = (pooled.double() - net.input_mean.double()) / net.input_std.double()
    # the statistics are fitted in float64 and stored as float32 buffers: |mu| ~ 10 carries a rounding of
    # ~eps32 * 10 ~ 1e-6, which is what a standardised value of order 1 can be off by
    tol = 100 * torch.finfo(torch.float32).eps * float(pooled.abs().max() / net.input_std.min())
    torch.testing.assert_close(standardized.mean(0), torch.zeros_like(standardized[0]), rtol=0, atol=tol)
    torch.testing.assert_close(standardized.std(0), torch.ones_like(standardized[0]), rtol=0, atol=tol)
    # the statistics are buffers: saved with the weights, not trained
    assert {"input_mean", "input_std"} <= set(net.state_dict()) and not any(
        n.startswith("input_") for n, _ in net.named_parameters()
    )
    if pooling == "mean":  # the network's pooled input is exactly the standardised pooled vector
        probe = {}
        net.norm.register_forward_hook(lambda m, i, o: probe.setdefault("u", i[0]))
        net(states, mask)
        # float32 forward vs the float64 reference: off by the float32 rounding of the statistics, as above
        assert (probe["u"].double() - standardized).abs().max() <= tol


def test_fit_input_stats_refuses_bad_shapes(backbone):
    net = make(backbone, input_norm="standardize")
    with pytest.raises(ValueError, match="N >= 2"):
        net.fit_input_stats(torch.randn(1, backbone.hidden_size))
    with pytest.raises(ValueError, match="input_norm"):
        make(backbone).fit_input_stats(torch.randn(3, backbone.hidden_size))
