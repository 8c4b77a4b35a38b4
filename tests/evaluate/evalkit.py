"""Helpers for the evaluation tests: the tiny experiment config with very short training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tagi.config import ExperimentConfig, load_config

TINY_YAML = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
QUICK = [
    "model.max_target_tokens=6",
    "data.max_train_tasks=4",
    "data.max_test_tasks=3",
    "data.max_test_instances=3",
    "teachers.train.max_steps=3",
    "pretrain.train.max_steps=3",
    "finetune.train.max_steps=3",
    "evaluate.multitask_steps=3",
    "evaluate.oracle_steps=2",
    "evaluate.oracle_instances=2",
    "evaluate.efficiency_instances=5",
    "evaluate.batch_size=4",
]
"""configs/tiny.yaml with a few optimiser steps per stage: real training, seconds of wall time."""


def tiny_config(out_dir: Path, overrides: list[str] | None = None) -> ExperimentConfig:
    return load_config(TINY_YAML, [*QUICK, f"out_dir={out_dir}", *(overrides or [])])


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models are latency-bound: one torch thread avoids thread contention with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
