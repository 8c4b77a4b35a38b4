"""Config loading: YAML + overrides, validation, unknown keys, partial sections keep their defaults."""

from __future__ import annotations

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
    ],
)
def test_bad_values_fail_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


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
