"""The shipped configs: each loads as is, and each runs every stage for 2 steps on a tiny model of its family.

The paper-scale configs name T5-LM-adapt Base/XL (no weights here) and C4 (no network); the smoke run swaps in
``tiny-t5``, a small SNI-layout folder and the training tasks' own text, and keeps everything else —
rank 32, Adafactor pretraining, top-k teacher cache, token limits, loss weights — except bf16, which CPUs
without bf16 matmul units run very slowly (bf16 autocast is covered in test_loop.py).
"""

from __future__ import annotations

import json

import pytest
from train_helpers import CONFIGS, write_sni

from tagi.config import load_config
from tagi.model import TagiModel
from tagi.train.stages import run_all

FAMILY = {"paper-t5-base.yaml": "tiny-t5", "paper-t5-xl.yaml": "tiny-t5", "smollm2-sni.yaml": "tiny-llama"}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_config_runs_two_steps_on_a_tiny_model(name, tmp_path):
    full = load_config(CONFIGS / name)  # the config as shipped is valid
    sni = write_sni(tmp_path / "sni")
    overrides = [f"out_dir={tmp_path / 'run'}", f"model.name={FAMILY[name]}", f"data.sni_dir={sni}"]
    overrides += ["data.validation_tasks=1", "pretrain.text_files=[]", "pretrain.segment_tokens=48"]
    overrides += ["pretrain.min_segment_tokens=8", "model.dtype=float32"]  # bf16 matmuls are slow on CPUs
    for stage in ("teachers", "pretrain", "finetune"):
        overrides += [
            f"{stage}.train.max_steps=2",
            f"{stage}.train.batch_size=2",
            f"{stage}.train.grad_accum=1",
        ]
        overrides += [f"{stage}.train.precision=fp32", f"{stage}.train.num_threads=1"]
    cfg = load_config(CONFIGS / name, overrides)
    assert cfg.hyper == full.hyper and cfg.finetune.loss == full.finetune.loss
    paths = run_all(cfg)
    for stage in ("teachers", "pretrain", "finetune"):
        done = json.loads((paths[stage] / "DONE.json").read_text())
        assert done["steps"] >= 2 and all(v == v for v in done["losses"]["last"].values())  # finite, not NaN
    model = TagiModel.load(paths["finetune"] / "final")
    assert model.hyper_cfg.rank == full.hyper.rank
