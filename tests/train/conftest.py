"""Fixtures for the training tests (helpers live in train_helpers.py)."""

from __future__ import annotations

import pytest
from train_helpers import tiny_config


@pytest.fixture
def tiny(tmp_path):
    """``tiny(*overrides)``: the tiny config writing to a fresh temporary out_dir."""
    return lambda *overrides, small=True: tiny_config(tmp_path / "run", *overrides, small=small)
