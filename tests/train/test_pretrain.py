"""Stage 1: packing text into a/b/c segments, the objective, and the stage on its own text files."""

from __future__ import annotations

import json

import pytest
import torch

from tagi.config import HyperConfig
from tagi.errors import TagiError
from tagi.model import TagiModel
from tagi.train.batching import Sample
from tagi.train.pretrain import PretrainObjective, segment_examples
from tagi.train.stages import run_pretrain
from tagi_testing import assert_close32

DOCS = [f"Document {i}: the quick brown fox jumps over the lazy dog number {i}." for i in range(30)]


def test_segments_cover_the_stream_in_order(backbones):
    bb = backbones["tiny-llama"]  # byte-level tokenizer: decode(encode(x)) == x
    exs = segment_examples(bb, DOCS, segment_tokens=40, min_segment=5, seed=0)
    joined = "".join(e.instruction + e.source + e.target for e in exs)
    assert joined == "".join(d + "\n\n" for d in DOCS)[: len(joined)]
    assert len(joined) >= len("".join(d + "\n\n" for d in DOCS)) - 15  # only a short tail is dropped
    for e in exs:
        assert min(len(e.instruction), len(e.source), len(e.target)) >= 5
        assert len(e.instruction + e.source + e.target) <= 40
    again = segment_examples(bb, DOCS, segment_tokens=40, min_segment=5, seed=0)
    other = segment_examples(bb, DOCS, segment_tokens=40, min_segment=5, seed=1)
    assert again == exs and other != exs


def test_too_little_text_is_an_error(backbones):
    with pytest.raises(TagiError, match="too few"):
        segment_examples(backbones["tiny-llama"], ["hi"], segment_tokens=64, min_segment=8, seed=0)


def test_objective_is_the_ce_of_c_given_b_with_the_adapter_from_a(backbone):
    exs = segment_examples(backbone, DOCS, segment_tokens=48, min_segment=6, seed=0)[:3]
    model = TagiModel(backbone, HyperConfig(rank=2, hidden=16))
    torch.nn.init.normal_(next(iter(model.hypernet.head_b.values())).weight, std=0.5)  # a non-zero adapter
    obj = PretrainObjective(model, exs)
    mb = obj.prepare([Sample(i, 0) for i in range(3)])
    terms = obj.terms(mb)
    assert list(terms) == ["ce"] and terms["ce"].per == "token"
    # independent reference: the generated adapter applied to "b -> c" without an end-of-sequence token
    ref_batch = backbone.collate(exs, "none", add_eos=False)
    weights = model.adapters([e.instruction for e in exs])
    logits, labels, _ = backbone.forward(ref_batch, weights)
    ref = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    assert mb.num_label_tokens == labels.numel() and mb.num_examples == 3
    # float32, the same forward through two code paths: their sums of token CEs agree to a few ulps at most
    # (measured: bitwise equal)
    assert_close32(terms["ce"].value, ref, ulps=64)


def test_run_pretrain_on_text_files(tiny, tmp_path):
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n\n".join(DOCS))
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("".join(json.dumps({"body": d.upper()}) + "\n" for d in DOCS))
    cfg = tiny(
        f"pretrain.text_files=[{txt},{jsonl}]", "pretrain.text_field=body", "pretrain.train.max_steps=12"
    )
    with pytest.raises(TagiError, match="string field 'text'"):  # the JSONL rows hold "body", not "text"
        run_pretrain(tiny(f"pretrain.text_files=[{jsonl}]"))
    out = run_pretrain(cfg)
    done = json.loads((out / "DONE.json").read_text())
    assert done["num_documents"] == 60 and done["losses"]["last"]["ce"] < done["losses"]["first"]["ce"]
    assert TagiModel.load(out / "final").hypernet.num_parameters() > 0


def test_disabled_pretraining_returns_none(tiny):
    assert run_pretrain(tiny("pretrain.enabled=false")) is None
