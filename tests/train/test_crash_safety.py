"""Crash safety of every training stage: SIGKILL at seeded random moments, resume, same final weights.

For each stage (teachers, pretrain, finetune) the stage runs as ``python -m tagi.cli <stage> --resume`` in a
child process and is killed with SIGKILL ``KILLS`` times: each time after at least one new checkpoint since
the previous start, plus a seeded random delay (so kills land mid-step, mid-save, mid-teacher-cache, ...).
A final in-process resume finishes the stage; its weights must equal an uninterrupted run's bit for bit
(CPU, one thread). While a child is alive the stage folder is polled: every file under a final name (not a
dot-prefixed temporary) must be complete — JSON parses, safetensors and ``torch.save`` files load — and a
``final/`` checkpoint passes its checksum.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import CONFIGS, ROOT, SMALL, subprocess_env, tiny_config

from tagi.backbones import load_backbone
from tagi.model import TagiModel
from tagi.train.stages import run_finetune, run_pretrain, run_teachers

pytestmark = pytest.mark.slow

KILLS = 5
STEPS = {
    "teachers": ["teachers.train.max_steps=8", "teachers.train.ckpt_every=1"],
    "pretrain": ["pretrain.train.max_steps=24", "pretrain.train.ckpt_every=1"],
    "finetune": [
        "finetune.train.max_steps=24",
        "finetune.train.ckpt_every=1",
        "finetune.use_pretrained=false",
    ],
}
COMMAND = {"teachers": "train-teachers", "pretrain": "pretrain", "finetune": "finetune"}


def _read(path: Path, load: Callable[[Path], object]) -> None:
    """Load one file; a file that vanished meanwhile (a folder swap or cleanup) is not an error.

    safetensors reports a vanished file as a RuntimeError ("No such file or directory"), not as
    FileNotFoundError. A file swapped in under the same name meanwhile is read again (it must be
    complete); any other error fails the test.
    """
    for _ in range(3):
        try:
            load(path)
            return
        except FileNotFoundError:
            pass
        except RuntimeError as e:
            if "No such file or directory" not in str(e):
                raise
        if not path.exists():
            return


def check_visible_files(stage_dir: Path, backbone, seen: set) -> int:
    """Assert every file under a final name in ``stage_dir`` is complete; returns how many were checked.

    ``seen`` holds (path, inode, size, mtime) of files already checked: only new or changed files are read.
    """
    checked = 0
    # os.walk, unlike Path.rglob, tolerates folders renamed away while it walks (the child keeps writing)
    walked = [Path(root) / n for root, dirs, files in os.walk(stage_dir) for n in (*dirs, *files)]
    for path in walked:
        parts = path.relative_to(stage_dir).parts
        if any(p.startswith(".") for p in parts) or not path.is_file():
            continue  # temporaries (.state.tmp, .final.old-*, .DONE.json.xyz) are invisible by design
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if key in seen:
            continue
        seen.add(key)
        if path.suffix == ".json":
            _read(path, lambda p: json.loads(p.read_text()))
        elif path.suffix == ".safetensors":
            _read(path, load_file)
        elif path.suffix == ".pt":
            _read(path, lambda p: torch.load(p, weights_only=True))
        elif path.suffix == ".jsonl":  # appended line by line: every line but a torn last one parses
            lines = path.read_text().splitlines()
            [json.loads(x) for x in lines[:-1]]
        else:
            continue
        checked += 1
    final = stage_dir / "final"
    if checked and (final / "tagi_config.json").is_file():
        _read(final, lambda p: TagiModel.load(p, backbone))  # verifies the weights' sha256
    return checked


def progress(stage: str, stage_dir: Path) -> int:
    """Checkpointed optimiser steps of the stage so far (teachers: summed over finished + current teacher)."""

    def step(trainer: Path) -> int:
        try:
            return int(json.loads(trainer.read_text())["step"])
        except FileNotFoundError:
            return 0

    if stage != "teachers":
        return step(stage_dir / "state" / "trainer.json")
    finished = sum(1 for p in stage_dir.glob("*/tagi.json"))
    current = [p for p in stage_dir.glob("state/*/trainer.json") if not p.parent.name.startswith(".")]
    return 1000 * finished + sum(step(p) for p in current)  # (pathlib's * also matches .temporaries)


def kill_repeatedly(stage: str, out: Path, backbone, rng: random.Random) -> tuple[int, int]:
    """Start the stage, SIGKILL it at random moments ``KILLS`` times; returns (kills, files checked)."""
    stage_dir = out / stage
    cmd = [sys.executable, "-m", "tagi.cli", COMMAND[stage], str(CONFIGS / "tiny.yaml"), f"out_dir={out}"]
    cmd += [*SMALL, *STEPS[stage], "--resume"]
    kills = checked = 0
    seen: set = set()
    while kills < KILLS:
        start = progress(stage, stage_dir)
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline, kill_at, wait_ckpts = time.monotonic() + 120, None, rng.randint(1, 2)
        while proc.poll() is None:
            checked += check_visible_files(stage_dir, backbone, seen) if stage_dir.exists() else 0
            if kill_at is None and progress(stage, stage_dir) >= start + wait_ckpts:
                kill_at = time.monotonic() + rng.uniform(0.0, 0.05)
            if kill_at is not None and time.monotonic() >= kill_at:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                break
            assert time.monotonic() < deadline, "the stage made no progress"
            time.sleep(0.03)
        err = proc.stderr.read().decode()
        proc.stderr.close()
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        else:
            assert proc.returncode == 0, err[-2000:]
            break  # finished before the planned kill: the caller asserts enough kills happened
    return kills, checked


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted reference run of all three stages."""
    out = tmp_path_factory.mktemp("straight")
    run_teachers(tiny_config(out, *STEPS["teachers"]))
    run_pretrain(tiny_config(out, *STEPS["pretrain"]))
    run_finetune(tiny_config(out, *STEPS["finetune"]))
    return out


def _weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    """Every trained tensor of a stage, keyed by file and tensor name."""
    files = sorted(stage_dir.glob("*/adapter_model.safetensors")) or [
        stage_dir / "final" / "hypernet.safetensors"
    ]
    return {f"{f.parent.name}/{k}": v for f in files for k, v in load_file(f).items()}


@pytest.mark.parametrize("stage", ["teachers", "pretrain", "finetune"])
def test_sigkill_at_random_moments_then_resume_gives_the_same_weights(stage, straight, tmp_path):
    out = tmp_path / "killed"
    if stage == "finetune":  # the same teachers as the reference run
        shutil.copytree(straight / "teachers", out / "teachers")
    rng = random.Random(f"crash-{stage}")
    kills, checked = kill_repeatedly(stage, out, load_backbone(tiny_config(out).model), rng)
    assert kills >= KILLS, f"the {stage} run finished after {kills} kills; lengthen it"
    assert checked > 0

    runner = {"teachers": run_teachers, "pretrain": run_pretrain, "finetune": run_finetune}[stage]
    runner(tiny_config(out, *STEPS[stage]), resume=True)  # the config's backbone (its token limits)
    assert (out / stage / "DONE.json").is_file()
    a, b = _weights(out / stage), _weights(straight / stage)
    assert a.keys() == b.keys() and a
    max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert max_diff <= 1e-6
    assert all(torch.equal(a[k], b[k]) for k in a), f"not bitwise equal (max diff {max_diff:.2e})"
    print(f"{stage}: {kills} kills, {checked} files checked while running, max |diff| = {max_diff:.1e}")
