"""Typed configuration for every stage, loaded from YAML plus ``key=value`` overrides.

Every field carries a help string (``field_(default, "help")``) and every section validates itself in
``__post_init__``, so a bad value fails at load time with a one-line :class:`ConfigError` that names the
key. ``load_config("configs/tiny.yaml", ["finetune.train.lr=3e-4"])`` returns an
:class:`ExperimentConfig`; ``to_dict`` turns any config back into plain data (results files record it).

The package: :mod:`~tagi.config.schema` (the typed engine: fields, checks, plain data in and out,
overrides), :mod:`~tagi.config.yaml_files` (YAML files and ``extends``), one module per group of sections
(:mod:`~tagi.config.model`: ``model``, ``hyper``; :mod:`~tagi.config.data`; :mod:`~tagi.config.training`:
``teachers``, ``pretrain``, ``finetune`` and their ``train`` / ``loss``; :mod:`~tagi.config.evaluation`)
and :mod:`~tagi.config.experiment` (the whole experiment and :func:`load_config`). Every name is
importable from ``tagi.config``.
"""

from tagi.config.data import DataConfig
from tagi.config.evaluation import EvalConfig
from tagi.config.experiment import ExperimentConfig, load_config
from tagi.config.model import Dtype, HyperConfig, ModelConfig
from tagi.config.schema import ConfigError, apply_overrides, describe, field_, from_dict, to_dict
from tagi.config.training import FinetuneConfig, LossConfig, PretrainConfig, TeachersConfig, TrainConfig
from tagi.config.yaml_files import read_config_yaml, read_yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "Dtype",
    "EvalConfig",
    "ExperimentConfig",
    "FinetuneConfig",
    "HyperConfig",
    "LossConfig",
    "ModelConfig",
    "PretrainConfig",
    "TeachersConfig",
    "TrainConfig",
    "apply_overrides",
    "describe",
    "field_",
    "from_dict",
    "load_config",
    "read_config_yaml",
    "read_yaml",
    "to_dict",
]
