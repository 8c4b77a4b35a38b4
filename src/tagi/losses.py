"""The finetuning objective (SPEC §2): ``L = w_ce * CE + w_kl * tau^2 * KL + w_align * L_align``, plus an
optional specificity term ``w_mismatch * L_mismatch`` and an optional penalty ``w_l2 * L_l2`` on the size of
the generated updates.

All token-level terms take *flat* label-position tensors, as returned by ``Backbone.forward``:
``logits [M, V]`` and ``labels [M]`` for the ``M`` label tokens of a batch (padding and prompt positions
are never materialised, so they cannot leak into a mean). Each term returns a **sum** over tokens and the
caller divides by the number of label tokens of the whole (accumulated) batch — token-normalised loss.

- ``ce_sum``: ``sum_m -log p_student(y_m)``.
- ``kl_sum``: ``tau^2 * sum_m KL(p_t^tau || p_s^tau)`` with ``p^tau = softmax(logits / tau)``, over the
  full vocabulary, or over the teacher's top-k tokens (``kl_topk_sum``: teacher renormalised on its
  top-k, student log-probabilities from the full softmax; non-negative and 0 iff the student matches the
  teacher's top-k distribution with no mass elsewhere).
- ``align_loss``: distance between generated and teacher adapters, averaged over modules:
  ``factors``: ``mse(A_g, A_t) + mse(B_g, B_t * s_t / s_g)`` on one convention (A [r, in], B [out, r],
  the teacher's scaling folded into its B so both sides mean the same update); needs equal ranks;
  ``delta``: ``||dW_g - dW_t||_F^2 / (out * in)`` with ``dW = s B A``, invariant to the factors' gauge
  (``A, B -> R A, B R^-1``) and defined for any two ranks, computed through ``r x r`` Gram matrices
  without forming ``dW``.
- ``mismatch_sum``: a hinge that asks each example's own adapter to fit it better than another task's
  adapter does, by a margin ``m`` in nats per label token. With ``n_e`` label tokens and summed CEs
  ``own_e`` / ``other_e`` of example ``e``: ``sum_e relu(n_e * m + own_e - other_e)``, i.e. ``n_e`` times
  the hinge on the per-token means (0 once ``other_e / n_e >= own_e / n_e + m``).
- ``update_sq_norms``: each adapter's squared Frobenius norm of its updates summed over modules,
  ``sum_modules ||s B A||_F^2`` (``[N]``), through ``r x r`` Gram matrices like ``delta``: the L2 penalty
  on generated weights, gauge-invariant (it measures the update ``dW``, not the factors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tagi.lora import AdapterError, LoraWeights


def ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over label tokens: ``logits [M, V]``, ``labels [M]`` -> scalar."""
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def mismatch_sum(
    own: torch.Tensor, other: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, margin: float
) -> torch.Tensor:
    """``sum_e relu(n_e * margin + own_e - other_e)`` for ``own`` / ``other`` logits ``[M, V]`` at the same
    label positions (``labels [M]``), ``rows [M]`` naming each position's example."""
    tok = F.cross_entropy(own.float(), labels, reduction="none") - F.cross_entropy(
        other.float(), labels, reduction="none"
    )  # [M]: own - other per label token
    n = int(rows.max()) + 1 if rows.numel() else 0
    gap = tok.new_zeros(n).index_add(0, rows, tok)  # [N]: own_e - other_e
    count = tok.new_zeros(n).index_add(0, rows, torch.ones_like(tok))  # [N]: n_e
    return torch.relu(count * margin + gap).sum()


def kl_sum(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau^2 * sum_m KL(softmax(t_m/tau) || softmax(s_m/tau))`` for ``[M, V]`` logits."""
    log_ps = F.log_softmax(student.float() / tau, dim=-1)
    log_pt = F.log_softmax(teacher.float() / tau, dim=-1)
    return tau**2 * (log_pt.exp() * (log_pt - log_ps)).sum()


def teacher_topk(teacher: torch.Tensor, k: int, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress teacher logits ``[M, V]`` to the top-k tokens: (indices ``[M, k]``, log-probs at tau)."""
    vals, idx = teacher.float().topk(k, dim=-1)
    return idx, F.log_softmax(vals / tau, dim=-1)


def kl_topk_sum(student: torch.Tensor, idx: torch.Tensor, log_pt: torch.Tensor, tau: float) -> torch.Tensor:
    """KL against a teacher kept as top-k (``idx [M, k]``, ``log_pt [M, k]`` renormalised at ``tau``)."""
    log_ps = F.log_softmax(student.float() / tau, dim=-1).gather(-1, idx)  # [M, k]
    return tau**2 * (log_pt.exp() * (log_pt - log_ps)).sum()


def _inner(a1, b1, a2, b2) -> torch.Tensor:
    """``<B1 A1, B2 A2>_F`` per example ``[N]`` via ``r x r`` Grams: ``sum((B1^T B2) * (A1 A2^T))``."""
    return (b1.transpose(1, 2) @ b2 * (a1 @ a2.transpose(1, 2))).sum((1, 2))


def update_sq_norms(weights: LoraWeights) -> torch.Tensor:
    """``[N]``: ``sum_modules ||s B_n A_n||_F^2`` per adapter (``||B A||^2 = <B A, B A>``)."""
    total = None
    for name in weights.names:
        a, b = weights.A[name].float(), weights.B[name].float()  # [N, r, in], [N, out, r]
        sq = _inner(a, b, a, b)
        total = sq if total is None else total + sq
    return weights.scaling**2 * total


def _delta_sq_dist(ga, gb, sg, ta, tb, st) -> torch.Tensor:
    """``||sg*gb@ga - st*tb@ta||_F^2`` per example via Gram matrices: ga [N,r,in], gb [N,out,r]."""
    gg, tt, gt = _inner(ga, gb, ga, gb), _inner(ta, tb, ta, tb), _inner(ga, gb, ta, tb)
    return (sg**2 * gg + st**2 * tt - 2 * sg * st * gt).clamp_min(0.0)


def align_loss(generated: LoraWeights, teacher: LoraWeights, mode: str = "delta") -> torch.Tensor:
    """Mean distance between generated and teacher adapters (same batch size, same modules).

    Returns a scalar averaged over examples and modules; 0 for identical adapters.
    """
    if set(generated.names) != set(teacher.names):
        raise AdapterError("generated and teacher adapters target different modules")
    total = generated.A[generated.names[0]].new_zeros(())
    for name in generated.names:
        ga, gb = generated.A[name].float(), generated.B[name].float()
        ta, tb = teacher.A[name].float(), teacher.B[name].float()
        if mode == "factors":
            if ga.shape != ta.shape or gb.shape != tb.shape:
                raise AdapterError(
                    f"factor alignment needs equal shapes for {name}: generated A {tuple(ga.shape)}, "
                    f"teacher A {tuple(ta.shape)} (use align_mode=delta for different ranks)"
                )
            ratio = teacher.scaling / generated.scaling  # express the teacher's B at the student's scaling
            total = total + F.mse_loss(ga, ta) + F.mse_loss(gb, tb * ratio)
        elif mode == "delta":
            d = _delta_sq_dist(ga, gb, generated.scaling, ta, tb, teacher.scaling)  # [N]
            total = total + d.mean() / (gb.shape[1] * ga.shape[2])
        else:
            raise ValueError(f"unknown alignment mode {mode!r} (expected 'delta' or 'factors')")
    return total / len(generated.names)
