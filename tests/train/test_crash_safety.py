"""Crash safety of every training stage: SIGKILL at seeded random points of the run's progress, resume,
same final weights.

For each stage (teachers, pretrain, finetune) the stage runs as ``tagi <stage> --resume`` in a child
process (``crash_child.py``) that sends itself SIGKILL at a planned point of its own progress — counted in
calls made by the training code and the file-writing modules, not in seconds (see crash_child), so the
test kills the same number of times at the same places on a fast idle machine and on a slow loaded one.
``KILLS`` processes die in turn: the first during start-up or its first step (while the teacher cache is
written, ...), then alternately somewhere in a step and inside the save of a checkpoint, at seeded random
points (``TAGI_CRASH_SEED`` picks others). A final in-process resume finishes the stage; its weights must
equal an uninterrupted run's bit for bit (CPU, one thread). While a child is alive the stage folder is
polled, and after each kill it is checked as the kill left it: every file under a final name (not a
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
from crash_child import Progress
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
RUNNERS = {"teachers": run_teachers, "pretrain": run_pretrain, "finetune": run_finetune}
CHILD = Path(__file__).with_name("crash_child.py")
HANG = 600  # seconds: a process still alive after this is hung (a run takes seconds)


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


def plans(rng: random.Random, startup_file_ops: list[tuple[int, str]]) -> list[dict]:
    """The kill points of one stage (see crash_child): in start-up, then alternately mid-step and mid-save.

    The first process dies just before one of the file operations an uninterrupted run makes before its
    first checkpoint (``startup_file_ops``: the teacher cache, the log, the first state, ...). Each process
    commits at most ``k + 1 <= 4`` checkpoints before its kill (the first at most 1), so the ``KILLS`` kills
    need at most ``1 + 4 * (KILLS - 1) = 17`` of the stage's checkpoints: every stage has more (STEPS).
    """
    event, where = rng.choice(startup_file_ops)
    out = [{"kind": "start", "events": event, "expect": where}]
    for i in range(1, KILLS):
        out.append({"kind": ("step", "save")[i % 2], "ckpts": rng.choice((2, 3)), "fraction": rng.random()})
    return out


def kill_repeatedly(
    stage: str, out: Path, backbone, plan_list: list[dict], logs: Path
) -> tuple[list[str], int]:
    """Run the stage once per plan, each process killed by crash_child at its planned point.

    Returns where each kill landed (crash_child's line) and how many files were checked: while a process runs
    (polled) and after it died (the files exactly as the kill left them).
    """
    stage_dir = out / stage
    base = [*SMALL, *STEPS[stage], "--resume"]
    where, checked, seen = [], 0, set()
    for i, plan in enumerate(plan_list):
        cmd = [sys.executable, str(CHILD), json.dumps(plan), COMMAND[stage], str(CONFIGS / "tiny.yaml")]
        err_path = logs / f"{stage}-{i}.stderr"
        with err_path.open("w") as err:
            proc = subprocess.Popen(
                [*cmd, f"out_dir={out}", *base],
                cwd=ROOT,
                env=subprocess_env(),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + HANG  # turns a hang into a failure; never decides where the kill lands
        while proc.poll() is None:
            checked += check_visible_files(stage_dir, backbone, seen) if stage_dir.exists() else 0
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{stage}: process {i} still running after {HANG} s (plan {plan})")
            time.sleep(0.02)
        checked += check_visible_files(stage_dir, backbone, seen) if stage_dir.exists() else 0
        lines = err_path.read_text().splitlines()
        killed = [x for x in lines if x.startswith("crash_child: SIGKILL")]
        assert proc.returncode == -signal.SIGKILL and killed, (plan, proc.returncode, "\n".join(lines[-30:]))
        expected = f" [planned from the uninterrupted run: {plan['expect']}]" if "expect" in plan else ""
        where.append(killed[-1].removeprefix("crash_child: ") + expected)
    return where, checked


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, dict[str, list[tuple[int, str]]]]:
    """The uninterrupted reference run of all three stages, and each stage's file operations (as events)
    before its first checkpoint."""
    out = tmp_path_factory.mktemp("straight")
    startup_file_ops = {}
    for stage, runner in RUNNERS.items():
        progress, previous = Progress(), sys.getprofile()
        sys.setprofile(progress)
        try:
            runner(tiny_config(out, *STEPS[stage]))
        finally:
            sys.setprofile(previous)
        startup_file_ops[stage] = progress.startup_file_ops
    return out, startup_file_ops


def _weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    """Every trained tensor of a stage, keyed by file and tensor name."""
    files = sorted(stage_dir.glob("*/adapter_model.safetensors")) or [
        stage_dir / "final" / "hypernet.safetensors"
    ]
    return {f"{f.parent.name}/{k}": v for f in files for k, v in load_file(f).items()}


@pytest.mark.parametrize("stage", list(RUNNERS))
def test_sigkill_at_random_points_of_progress_then_resume_gives_the_same_weights(stage, straight, tmp_path):
    reference, startup_file_ops = straight
    out = tmp_path / "killed"
    if stage == "finetune":  # the same teachers as the reference run
        shutil.copytree(reference / "teachers", out / "teachers")
    rng = random.Random(f"crash-{stage}-{os.environ.get('TAGI_CRASH_SEED', '')}")
    plan_list = plans(rng, startup_file_ops[stage])
    where, checked = kill_repeatedly(stage, out, load_backbone(tiny_config(out).model), plan_list, tmp_path)
    assert len(where) == KILLS and checked > 0
    assert not (out / stage / "DONE.json").exists()  # every process died before the end

    RUNNERS[stage](tiny_config(out, *STEPS[stage]), resume=True)  # the config's backbone (its token limits)
    assert (out / stage / "DONE.json").is_file()
    a, b = _weights(out / stage), _weights(reference / stage)
    assert a.keys() == b.keys() and a
    max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), f"not bitwise equal (max diff {max_diff:.2e})"
    print(f"{stage}: {checked} files checked while running and after each kill; kills:", *where, sep="\n  ")
