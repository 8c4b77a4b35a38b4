"""Kill a finetuning run with SIGKILL after its first checkpoint, resume it, and compare the final weights with
an uninterrupted run: they must be bitwise equal (CPU, one thread; the acceptance bound is 1e-6)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file
from train_helpers import CONFIGS, ROOT, SMALL, subprocess_env, tiny_config

from tagi.train.stages import run_finetune, run_teachers

STEPS = ["finetune.train.max_steps=24", "finetune.train.ckpt_every=3", "finetune.train.log_every=4"]


def _final(out) -> dict[str, torch.Tensor]:
    return load_file(out / "finetune" / "final" / "hypernet.safetensors")


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    teachers = run_teachers(tiny_config(killed))
    shutil.copytree(teachers, straight / "teachers")

    cmd = [sys.executable, "-m", "tagi.cli", "finetune", str(CONFIGS / "tiny.yaml"), f"out_dir={killed}"]
    proc = subprocess.Popen(
        [*cmd, *SMALL, *STEPS],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state = killed / "finetune" / "state" / "trainer.json"
    deadline = time.monotonic() + 180
    while not state.is_file():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    saved_step = json.loads(state.read_text())["step"]
    assert 3 <= saved_step < 24 and not (killed / "finetune" / "DONE.json").exists()

    out = run_finetune(tiny_config(killed, *STEPS), teachers_dir=teachers, resume=True)
    done = json.loads((out / "DONE.json").read_text())
    assert done["resumed_from"] == saved_step and done["steps"] == 24

    run_finetune(tiny_config(straight, *STEPS))
    a, b = _final(killed), _final(straight)
    assert a.keys() == b.keys()
    max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert max_diff <= 1e-6
    assert all(torch.equal(a[k], b[k]) for k in a), f"not bitwise equal (max diff {max_diff:.2e})"
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "split" not in r]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no duplicated records after resuming
