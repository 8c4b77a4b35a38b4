"""Kill a finetuning run with SIGKILL as it starts its third checkpoint, resume it, and compare the final
weights with an uninterrupted run: they must be bitwise equal (CPU, one thread; stronger than the acceptance
bound of 1e-6). The kill point is the run's own progress (crash_child.py), not a moment in time."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import torch
from safetensors.torch import load_file
from train_helpers import CONFIGS, ROOT, SMALL, subprocess_env, tiny_config

from tagi.train.stages import run_finetune, run_teachers

STEPS = ["finetune.train.max_steps=24", "finetune.train.ckpt_every=3", "finetune.train.log_every=4"]
CHILD = ROOT / "tests" / "train" / "crash_child.py"


def _final(out) -> dict[str, torch.Tensor]:
    return load_file(out / "finetune" / "final" / "hypernet.safetensors")


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    teachers = run_teachers(tiny_config(killed))
    shutil.copytree(teachers, straight / "teachers")

    # SIGKILL at the first call of the third save (step 9): the state holds step 6, the log already step 8
    plan = json.dumps({"kind": "save", "ckpts": 2, "fraction": 0.0})
    cmd = [sys.executable, str(CHILD), plan, "finetune", str(CONFIGS / "tiny.yaml"), f"out_dir={killed}"]
    # the timeout only turns a hang into a failure: the run takes seconds
    proc = subprocess.run(
        [*cmd, *SMALL, *STEPS], cwd=ROOT, env=subprocess_env(), capture_output=True, timeout=600
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    saved_step = json.loads((killed / "finetune" / "state" / "trainer.json").read_text())["step"]
    assert saved_step == 6 and not (killed / "finetune" / "DONE.json").exists()
    logged = [json.loads(x)["step"] for x in (killed / "finetune" / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 4, 8]  # step 8 is past the checkpoint: the resumed run must log it again, once

    out = run_finetune(tiny_config(killed, *STEPS), teachers_dir=teachers, resume=True)
    done = json.loads((out / "DONE.json").read_text())
    assert done["resumed_from"] == saved_step and done["steps"] == 24

    run_finetune(tiny_config(straight, *STEPS))
    a, b = _final(killed), _final(straight)
    assert a.keys() == b.keys()
    max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), f"not bitwise equal (max diff {max_diff:.2e})"
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "split" not in r]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no duplicated records after resuming
