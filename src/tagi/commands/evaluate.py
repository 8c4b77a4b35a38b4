"""``tagi evaluate CONFIG`` and ``tagi demo`` (see :mod:`tagi.cli`).

The demo's configuration is embedded here (:data:`DEMO_CONFIG`; ``configs/demo.yaml`` in a checkout is
the same file, checked by a test), so ``tagi demo`` works from an installed package without a checkout.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

from tagi.backbones import load_backbone
from tagi.config import ExperimentConfig, apply_overrides, from_dict, load_config
from tagi.evaluate.harness import run_evaluation
from tagi.evaluate.tables import headline_table, paired_table
from tagi.train.stages import planned_stages

log = logging.getLogger("tagi.evaluate")

DEMO_CONFIG: dict[str, Any] = {
    "out_dir": "runs/demo",
    "seed": 0,
    "model": {"name": "smollm2-135m-instruct", "max_target_tokens": 12},
    "hyper": {"rank": 8, "alpha": 16.0, "hidden": 256},
    "data": {
        "source": "builtin",
        "builtin_instances": 40,
        "max_train_instances": 40,
        "max_test_instances": 8,
    },
    "teachers": {
        "group_by": "category",
        "rank": 8,
        "alpha": 16.0,
        "train": {
            "max_steps": 5,
            "batch_size": 4,
            "lr": 0.003,
            "warmup_ratio": 0.1,
            "log_every": 4,
            "ckpt_every": 0,
        },
    },
    "pretrain": {
        "segment_tokens": 64,
        "train": {
            "max_steps": 10,
            "batch_size": 8,
            "lr": 0.001,
            "warmup_ratio": 0.1,
            "log_every": 5,
            "ckpt_every": 0,
        },
    },
    "finetune": {
        "train": {
            "max_steps": 36,
            "batch_size": 4,
            "lr": 0.001,
            "warmup_ratio": 0.1,
            "log_every": 6,
            "ckpt_every": 12,
        },
    },
    "evaluate": {
        "methods": [
            "no-finetune",
            "multitask-lora",
            "tagi",
            "tagi-other-instruction",
            "tagi-empty-instruction",
        ],
        "prompt_settings": [0, 2],
        "batch_size": 20,
        "rank_classification": False,
        "multitask_steps": 36,
        "oracle_steps": 6,
        "oracle_instances": 30,
        "efficiency_instances": 100,
    },
}
"""``tagi demo``'s configuration (the same as ``configs/demo.yaml``)."""

DEMO_SNI_OVERRIDES: list[str] = [
    "data.source=sni",
    "data.max_train_tasks=30",
    "data.max_train_instances=15",
    "data.max_test_tasks=8",
    "data.max_test_instances=10",
    "model.max_target_tokens=32",
    "model.max_instruction_tokens=320",
    "model.max_input_tokens=192",
    "teachers.train.max_steps=4",
    "evaluate.oracle_instances=20",
]
"""What ``tagi demo --sni-dir PATH`` changes (besides ``data.sni_dir``): fewer, longer tasks."""


def demo_config(
    out: str = "runs/demo", sni_dir: str = "", overrides: list[str] | None = None
) -> ExperimentConfig:
    """The demo's :class:`ExperimentConfig` (optionally on SNI data) plus user overrides."""
    data = copy.deepcopy(DEMO_CONFIG)
    data["out_dir"] = out
    extra = [*DEMO_SNI_OVERRIDES, f"data.sni_dir={sni_dir}"] if sni_dir else []
    return from_dict(ExperimentConfig, apply_overrides(data, [*extra, *(overrides or [])]))


def _print_summary(eval_dir: Path) -> None:
    results = json.loads((eval_dir / "results.json").read_text())
    print(f"\nreport: {eval_dir / 'report.md'}\n")
    print(headline_table(results))
    paired = paired_table(results)
    if paired:
        print("\n" + paired)


def evaluate(config: str, overrides: list[str] | None = None) -> int:
    """Evaluate the methods of a config (training what they need, skipping finished stages); write a report.

    Args:
        config: YAML experiment config.
        overrides: key=value config overrides, e.g. evaluate.methods=[no-finetune,tagi].
    """
    eval_dir = run_evaluation(load_config(config, overrides))
    _print_summary(eval_dir)
    return 0


def demo(out: str = "runs/demo", sni_dir: str = "", overrides: list[str] | None = None) -> int:
    """The whole pipeline on SmolLM2-135M-Instruct and the built-in tasks (under 15 min on 2 CPU cores).

    Teachers -> hypernetwork pretraining -> finetuning -> the baselines it compares against -> adapters for
    the held-out tasks -> evaluation -> report. A rerun skips finished stages.

    Args:
        out: Output folder of the run.
        sni_dir: Run on a Super-NaturalInstructions clone at this path instead of the built-in tasks.
        overrides: key=value config overrides on top of the demo config.
    """
    cfg = demo_config(out, sni_dir, overrides)
    start = time.perf_counter()
    print(f"tagi demo: {cfg.model.name} on {cfg.data.source} tasks -> {cfg.out_dir}")
    backbone = load_backbone(cfg.model)
    for name, run in planned_stages(cfg):
        t0 = time.perf_counter()
        print(f"[{name}]", flush=True)
        run(cfg, backbone)
        print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    print("[evaluate] baselines, adapters for the held-out tasks, scores", flush=True)
    t0 = time.perf_counter()
    eval_dir = run_evaluation(cfg, backbone)
    print(f"[evaluate] done in {time.perf_counter() - t0:.0f} s", flush=True)
    _print_summary(eval_dir)
    print(f"\ntotal wall time: {time.perf_counter() - start:.0f} s")
    return 0
