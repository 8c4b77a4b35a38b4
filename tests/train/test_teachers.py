"""Stage 0: LoRA teachers — PEFT init, training lowers the loss, PEFT folders, index, skipping, resuming."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tagi.adapters import load_adapter
from tagi.config import TrainConfig
from tagi.data.builtin import builtin_tasks
from tagi.data.select import task_examples
from tagi.errors import TagiError
from tagi.train.stages import run_teachers
from tagi.train.teachers import LoraParams, folder_names, load_teachers, teacher_groups, train_lora_adapter


def test_lora_params_start_like_peft(backbones):
    bb = backbones["tiny-llama"]
    lora = LoraParams(bb.targets, rank=4, alpha=8.0, seed=0)
    w = lora.weights()
    assert w.batch_size == 1 and w.rank == 4 and w.scaling == 2.0
    for t in bb.targets:
        a, b = w.A[t.name][0], w.B[t.name][0]
        assert a.shape == (4, t.in_features) and b.shape == (t.out_features, 4)
        assert torch.count_nonzero(b) == 0
        assert a.abs().max() <= 1 / math.sqrt(t.in_features) and a.std() > 0.3 / math.sqrt(t.in_features)
    assert torch.equal(LoraParams(bb.targets, 4, 8.0, seed=0).A[0], lora.A[0])  # seeded


def _mean_ce(bb, examples, adapter=None) -> float:
    with torch.no_grad():
        logits, labels, _ = bb.forward(bb.collate(examples, "concat"), adapter)
    return float(F.cross_entropy(logits.float(), labels))


def test_train_lora_adapter_lowers_the_loss_and_saves_a_peft_folder(backbone, tmp_path):
    tasks = builtin_tasks("train", num_instances=8)[:2]
    examples = [e for t in tasks for e in task_examples(t, 2)]
    train = TrainConfig(
        max_steps=15, batch_size=4, lr=0.02, warmup_ratio=0.0, progress_bar=False, num_threads=1
    )
    out = train_lora_adapter(backbone, examples, 4, 8.0, train, tmp_path / "lora", seed=1, desc="test")
    weights, adapter_cfg, meta = load_adapter(out)
    assert adapter_cfg["r"] == 4 and adapter_cfg["lora_alpha"] == 8.0 and weights.scaling == 2.0
    assert sorted(weights.names) == sorted(t.name for t in backbone.targets)
    assert meta["num_examples"] == len(examples) and meta["train"]["steps"] == 15
    before, after = _mean_ce(backbone, examples), _mean_ce(backbone, examples, weights)
    assert after < before - 0.2, (before, after)


def test_folder_names_are_safe_and_unique():
    names = folder_names(
        ["Text Modification", "text-modification", "task:builtin_x", "Ünïcode ->  Stuff", "!!"]
    )
    assert names["Text Modification"] == "text_modification"
    assert names["text-modification"] == "text_modification_2"
    assert names["task:builtin_x"] == "task_builtin_x"
    assert all(n and "/" not in n and " " not in n for n in names.values())
    assert len(set(names.values())) == len(names)


def test_groups_by_category_or_task():
    tasks = builtin_tasks("train", num_instances=2)
    by_cat = teacher_groups(tasks, "category")
    assert set(by_cat) == {t.category for t in tasks} and sum(map(len, by_cat.values())) == len(tasks)
    assert list(teacher_groups(tasks, "task")) == sorted(t.name for t in tasks)


def test_run_teachers_writes_index_adapters_and_done(tiny):
    cfg = tiny()
    out = run_teachers(cfg)
    index, adapters = load_teachers(out)
    assert index["group_by"] == "category" and index["num_pos"] == 2
    assert len(index["tasks"]) == 4 and set(index["tasks"].values()) == set(index["groups"]) == set(adapters)
    for group, folder in index["groups"].items():
        w, _, meta = load_adapter(out / folder)
        assert meta["group"] == group and set(meta["tasks"]) == {
            t for t, g in index["tasks"].items() if g == group
        }
    done = json.loads((out / "DONE.json").read_text())
    for key in (
        "wall_time_s",
        "steps",
        "tokens_per_s",
        "peak_memory_mb",
        "losses",
        "config",
        "seed",
        "versions",
    ):
        assert key in done
    assert done["num_teachers"] == len(adapters) and done["steps"] == 4 * len(adapters)
    assert set(done["versions"]) >= {"torch", "transformers", "peft", "tagi"}
    assert not (out / "state").exists()

    stamp = (out / "DONE.json").stat().st_mtime_ns
    assert run_teachers(cfg) == out and (out / "DONE.json").stat().st_mtime_ns == stamp  # skipped


def test_per_task_teachers(tiny):
    cfg = tiny("teachers.group_by=task", "data.max_train_tasks=2")
    index, adapters = load_teachers(run_teachers(cfg))
    assert index["tasks"] == {t: t for t in index["tasks"]} and len(adapters) == 2


def test_unfinished_run_needs_resume_or_force(tiny):
    cfg = tiny()
    out = run_teachers(cfg)
    (out / "DONE.json").unlink()  # as if interrupted after the adapters were written
    with pytest.raises(TagiError, match="--resume"):
        run_teachers(cfg, resume=False)
    first = (out / "arithmetic" / "adapter_model.safetensors").stat().st_mtime_ns
    run_teachers(cfg, resume=True)  # finished groups are kept, only the index and DONE are written
    assert (out / "arithmetic" / "adapter_model.safetensors").stat().st_mtime_ns == first
    run_teachers(cfg, force=True)
    assert (out / "arithmetic" / "adapter_model.safetensors").stat().st_mtime_ns != first


def test_load_teachers_on_a_missing_folder(tmp_path):
    with pytest.raises(TagiError, match="train-teachers"):
        load_teachers(tmp_path)
