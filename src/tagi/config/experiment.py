"""A whole experiment (:class:`ExperimentConfig`: every section) and its loader, :func:`load_config`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tagi.config.data import DataConfig
from tagi.config.evaluation import EvalConfig
from tagi.config.model import HyperConfig, ModelConfig
from tagi.config.schema import apply_overrides, field_, from_dict
from tagi.config.training import FinetuneConfig, PretrainConfig, TeachersConfig
from tagi.config.yaml_files import read_config_yaml


@dataclass
class ExperimentConfig:
    """A whole experiment: the base model, the data, the three training stages and the evaluation."""

    out_dir: str = field_("runs/experiment", "Where every stage writes its outputs.")
    seed: int = field_(0, "Global seed.")
    model: ModelConfig = field_(ModelConfig(), "Frozen base model.")
    hyper: HyperConfig = field_(HyperConfig(), "Hypernetwork.")
    data: DataConfig = field_(DataConfig(), "Tasks and prompts.")
    teachers: TeachersConfig = field_(TeachersConfig(), "Stage 0.")
    pretrain: PretrainConfig = field_(PretrainConfig(), "Stage 1.")
    finetune: FinetuneConfig = field_(FinetuneConfig(), "Stage 2.")
    evaluate: EvalConfig = field_(EvalConfig(), "Evaluation.")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` from YAML (or defaults when ``path`` is None) plus overrides.

    A config may start from another one with ``extends: base.yaml`` (see :func:`read_config_yaml`).
    """
    data = read_config_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    return from_dict(ExperimentConfig, data)
