"""Shared fixtures: tiny random backbones of both families (built once per session; they are frozen)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tagi.backbones import load_backbone
from tagi.config import ModelConfig

FAMILIES = ["tiny-llama", "tiny-t5"]
SNI_DIR = Path(
    os.environ.get("TAGI_SNI_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sni")
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def backbones():
    return {name: load_backbone(ModelConfig(name=name)) for name in FAMILIES}


@pytest.fixture(params=FAMILIES)
def backbone(request, backbones):
    return backbones[request.param]


def random_adapter(backbone, n: int, rank: int = 4, scale: float = 0.3, scaling: float = 2.0):
    """Random LoRA factors for every target module of ``backbone`` with batch ``n``."""
    from tagi.lora import LoraWeights

    a = {t.name: torch.randn(n, rank, t.in_features) * scale for t in backbone.targets}
    b = {t.name: torch.randn(n, t.out_features, rank) * scale for t in backbone.targets}
    return LoraWeights(a, b, scaling)
