"""TagiModel: only the hypernetwork trains, a 30-step overfit halves the loss, checkpoints round-trip."""

from __future__ import annotations

import json

import pytest
import torch

from tagi.backbones import PromptExample
from tagi.config import HyperConfig
from tagi.losses import ce_sum
from tagi.model import CheckpointError, InstructionCache, TagiModel

TASKS = {
    "Definition: Answer with the word yes.": [("red", "yes"), ("blue", "yes"), ("green", "yes")],
    "Definition: Repeat the input twice.": [("ab", "abab"), ("cd", "cdcd"), ("xy", "xyxy")],
}
EXAMPLES = [PromptExample(ins, f"Input: {x}.\nOutput: ", y) for ins, rows in TASKS.items() for x, y in rows]
HYPER = HyperConfig(rank=4, hidden=64, module_embed_dim=16)


def step_loss(model, batch, cache):
    logits, labels, _, _ = model(batch, [e.instruction for e in EXAMPLES], cache)
    return ce_sum(logits, labels) / labels.numel()


def test_overfit_two_tasks_and_base_frozen(backbone):
    model = TagiModel(backbone, HYPER)
    base_before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in model.hypernet.parameters()}
    opt = torch.optim.AdamW(trainable, lr=3e-3)
    batch, cache = backbone.collate(EXAMPLES, "fuse"), InstructionCache()
    losses = []
    for _ in range(30):
        loss = step_loss(model, batch, cache)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in backbone.model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert len(cache) == 2  # each distinct instruction encoded once
    for k, v in backbone.model.state_dict().items():
        assert torch.equal(v, base_before[k])


def test_checkpoint_round_trip_and_refusals(backbones, tmp_path):
    llama = backbones["tiny-llama"]
    model = TagiModel(llama, HYPER)
    torch.nn.init.normal_(model.hypernet.head_b["q_proj"].weight)
    ckpt = model.save(tmp_path / "ckpt")
    again = TagiModel.load(ckpt, backbone=llama)
    w1 = model.adapters(["Definition: x."])
    w2 = again.adapters(["Definition: x."])
    assert all(torch.equal(w1.B[n], w2.B[n]) for n in w1.names)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary leftovers
    with pytest.raises(CheckpointError, match="target modules differ"):
        TagiModel.load(ckpt, backbone=backbones["tiny-t5"])
    with pytest.raises(CheckpointError, match="not a tagi checkpoint"):
        TagiModel.load(tmp_path / "missing")
    weights = ckpt / "hypernet.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        TagiModel.load(ckpt, backbone=llama)
    cfg = json.loads((ckpt / "tagi_config.json").read_text())
    assert cfg["model"]["name"] == "tiny-llama" and cfg["hyper"]["rank"] == 4


def test_load_without_backbone_reloads_base(backbones, tmp_path):
    ckpt = TagiModel(backbones["tiny-t5"], HYPER).save(tmp_path / "c")
    model = TagiModel.load(ckpt)
    assert model.bb.family == "seq2seq"
    out = model.generate([EXAMPLES[0]], max_new_tokens=3)
    assert isinstance(out[0], str)
