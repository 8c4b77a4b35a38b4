"""Tagi API: generated adapters export to PEFT with identical logits (decoder-only), the exported adapter
reproduces the in-memory path under tagi's runtime (T5 fusion), and bad input fails with clear errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging

import pytest
import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from tagi.adapters import Adapter, save_adapter
from tagi.api import GenerateError, Tagi, definition_instruction
from tagi.backbones import PromptExample, load_backbone
from tagi.config import HyperConfig, ModelConfig
from tagi.data import Example, Task, format_instruction, format_source
from tagi.data.prompts import SOURCE_TEMPLATE
from tagi.lora import AdapterError
from tagi.model import CheckpointError, TagiModel
from tagi_testing import assert_close64, float64_copy, random_adapter

HYPER = HyperConfig(rank=4, hidden=32, module_embed_dim=8)
INPUTS = ["hello world", "abc def", "The cat sat on the mat!"]


def make_checkpoint(backbone, out):
    """A tiny 'trained' checkpoint: B-heads randomised so every generated dW is clearly non-zero."""
    model = TagiModel(backbone, HYPER)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        for head in model.hypernet.head_b.values():
            torch.nn.init.normal_(head.weight, std=0.05)
    return model.save(out)


@pytest.fixture(scope="module")
def tagis(backbones, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {
        n: Tagi.from_checkpoint(make_checkpoint(bb, root / n), backbone=bb) for n, bb in backbones.items()
    }


@pytest.fixture(params=["tiny-llama", "tiny-t5"])
def tagi(request, tagis):
    return tagis[request.param]


def peft_model(backbone, folder):
    return PeftModel.from_pretrained(copy.deepcopy(backbone.model), folder).eval()


def test_instruction_text_matches_training_format(tagis):
    tagi = tagis["tiny-llama"]
    assert definition_instruction("Copy the input") == "Definition: Copy the input.\n\n"
    assert definition_instruction(" Is it odd? ") == "Definition: Is it odd?\n\n"
    task = Task("t", "Reverse the word", (Example("ab", "ba"), Example("cd", "dc")), ())
    assert tagi.generate_adapter(task=task, pos_examples=2).instruction == format_instruction(task, 2)
    assert tagi.generate_adapter("Definition: raw.\n\n", raw=True).instruction == "Definition: raw.\n\n"
    assert format_source("hello world") == SOURCE_TEMPLATE.format(input="hello world")
    a, b = tagi.generate_adapter("Copy the input"), tagi.generate_adapter("Reverse the input")
    assert a.fuse and a.mode == "fuse" and a.weights.batch_size == 1
    assert any(not torch.allclose(a.weights.B[n], b.weights.B[n]) for n in a.weights.names)


def test_saved_folder_has_only_lora_tensors_and_peft_loads_all_keys(tagi, tmp_path):
    ad = tagi.generate_adapter("Copy the input")
    folder = ad.save(tmp_path / "ad")
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tagi.json",
    ]
    saved = load_file(folder / "adapter_model.safetensors")
    assert all(
        k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in saved
    )
    assert len(saved) == 2 * len(tagi.backbone.targets)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == HYPER.alpha
    assert cfg["task_type"] == {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}[tagi.backbone.family]
    pm = peft_model(tagi.backbone, folder)
    result = pm.load_adapter(folder, adapter_name="again")
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert set(get_peft_model_state_dict(pm)) == set(saved)
    meta = json.loads((folder / "tagi.json").read_text())
    assert meta["instruction"] == "Definition: Copy the input.\n\n" and meta["fuse"] is True
    assert meta["checkpoint_sha256"] == tagi.checkpoint_sha256 and len(meta["checkpoint_sha256"]) == 64
    assert meta["requires_tagi_runtime"] is (tagi.backbone.family == "seq2seq")
    back = Adapter.load(folder)
    assert back.instruction == ad.instruction and back.fuse and back.model == ad.model
    assert all(torch.equal(back.weights.A[n], ad.weights.A[n].cpu()) for n in ad.weights.names)


def in_float64(tagi: Tagi, ad: Adapter) -> tuple[Tagi, Adapter]:
    """A Tagi on a float64 copy of the base model, and the adapter in float64 (the float32 factors convert
    exactly, so a PEFT folder saved from ``ad`` holds the same adapter): for claims of equality up to
    rounding (see tagi_testing.float64_copy)."""
    return Tagi(float64_copy(tagi.backbone)), dataclasses.replace(ad, weights=ad.weights.to(torch.float64))


def test_causal_peft_with_instruction_in_prompt_matches_tagi(tagis, tmp_path):
    ad = tagis["tiny-llama"].generate_adapter("Copy the input")
    folder = ad.save(tmp_path / "ad")
    tagi, ad = in_float64(tagis["tiny-llama"], ad)
    bb = tagi.backbone
    pm = peft_model(bb, folder)
    ex = PromptExample(ad.instruction, format_source(INPUTS[0]), "")
    ids = bb.collate([ex], "fuse", add_eos=False).input_ids  # the tokens tagi trains on, [1, T]
    assert ids[0].tolist() == tagi.prompt_ids(ad, INPUTS[0])
    n_prefix = len(bb.prefix_ids(ad.instruction, "fuse"))
    with torch.no_grad():
        ref = pm(input_ids=ids).logits[0]  # [T, V]
        base = bb.model(input_ids=ids).logits[0]
        with tagi.applied(ad):
            hooked = bb.model(input_ids=ids).logits[0]
            # tagi's generation path: the prefix cache computed once with the adapter active
            cache = bb.model(input_ids=ids[:, :n_prefix], use_cache=True).cache
            pos = torch.arange(n_prefix, ids.shape[1])[None]
            cached = bb.model(input_ids=ids[:, n_prefix:], cache=cache, position_ids=pos).logits[0]
        with tagi.merged(ad):
            merged = bb.model(input_ids=ids).logits[0]
        after = bb.model(input_ids=ids).logits[0]
    assert (ref - base).abs().max() > 1e-3 * ref.abs().max()  # the adapter really changes the model
    assert_close64(hooked, ref)
    assert_close64(cached, ref[n_prefix:])
    assert_close64(merged, ref)
    assert torch.equal(after, base)  # applied / merged leave nothing behind


def test_causal_predict_equals_peft_greedy_generation(tagis, tmp_path):
    ad = tagis["tiny-llama"].generate_adapter("Copy the input")
    folder = ad.save(tmp_path / "ad")
    # greedy tokens agree unless two logits tie within rounding: in float64 such a tie is out of reach
    tagi, ad = in_float64(tagis["tiny-llama"], ad)
    bb = tagi.backbone
    pm = peft_model(bb, folder)
    ours = tagi.predict(INPUTS, ad, batch_size=2, max_new_tokens=6)
    for x, out in zip(INPUTS, ours, strict=True):
        ids = torch.tensor([tagi.prompt_ids(ad, x)])
        with torch.no_grad():
            gen = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                              do_sample=False, pad_token_id=bb.pad_id)[0, ids.shape[1]:].tolist()  # fmt: skip
        cut = next((i for i, t in enumerate(gen) if t in bb.stop_ids), len(gen))
        assert out == bb.tokenizer.decode(gen[:cut], skip_special_tokens=True).strip()
    assert tagi.predict(INPUTS, ad, batch_size=16, max_new_tokens=6) == ours


def test_t5_exported_adapter_with_tagi_runtime_equals_in_memory(tagis, tmp_path):
    tagi = tagis["tiny-t5"]
    bb = tagi.backbone
    ad = tagi.generate_adapter("Copy the input")
    back = Adapter.load(ad.save(tmp_path / "ad"))
    assert back.requires_tagi_runtime and back.mode == "fuse"
    # the folder holds the very numbers: the exported adapter runs the same computation, bit for bit
    assert back.weights.scaling == ad.weights.scaling
    assert all(torch.equal(back.weights.A[n], ad.weights.A[n]) for n in ad.weights.names)
    assert all(torch.equal(back.weights.B[n], ad.weights.B[n]) for n in ad.weights.names)
    batch = bb.collate([PromptExample(ad.instruction, format_source(x), "xyz") for x in INPUTS], "fuse")
    with torch.no_grad():
        mem, _, _ = bb.forward(batch, ad.weights)
        exported, _, _ = bb.forward(batch, back.weights)
        unfused, _, _ = bb.forward(bb.collate([PromptExample("", format_source(x), "xyz") for x in INPUTS],
                                              "none"), ad.weights)  # fmt: skip
    assert torch.equal(mem, exported)
    assert (mem - unfused).abs().max() > 1e-3 * mem.abs().max()  # fusion matters, so the runtime is needed
    assert tagi.predict(INPUTS, back, max_new_tokens=5) == tagi.predict(INPUTS, ad, max_new_tokens=5)
    # the weights alone are plain PEFT: without fusion, PeftModel equals tagi's hooks (up to rounding: float64)
    tagi64, ad64 = in_float64(tagi, ad)
    pm = peft_model(tagi64.backbone, tmp_path / "ad")
    ids = torch.tensor([tagi.prompt_ids(back, INPUTS[0])])
    dec = torch.tensor([[bb.pad_id, 5, 6]])
    with torch.no_grad(), tagi64.applied(ad64):
        ours = tagi64.backbone.model(input_ids=ids, decoder_input_ids=dec).logits
    assert_close64(pm(input_ids=ids, decoder_input_ids=dec).logits, ours)


def test_predict_seed_reproducible_and_rng_untouched(tagi):
    ad = tagi.generate_adapter("Copy the input")
    state = torch.get_rng_state()
    a = tagi.predict(INPUTS, ad, max_new_tokens=4, temperature=1.0, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert tagi.predict(INPUTS, ad, max_new_tokens=4, temperature=1.0, seed=3) == a
    assert tagi.predict([], ad) == []
    with pytest.raises(GenerateError, match="top_p"):
        tagi.predict(INPUTS, ad, top_p=0.0)
    with pytest.raises(GenerateError, match="list of strings"):
        tagi.predict("one string", ad)


def test_long_instruction_truncated_with_warning(tagis, caplog):
    for name, limit in (("tiny-llama", 16), ("tiny-t5", 16)):
        bb = load_backbone(ModelConfig(name=name, max_instruction_tokens=limit))
        small = Tagi(bb, TagiModel(bb, HYPER), "0" * 64)
        small.model.hypernet.load_state_dict(tagis[name].model.hypernet.state_dict())
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            ad = small.generate_adapter("a long definition " * 10)
        assert ad.instruction_truncated and "truncated" in caplog.text
        keep = limit - (1 if bb.family == "seq2seq" else 0)  # T5 keeps one token for eos
        assert ad.instruction == "Definition: a long definition"[:keep]  # byte tokenizer: 1 char = 1 token
        assert len(bb.instruction_ids(ad.instruction)) == limit
        assert not small.generate_adapter("short", raw=True).instruction_truncated


def test_bad_input_errors(tagis, tmp_path):
    tagi, t5 = tagis["tiny-llama"], tagis["tiny-t5"]
    for bad in ("", "   \n"):
        with pytest.raises(GenerateError, match="empty"):
            tagi.generate_adapter(bad)
    with pytest.raises(GenerateError, match="task file|need a task"):
        tagi.generate_adapter("x", pos_examples=2)
    ad = tagi.generate_adapter("Copy the input")
    with pytest.raises(AdapterError, match="made for base model 'tiny-llama'.*'tiny-t5'"):
        t5.predict(["x"], ad)
    wrong = Adapter(
        t5.generate_adapter("x").weights, "x", True, "causal", {"name": "tiny-llama"}, "tiny-llama"
    )
    with pytest.raises(AdapterError, match="does not have|another base model"):
        tagi.predict(["x"], wrong)
    with pytest.raises(GenerateError, match="hypernetwork checkpoint"):
        Tagi(tagi.backbone).generate_adapter("x")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Tagi.from_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a tagi checkpoint"):
        Tagi.from_checkpoint(tmp_path / "empty")


def test_rank_mismatch_and_overwrite_rules(tagis, tmp_path):
    ad = tagis["tiny-llama"].generate_adapter("Copy the input")
    folder = ad.save(tmp_path / "ad")
    before = (folder / "adapter_model.safetensors").read_bytes()
    with pytest.raises(AdapterError, match="exists"):
        tagis["tiny-llama"].generate_adapter("Other").save(folder)
    assert (folder / "adapter_model.safetensors").read_bytes() == before
    ad.save(folder, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(AdapterError, match="is a file"):
        ad.save(tmp_path / "file", overwrite=True)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("keep me")
    with pytest.raises(AdapterError, match="not an adapter folder"):
        ad.save(tmp_path / "home", overwrite=True)
    assert (tmp_path / "home" / "notes.txt").read_text() == "keep me"
    state = load_file(folder / "adapter_model.safetensors")
    key = next(k for k in state if k.endswith("lora_A.weight"))
    state[key] = state[key][:2].contiguous()  # one module of rank 2, the others rank 4
    state[key.replace("lora_A", "lora_B")] = state[key.replace("lora_A", "lora_B")][:, :2].contiguous()
    save_file(state, folder / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="rank"):
        Adapter.load(folder)


def test_lazy_top_level_import():
    import tagi

    assert tagi.Tagi is Tagi


def test_plain_peft_folder_loads_without_tagi_metadata(backbones, tmp_path):
    weights = random_adapter(backbones["tiny-llama"], 1)
    save_adapter(weights, tmp_path / "plain", "HuggingFaceTB/SmolLM2-135M-Instruct", "causal")
    ad = Adapter.load(tmp_path / "plain")
    assert (ad.instruction, ad.fuse, ad.mode, ad.family) == ("", False, "none", "causal")
    assert ad.model == {"name": "smollm2-135m-instruct"}  # the embedded model's hub id maps back to it
