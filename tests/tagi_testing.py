"""Helpers shared by test modules (a uniquely named module: `conftest` names collide across folders)."""

from __future__ import annotations

import torch


def random_adapter(backbone, n: int, rank: int = 4, scale: float = 0.3, scaling: float = 2.0):
    """Random LoRA factors for every target module of ``backbone`` with batch ``n``."""
    from tagi.lora import LoraWeights

    a = {t.name: torch.randn(n, rank, t.in_features) * scale for t in backbone.targets}
    b = {t.name: torch.randn(n, t.out_features, rank) * scale for t in backbone.targets}
    return LoraWeights(a, b, scaling)
