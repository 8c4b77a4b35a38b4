"""Determinism on CPU: the same config and seed give bitwise-identical weights and logged losses.

Two in-process runs of the tiny pipeline (``tagi run configs/tiny.yaml --skip-eval``, shrunk) into two
folders; every teacher adapter, the pretrained and the finetuned hypernetwork must be bitwise equal, and so
must every logged value except timings (tokens/s, memory). GPU runs are not bitwise reproducible in
general: see docs/robustness.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tagi.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "data.max_train_tasks=4",
    "data.builtin_instances=8",
    "teachers.train.max_steps=4",
    "pretrain.train.max_steps=6",
    "finetune.train.max_steps=6",
    "finetune.train.log_every=1",
]
TIMINGS = {"tokens_per_s", "mem_mb", "wall_time_s", "peak_memory_mb"}


def weights(out: Path) -> dict[str, torch.Tensor]:
    """Every safetensors file of a run (teachers, checkpoints, teacher cache), keyed by path and tensor."""
    return {
        f"{f.relative_to(out)}:{k}": v
        for f in sorted(out.rglob("*.safetensors"))
        for k, v in load_file(f).items()
    }


def logged(out: Path) -> dict[str, list[dict]]:
    """Every JSONL log record of a run with timing fields dropped."""
    return {
        str(f.relative_to(out)): [
            {k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in f.read_text().splitlines()
        ]
        for f in sorted(out.rglob("*.jsonl"))
    }


def done_losses(out: Path) -> dict[str, dict]:
    return {f.parent.name: json.loads(f.read_text())["losses"] for f in sorted(out.rglob("DONE.json"))}


def test_two_runs_with_the_same_config_and_seed_are_bitwise_identical(tmp_path, capsys):
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        assert (
            main(["run", str(ROOT / "configs" / "tiny.yaml"), f"out_dir={out}", *SMALL, "--skip-eval"]) == 0
        )
    a, b = (weights(out) for out in runs)
    assert len(a) > 0 and a.keys() == b.keys()
    assert any("teachers/" in k for k in a) and any("pretrain/final" in k for k in a)
    assert any("finetune/final" in k for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"
    logs_a, logs_b = logged(runs[0]), logged(runs[1])
    assert len(logs_a) >= 3 and logs_a == logs_b
    assert any("ce" in r for records in logs_a.values() for r in records)
    assert done_losses(runs[0]) == done_losses(runs[1])
