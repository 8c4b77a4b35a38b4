"""``tagi evaluate`` and ``tagi demo``: the embedded demo config and the CLI wiring."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from evalkit import QUICK, TINY_YAML, single_thread  # noqa: F401

from tagi.cli import main
from tagi.commands.evaluate import DEMO_CONFIG, demo_config

DEMO_YAML = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def test_embedded_demo_config_equals_configs_demo_yaml() -> None:
    assert yaml.safe_load(DEMO_YAML.read_text()) == DEMO_CONFIG
    cfg = demo_config("out/x")
    assert (
        cfg.out_dir == "out/x" and cfg.model.name == "smollm2-135m-instruct" and cfg.data.source == "builtin"
    )
    assert "tagi" in cfg.evaluate.methods and "no-finetune" in cfg.evaluate.methods


def test_demo_sni_switch_and_overrides() -> None:
    cfg = demo_config("o", sni_dir="/data/sni", overrides=["finetune.train.max_steps=7"])
    assert (cfg.data.source, cfg.data.sni_dir, cfg.finetune.train.max_steps) == ("sni", "/data/sni", 7)


def test_tagi_evaluate_cli_writes_a_report(tmp_path: Path, capsys) -> None:
    overrides = [
        *QUICK,
        f"out_dir={tmp_path}",
        "evaluate.methods=[no-finetune,tagi]",
        "data.max_test_tasks=2",
    ]
    assert main(["evaluate", str(TINY_YAML), *overrides]) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'eval' / 'report.md'}" in out and "| tagi |" in out
    assert "| tagi minus |" in out and "| no-finetune | " in out.split("| tagi minus |")[1]  # paired table
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(results["methods"]) == ["no-finetune", "tagi"]


def test_cli_reports_an_unknown_method_as_one_line(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(TINY_YAML), f"out_dir={tmp_path}", "evaluate.methods=[nope]"]) == 2
    assert "error: unknown method 'nope'" in capsys.readouterr().err
