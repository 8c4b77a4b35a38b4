"""PEFT folders: PeftModel.from_pretrained loads ours with no missing/unexpected keys and equal logits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from tagi.adapters import load_adapter, save_adapter
from tagi.backbones import PromptExample
from tagi.lora import AdapterError, apply_lora
from tagi_testing import assert_close64, float64_copy, random_adapter

EX = [PromptExample("Definition: Copy.\n\n", "Input: abc.\nOutput: ", "abc")]


def test_save_load_with_peft_same_logits(backbone, tmp_path):
    w = random_adapter(backbone, 1)
    folder = save_adapter(w, tmp_path / "ad", backbone.cfg.name, backbone.family, meta={"instruction": "x"})
    keys = load_file(folder / "adapter_model.safetensors").keys()
    assert all(".lora_A." in k or ".lora_B." in k for k in keys) and len(keys) == 2 * len(backbone.targets)
    # the same function up to rounding: both run in float64 (the saved float32 factors convert exactly)
    bb = float64_copy(backbone)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(bb.model), folder)
    batch = bb.collate(EX, "concat")
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    if bb.family == "seq2seq":
        kwargs["decoder_input_ids"] = bb.model._shift_right(batch.labels)
    with torch.no_grad():
        ref = peft_model(**kwargs).logits
        base = bb.model(**kwargs).logits
        with apply_lora(bb.model, w.to(torch.float64)):
            ours = bb.model(**kwargs).logits
    assert_close64(ours, ref)
    assert (ref - base).abs().max() > 0.1 * ref.abs().max()  # the adapter is loaded and matters
    back, cfg, meta = load_adapter(folder)
    assert cfg["r"] == w.rank and meta == {"instruction": "x"}
    assert all(torch.equal(back.A[n], w.A[n]) for n in w.names)


def test_refuses_to_overwrite_and_reports_bad_folders(backbone, tmp_path):
    w = random_adapter(backbone, 1)
    folder = save_adapter(w, tmp_path / "ad", "m", backbone.family)
    before = (folder / "adapter_model.safetensors").read_bytes()
    with pytest.raises(AdapterError, match="exists"):
        save_adapter(random_adapter(backbone, 1), folder, "m", backbone.family)
    assert (folder / "adapter_model.safetensors").read_bytes() == before
    save_adapter(random_adapter(backbone, 1), folder, "m", backbone.family, overwrite=True)
    assert (folder / "adapter_model.safetensors").read_bytes() != before
    with pytest.raises(AdapterError, match="not a PEFT LoRA folder"):
        load_adapter(tmp_path / "missing")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["r"] = 7
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="r=7"):
        load_adapter(folder)
