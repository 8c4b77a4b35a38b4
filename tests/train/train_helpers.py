"""Helpers for the training tests: the tiny config, shrunk further, written to a temporary out_dir."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tagi.config import ExperimentConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"

# a few tasks, few steps: each stage takes seconds on the tiny models
SMALL = [
    "data.max_train_tasks=4",
    "data.builtin_instances=8",
    "data.validation_tasks=0",
    "teachers.train.max_steps=4",
    "pretrain.train.max_steps=4",
    "finetune.train.max_steps=4",
]


def tiny_config(out_dir: Path, *overrides: str, small: bool = True) -> ExperimentConfig:
    """``configs/tiny.yaml`` with ``out_dir`` and overrides (after the SMALL ones when ``small``)."""
    return load_config(CONFIGS / "tiny.yaml", [f"out_dir={out_dir}", *(SMALL if small else []), *overrides])


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: this interpreter's package path, one thread, no stray GPUs."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *sys.path[1:2], env.get("PYTHONPATH", "")]).strip(
        os.pathsep
    )
    env.update({"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    return env


def write_sni(folder: Path, num_tasks: int = 4, num_instances: int = 6) -> Path:
    """A small SNI-layout folder (splits + task files) made from built-in tasks, for hermetic tests."""
    import json

    from tagi.data.builtin import builtin_tasks

    tasks = sorted(builtin_tasks("train", num_instances=num_instances), key=lambda t: t.name)[:num_tasks]
    (folder / "tasks").mkdir(parents=True, exist_ok=True)
    (folder / "splits" / "default").mkdir(parents=True, exist_ok=True)
    for t in tasks:
        record = {
            "Definition": [t.definition],
            "Categories": list(t.categories),
            "Input_language": ["English"],
            "Output_language": ["English"],
            "Positive Examples": [{"input": e.input, "output": e.output} for e in t.positive_examples],
            "Instances": [{"id": i.id, "input": i.input, "output": list(i.outputs)} for i in t.instances],
        }
        (folder / "tasks" / f"{t.name}.json").write_text(json.dumps(record))
    (folder / "splits" / "default" / "train_tasks.txt").write_text("\n".join(t.name for t in tasks) + "\n")
    (folder / "splits" / "default" / "test_tasks.txt").write_text(tasks[-1].name + "\n")
    return folder
