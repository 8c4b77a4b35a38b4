"""Helpers shared by test modules (a uniquely named module: `conftest` names collide across folders)."""

from __future__ import annotations

import torch


def random_adapter(
    backbone, n: int, rank: int = 4, scale: float = 0.3, scaling: float = 2.0, dtype=torch.float32
):
    """Random LoRA factors for every target module of ``backbone`` with batch ``n``."""
    from tagi.lora import LoraWeights

    a = {t.name: (torch.randn(n, rank, t.in_features) * scale).to(dtype) for t in backbone.targets}
    b = {t.name: (torch.randn(n, t.out_features, rank) * scale).to(dtype) for t in backbone.targets}
    return LoraWeights(a, b, scaling)


EPS32 = torch.finfo(torch.float32).eps  # 2**-23: one float32 ulp relative to the value


def float64_copy(backbone):
    """A deep copy of ``backbone`` in float64, for claims of exactness (parity up to rounding only).

    In float32 two mathematically equal computations in a different order (``W·x + s·B·(A·x)`` vs
    ``(W + s·B·A)·x``) differ by a few ulps per operation, and how many depends on the CPU's kernels
    (blocking, vector width, thread count). In float64 the same rounding is ~1e-16 relative, so a tolerance
    of 1e-9 relative to the values compared separates "equal up to rounding" from "different" on any machine.

    transformers' RMS norms (``LlamaRMSNorm``, ``T5LayerNorm``) compute in float32 whatever the model's
    dtype; in the copy they compute the same formula in float64, so no float32 rounding step is left in the
    forward or backward pass (LLaMA's rotary cos/sin stay float32 values: a function of the positions only).
    """
    import copy
    import types

    twin = copy.deepcopy(backbone)
    twin.model.double()
    for module in twin.model.modules():
        if hasattr(module, "variance_epsilon") and type(module).__name__ in ("LlamaRMSNorm", "T5LayerNorm"):
            module.forward = types.MethodType(_rms_norm, module)
    return twin


def _rms_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """``weight * x / sqrt(mean(x^2) + eps)``: LlamaRMSNorm's and T5LayerNorm's formula in the input's dtype."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def assert_close64(x: torch.Tensor, ref: torch.Tensor, rel: float = 1e-9) -> None:
    """``x`` equals ``ref`` up to float64 rounding: ``max |x - ref| <= rel * max |ref|``.

    For two float64 routes to the same values (see :func:`float64_copy`): their rounding is a few float64
    ulps (2.2e-16 relative) per operation, so 1e-9 leaves a factor of ~10^6 for the depth of the
    computation, while a real difference (a missing term, a wrong scaling or mask) is orders of magnitude
    above it.
    """
    assert x.dtype == ref.dtype == torch.float64, (x.dtype, ref.dtype)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    x, ref = x.detach(), ref.detach()
    diff, scale = float((x - ref).abs().max()), float(ref.abs().max())
    assert diff <= rel * scale, f"max |diff| = {diff:.3e} > {rel:g} x max |ref| = {rel * scale:.3e}"


def assert_close32(x: torch.Tensor, ref: torch.Tensor, ulps: float) -> None:
    """``x``, computed in float32, equals ``ref`` up to ``ulps`` float32 ulps of ``max |ref|``.

    For float32 results that legitimately differ from ``ref`` by rounding (another order of the same sums,
    differently padded batches, a float64 reference of a float32 computation); the caller states why
    ``ulps`` bounds its rounding. ``ref`` may be float32 or float64.
    """
    assert x.dtype == torch.float32 and ref.dtype in (torch.float32, torch.float64), (x.dtype, ref.dtype)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    x, ref = x.detach(), ref.detach()
    diff, scale = float((x.double() - ref.double()).abs().max()), float(ref.abs().max())
    tol = ulps * EPS32 * scale
    assert diff <= tol, (
        f"max |diff| = {diff:.3e} > {ulps:g} float32 ulps of max |ref| ({scale:.3e}) = {tol:.3e}"
    )


def assert_rows_match_full_prompts(bb, cache, pmask, examples, adapter, groups) -> None:
    """After a prefix cache (``[N]`` rows, mask ``pmask [N, P]``), each row's left-padded source gives the
    next-token logits of its whole prompt run alone with its adapter (``adapter`` row ``groups[i]``)."""
    from tagi.backbones.base import pad_left
    from tagi.lora import apply_lora

    suffix, smask = pad_left([bb.suffix_ids(e.source) for e in examples], bb.pad_id)
    attn = torch.cat([pmask, smask], 1)
    pos = (attn.cumsum(-1) - 1).clamp_min(0)[:, pmask.shape[1] :]
    with torch.no_grad(), apply_lora(bb.model, adapter.index(list(groups))):
        got = bb.model(input_ids=suffix, attention_mask=attn, position_ids=pos, cache=cache).logits[:, -1]
    for i, e in enumerate(examples):
        full = torch.tensor([bb.prompt_ids(e.instruction, e.source, "fuse")])
        with torch.no_grad(), apply_lora(bb.model, adapter.index([groups[i]])):
            assert_close64(got[i : i + 1], bb.model(input_ids=full).logits[:, -1])
