"""Paired comparisons over test tasks, and how different a set of adapters is.

**Is the reference method better than another one, and by how much?**

Two methods evaluated on the same test tasks under one prompt setting give, for each task ``t``, the
difference of the task's Rouge-L (×100, the mean over its instances)::

    d_t = S_ref(t) - S_other(t)

and over the ``T`` tasks both were evaluated on the report gives

    mean     = (1/T) Σ_t d_t              every task weighs the same (a macro average)
    95% CI   = BCa bootstrap interval of that mean, resampling *tasks* (scipy.stats.bootstrap, seeded)
    wins / losses / ties = #{d_t > 0} / #{d_t < 0} / #{d_t = 0}

Tasks, not instances, are resampled: the claim under test is that a method carries over to unseen *tasks*,
and the instances of one task are not independent draws. The reference is TAGI, compared with every
other evaluated method, so for an ablation "TAGI - (TAGI without X)" is the effect of X (positive: X
helps), and for a baseline it is TAGI's margin over it.

**How task-specific are adapters?** (:func:`adapter_spread`) For ``N`` adapters with updates
``dW_i`` (all modules together) and Gram matrix ``G[i, j] = <dW_i, dW_j>_F``::

    mean cosine          = mean_{i != j} G_ij / sqrt(G_ii G_jj)
    task-specific share  = 1 - ||mean_i dW_i||^2 / mean_i ||dW_i||^2 = 1 - Σ_ij G_ij / (N Σ_i G_ii)

The share is the fraction of the adapters' squared norm that is not common to all of them: 0 when every
task gets the same adapter, 1 - 1/N for orthogonal adapters of equal norm.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

REFERENCE = "tagi"
"""The method every other one is compared with (when it was evaluated)."""
N_RESAMPLES = 10_000
CONFIDENCE = 0.95


def paired_difference(ref: dict[str, float], other: dict[str, float], seed: int) -> dict:
    """Mean per-task difference ``ref - other`` over the tasks in both, with its bootstrap interval.

    ``ref`` / ``other`` map a task name to its score. The interval is ``None`` with fewer than 2 common
    tasks; when every difference is the same it collapses to that value (there is nothing to resample).
    """
    names = sorted(set(ref) & set(other))
    d = np.array([ref[n] - other[n] for n in names], dtype=np.float64)  # [T]
    out = {
        "tasks": len(names),
        "mean": float(d.mean()) if len(d) else None,
        "ci_low": None,
        "ci_high": None,
        "wins": int((d > 0).sum()),
        "losses": int((d < 0).sum()),
        "ties": int((d == 0).sum()),
    }
    if len(d) < 2:
        return out
    if np.ptp(d) == 0:
        out["ci_low"] = out["ci_high"] = float(d[0])
        return out
    from scipy.stats import bootstrap

    with warnings.catch_warnings():  # BCa warns on nearly degenerate resamples; the interval is still valid
        warnings.simplefilter("ignore")
        res = bootstrap(
            (d,),
            np.mean,
            confidence_level=CONFIDENCE,
            n_resamples=N_RESAMPLES,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    out["ci_low"], out["ci_high"] = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return out


def _task_scores(method: dict, setting: str, metric: str) -> dict[str, float] | None:
    scores = method.get("scores", {}).get(setting)
    if scores is None:
        return None
    return {task: s[metric] for task, s in scores["per_task"].items()}


def paired_comparisons(methods: dict, settings: list[str], seed: int, metric: str = "rougeL") -> dict:
    """``{"reference", "metric", ..., "by_setting": {setting: {method: paired_difference}}}``.

    ``methods`` is the ``methods`` table of ``results.json``. Empty (``{}``) when the reference method was
    not evaluated or is the only one.
    """
    ref_method = methods.get(REFERENCE)
    if ref_method is None or "scores" not in ref_method or len(methods) < 2:
        return {}
    by_setting = {}
    for setting in settings:
        ref = _task_scores(ref_method, setting, metric)
        if ref is None:
            continue
        rows = {}
        for name, m in methods.items():
            other = _task_scores(m, setting, metric) if name != REFERENCE else None
            if other is not None:
                rows[name] = paired_difference(ref, other, seed)
        by_setting[setting] = rows
    return {
        "reference": REFERENCE,
        "metric": metric,
        "confidence": CONFIDENCE,
        "n_resamples": N_RESAMPLES,
        "method": "BCa bootstrap over tasks",
        "seed": seed,
        "by_setting": by_setting,
    }


def adapter_spread(gram: torch.Tensor) -> dict:
    """Mean pairwise cosine, task-specific share and mean norm of ``N`` adapters from their Gram matrix."""
    g = gram.double()
    n, energy = g.shape[0], g.diagonal().sum()
    norms = g.diagonal().clamp_min(0).sqrt()  # [N]
    cos = g / (norms[:, None] * norms[None, :]).clamp_min(1e-30)
    off = ~torch.eye(n, dtype=torch.bool)
    return {
        "adapters": n,
        "mean_cosine": float(cos[off].mean()) if n > 1 else None,
        "task_specific_share": float(1 - g.sum() / (n * energy)) if energy > 0 else 0.0,
        "mean_norm": float(norms.mean()),
    }


@torch.no_grad()
def generated_spread(model, texts: list[str], batch: int = 8, cache=None) -> dict:
    """:func:`adapter_spread` of the adapters a hypernetwork (``TagiModel``) generates from ``texts``, one
    per text, in batches of ``batch`` (``cache``: an ``InstructionCache`` shared across checkpoints)."""
    from tagi.lora import LoraWeights

    parts = [model.adapters(texts[i : i + batch], cache).detach() for i in range(0, len(texts), batch)]
    return adapter_spread(LoraWeights.stack(parts).gram())
