"""Two processes under torchrun (gloo, CPU) vs one process with the same global batch.

One process runs micro-batches of 2 with 2 accumulation steps; two processes run one micro-batch of 2 each.
The global batch, its split into micro-batches and the token normaliser are the same, and the summed
gradients are all-reduced: each rank computes one micro-batch exactly as the single process does (one
thread each), and a sum of two addends is the same whichever comes first (floating-point addition is
commutative), so the final weights and the logged loss terms are bitwise equal.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import CONFIGS, ROOT, SMALL, subprocess_env, tiny_config

from tagi.train.stages import run_finetune, run_teachers

COMMON = ["finetune.train.max_steps=6", "finetune.train.batch_size=2", "finetune.train.log_every=1"]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    teachers = run_teachers(tiny_config(one))
    shutil.copytree(teachers, two / "teachers")

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "tagi.cli", "finetune", str(CONFIGS / "tiny.yaml"), f"out_dir={two}", *SMALL, *COMMON]
    cmd += ["finetune.train.grad_accum=1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run_finetune(tiny_config(one, *COMMON, "finetune.train.grad_accum=2"))

    a = load_file(one / "finetune" / "final" / "hypernet.safetensors")
    b = load_file(two / "finetune" / "final" / "hypernet.safetensors")
    max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"max |dw| = {max_diff:.3e}"

    la = [json.loads(x) for x in (one / "finetune" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (two / "finetune" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb):  # the logged loss terms are global (summed over ranks) in both runs
        for k in ("ce", "kl", "align", "loss"):
            assert ra[k] == rb[k], (ra["step"], k)
    done = json.loads((two / "finetune" / "DONE.json").read_text())
    assert done["steps"] == 6 and done["world_size"] == 2
    assert json.loads((one / "finetune" / "DONE.json").read_text())["world_size"] == 1
