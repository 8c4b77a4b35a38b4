"""`tagi run configs/tiny.yaml` end to end (all three stages), skipping finished stages, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from train_helpers import CONFIGS, ROOT, SMALL, subprocess_env, tiny_config

from tagi.adapters import load_adapter
from tagi.model import TagiModel
from tagi.train.stages import run_all


def test_tagi_run_tiny_end_to_end(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "tagi.cli",
        "run",
        str(CONFIGS / "tiny.yaml"),
        f"out_dir={out}",
        "--skip-eval",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    done = {s: json.loads((out / s / "DONE.json").read_text()) for s in ("teachers", "pretrain", "finetune")}
    for stage, d in done.items():
        first, last = d["losses"]["first"], d["losses"]["last"]
        assert last["loss"] < first["loss"], (stage, first, last)  # each stage's loss went down
        assert d["tokens_per_s"] > 0 and d["peak_memory_mb"] > 0 and d["wall_time_s"] > 0
        assert d["config"]["out_dir"] == str(out) and d["seed"] == 0 and "torch" in d["versions"]
    assert set(done["finetune"]["losses"]["first"]) == {"ce", "kl", "align", "loss"}
    assert done["finetune"]["init_ckpt"] == str(out / "pretrain" / "final")

    index = json.loads((out / "teachers" / "index.json").read_text())
    for folder in index["groups"].values():
        weights, cfg, _ = load_adapter(out / "teachers" / folder)
        assert cfg["r"] == 4 and all(torch.isfinite(b).all() for b in weights.B.values())
    for stage in ("pretrain", "finetune"):
        model = TagiModel.load(out / stage / "final")
        assert model.hypernet.num_parameters() > 0
        assert (out / stage / "log.jsonl").is_file() and (out / stage / "state" / "trainer.json").is_file()
    assert (out / "finetune" / "teacher_cache" / "topk.safetensors").is_file()
    records = [json.loads(x) for x in (out / "finetune" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["split"] == "validation"

    # a second run finds every stage complete and trains nothing
    stamps = {s: (out / s / "DONE.json").stat().st_mtime_ns for s in done}
    run_all(tiny_config(out, small=False))
    assert stamps == {s: (out / s / "DONE.json").stat().st_mtime_ns for s in done}


def test_cli_refuses_to_overwrite_an_unfinished_stage(tmp_path):
    from tagi.cli import main
    from tagi.train.stages import run_finetune

    overrides = ["finetune.loss.kl=0", "finetune.loss.align=0", "finetune.train.ckpt_every=2"]
    out = run_finetune(tiny_config(tmp_path / "run", *overrides))
    (out / "DONE.json").unlink()  # the state folder remains, as after an interruption
    args = [str(CONFIGS / "tiny.yaml"), f"out_dir={tmp_path / 'run'}", *SMALL, *overrides]
    assert main(["finetune", *args]) == 2  # one-line error: pass --resume or --force
    assert main(["finetune", *args, "--resume"]) == 0 and (out / "DONE.json").is_file()
    assert json.loads((out / "DONE.json").read_text())["resumed_from"] == 4  # the final state: nothing left


@pytest.mark.parametrize("name", ["tiny.yaml", "smollm2-sni.yaml", "paper-t5-base.yaml", "paper-t5-xl.yaml"])
def test_every_config_opens_with_its_command(name):
    lines = (CONFIGS / name).read_text().splitlines()
    assert lines[0].startswith("# ") and any(f"configs/{name}" in x for x in lines[:4] if x.startswith("#"))


def test_stage_settings_leave_out_test_and_logging_keys(tmp_path):
    from tagi.config import to_dict
    from tagi.train.common import stage_settings

    base = to_dict(tiny_config(tmp_path))
    same = to_dict(
        tiny_config(
            tmp_path,
            "data.max_test_tasks=1",
            "data.test_tasks=[builtin_longest_word]",
            "finetune.train.log_every=1",
            "evaluate.batch_size=2",
        )
    )
    other = to_dict(tiny_config(tmp_path, "finetune.loss.kl=0.5"))
    for stage in ("teachers", "pretrain", "finetune"):
        assert stage_settings(base, stage) == stage_settings(same, stage)
    assert stage_settings(base, "finetune") != stage_settings(other, "finetune")
    assert stage_settings(base, "pretrain") == stage_settings(other, "pretrain")


def test_a_stage_recorded_before_a_config_field_existed_is_reused_without_a_warning(tmp_path, caplog):
    """A DONE.json written before ``finetune.task_group`` existed equals the default; a different value
    does not (the stage is kept, with a warning)."""
    from tagi.train.stages import run_finetune

    overrides = ["finetune.loss.kl=0", "finetune.loss.align=0", "finetune.train.max_steps=2"]
    out = run_finetune(tiny_config(tmp_path / "run", *overrides))
    done = json.loads((out / "DONE.json").read_text())
    del done["config"]["finetune"]["task_group"]  # as an older tagi wrote it
    (out / "DONE.json").write_text(json.dumps(done))
    stamp = (out / "DONE.json").stat().st_mtime_ns
    with caplog.at_level("WARNING", logger="tagi.train"):
        run_finetune(tiny_config(tmp_path / "run", *overrides))
        assert not [r for r in caplog.records if "other settings" in r.getMessage()]
        run_finetune(tiny_config(tmp_path / "run", *overrides, "finetune.task_group=2"))
        assert [r for r in caplog.records if "other settings" in r.getMessage()]
    assert (out / "DONE.json").stat().st_mtime_ns == stamp
