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
