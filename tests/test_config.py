"""Config loading: YAML + overrides, validation, unknown keys, partial sections keep their defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tagi.config import ConfigError, ExperimentConfig, describe, load_config, to_dict


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("hyper:\n  rank: 4\nteachers:\n  train:\n    lr: 0.01\n")
    cfg = load_config(p, ["finetune.loss.kl=0", "model.target_modules=[q_proj,k_proj]"])
    assert cfg.hyper.rank == 4 and cfg.hyper.scaling == cfg.hyper.alpha / 4
    assert cfg.teachers.train.lr == 0.01 and cfg.teachers.train.max_steps == 60  # section default kept
    assert cfg.finetune.loss.kl == 0.0 and cfg.model.target_modules == ["q_proj", "k_proj"]
    assert to_dict(cfg)["hyper"]["rank"] == 4


@pytest.mark.parametrize(
    "override, message",
    [
        ("hyper.rank=0", "hyper.rank must be > 0"),
        ("nope=1", "unknown config key 'nope'"),
        ("hyper.nope=1", "unknown config key 'hyper.nope'"),
        ("finetune.train.lr=-1", "finetune.train.lr must be > 0"),
        ("hyper.rank=abc", "hyper.rank must be int"),
        ("finetune.loss.align_mode=cosine", "must be one of"),
        ("model.family=rnn", "must be one of"),
        ("data.source=sni", "sni_dir is required"),
        ("hyper", "not of the form key=value"),
        ("evaluate.report_dir=../elsewhere", "report_dir must be a folder name inside out_dir"),
        ("evaluate.report_dir=/tmp/abs", "report_dir must be a folder name inside out_dir"),
        ("evaluate.report_dir=", "report_dir must be a folder name inside out_dir"),
        ("finetune.train.lr=1e-3x", "finetune.train.lr must be float"),
        ("finetune.train.lr=nan", "finetune.train.lr must be float"),
        ("hyper.rank=1e3", "hyper.rank must be int"),
        ("finetune.task_group=0", "task_group must be >= 1"),
        ("finetune.task_group=3", "task_group=3 must divide finetune.train.batch_size=8"),
    ],
)
def test_bad_values_fail_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("raw", "value"), [("3e-4", 3e-4), ("1E+2", 100.0), ("+2.5E-3", 2.5e-3), (".5e1", 5.0)]
)
def test_exponent_floats_that_yaml_reads_as_strings_are_floats(tmp_path, raw, value):
    # PyYAML (YAML 1.1) reads "3e-4" as a string; both overrides and files accept it as a float
    assert load_config(None, [f"hyper.alpha={raw}"]).hyper.alpha == value
    (tmp_path / "c.yaml").write_text(f"hyper:\n  alpha: {raw}\n")
    assert load_config(tmp_path / "c.yaml").hyper.alpha == value


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_field_has_help():
    rows = describe(ExperimentConfig)
    assert rows and all(help_ for _, _, help_ in rows)


def test_extends_merges_sections_over_the_base(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "out_dir: runs/base\nseed: 3\nteachers:\n  rank: 4\n  train: {max_steps: 7, lr: 0.01}\n"
        "evaluate:\n  methods: [tagi, no-finetune]\n"
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "child.yaml").write_text(
        "extends: ../base.yaml\nteachers:\n  train: {max_steps: 2}\nevaluate:\n  methods: [tagi]\n"
    )
    cfg = load_config(sub / "child.yaml", ["seed=5"])
    assert (cfg.out_dir, cfg.seed, cfg.teachers.rank) == ("runs/base", 5, 4)
    assert (cfg.teachers.train.max_steps, cfg.teachers.train.lr) == (2, 0.01)  # merged, not replaced
    assert cfg.evaluate.methods == ["tagi"]  # a list replaces the base's list


def test_extends_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(ConfigError, match="must name a config file"):
        load_config(tmp_path / "d.yaml")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=str)
def test_shipped_configs_load_and_open_with_their_command(path):
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert f"configs/{path.name}" in header or "tagi demo" in header, "the header must give the command"
    cfg = load_config(path)
    assert cfg.out_dir
