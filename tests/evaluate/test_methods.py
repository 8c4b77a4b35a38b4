"""The method registry: names, training variants, instruction variants."""

from __future__ import annotations

from pathlib import Path

import pytest
from evalkit import single_thread, tiny_config  # noqa: F401

from tagi.config import ConfigError
from tagi.data import builtin_tasks, format_instruction
from tagi.evaluate.methods import (
    METHODS,
    instructions_for,
    other_task_map,
    prompt_mode,
    resolve_methods,
    setting_name,
    variant_config,
)

EXPECTED = [
    "copy-demo", "majority", "no-finetune", "multitask-lora", "hint-like", "hypter-like", "t2l-like", "tagi",
    "oracle", "tagi-no-fusion",
    "tagi-no-kl", "tagi-no-align", "tagi-no-ce", "tagi-no-pretrain", "tagi-no-hypernet",
    "tagi-other-instruction", "tagi-empty-instruction",
]  # fmt: skip


def test_registry_has_every_method_in_order() -> None:
    assert list(METHODS) == EXPECTED
    assert [s.name for s in resolve_methods([])] == EXPECTED
    assert not METHODS["oracle"].zero_shot and all(
        s.zero_shot for s in METHODS.values() if s.name != "oracle"
    )


def test_resolve_methods_rejects_unknown_and_parses_paths() -> None:
    with pytest.raises(ConfigError, match="unknown method 'tagi-typo'"):
        resolve_methods(["tagi-typo"])
    peft, ckpt = resolve_methods(["peft:/a/b", "ckpt:/c"])
    assert (peft.adapter, peft.mode, peft.path) == ("fixed", "concat", "/a/b")
    assert (ckpt.adapter, ckpt.mode, ckpt.path) == ("hypernet", "fuse", "/c")


def test_training_variants_apply_their_overrides(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    hint = variant_config(cfg, METHODS["hint-like"])
    assert (hint.finetune.loss.kl, hint.finetune.loss.align, hint.finetune.loss.ce) == (
        0,
        0,
        cfg.finetune.loss.ce,
    )
    assert hint.finetune.fusion and hint.finetune.use_pretrained
    hypter = variant_config(cfg, METHODS["hypter-like"])
    assert not hypter.finetune.fusion and not hypter.finetune.use_pretrained
    assert prompt_mode(METHODS["hypter-like"], hypter) == "none"
    assert prompt_mode(METHODS["tagi"], cfg) == "fuse"
    assert variant_config(cfg, METHODS["tagi-other-instruction"]) is cfg  # same checkpoint as tagi
    assert METHODS["tagi-other-instruction"].variant == "" and METHODS["tagi-no-kl"].variant == "tagi-no-kl"
    # "without CE" is impossible when CE is the only loss term
    with pytest.raises(ConfigError, match="at least one loss weight"):
        variant_config(
            tiny_config(tmp_path, ["finetune.loss.kl=0", "finetune.loss.align=0"]), METHODS["tagi-no-ce"]
        )


def test_other_task_map_is_a_seeded_derangement() -> None:
    names = [f"t{i}" for i in range(7)]
    a, b = other_task_map(names, seed=3), other_task_map(list(reversed(names)), seed=3)
    assert a == b  # deterministic, independent of input order
    assert set(a) == set(names) and set(a.values()) == set(names)  # a permutation
    assert all(k != v for k, v in a.items())  # never the task itself
    assert any(other_task_map(names, seed=s) != a for s in range(4, 10))  # the seed matters
    with pytest.raises(ConfigError):
        other_task_map(["only"], seed=0)


def test_instruction_variants() -> None:
    tasks = {t.name: t for t in builtin_tasks("test", num_instances=2)}
    task = next(iter(tasks.values()))
    other = other_task_map(list(tasks), seed=0)
    true = instructions_for(METHODS["tagi"], task, 2, tasks, other)
    assert true == (format_instruction(task, 2), format_instruction(task, 2))
    prompt, hyper = instructions_for(METHODS["tagi-other-instruction"], task, 0, tasks, other)
    assert prompt == hyper == format_instruction(tasks[other[task.name]], 0) != format_instruction(task, 0)
    assert instructions_for(METHODS["tagi-empty-instruction"], task, 2, tasks, other) == ("", "")
    # without hypernetwork: the prompt keeps the true instruction, the hypernetwork reads nothing
    assert instructions_for(METHODS["tagi-no-hypernet"], task, 2, tasks, other) == (
        format_instruction(task, 2),
        "",
    )


def test_setting_names() -> None:
    assert [setting_name(k) for k in (0, 2, 3)] == ["Def", "Def+2Pos", "Def+3Pos"]
