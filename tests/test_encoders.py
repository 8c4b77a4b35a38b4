"""The sentence encoder as the hypernetwork's reader (hyper.encoder=sentence, the t2l-like method)."""

from __future__ import annotations

import json

import pytest
import torch

from tagi.encoders import SentenceEncoder, resolve_encoder
from tagi.errors import TagiError
from tagi.hypernet import masked_mean
from tagi.model import InstructionCache, TagiModel
from tagi.train.stages import get_backbone, run_finetune
from train.train_helpers import tiny_config


@pytest.fixture(scope="module")
def minilm():
    return SentenceEncoder("all-MiniLM-L6-v2")


def embed(encoder, texts):
    ids, mask = encoder.collate_instructions(texts)
    return torch.nn.functional.normalize(masked_mean(encoder.encode_instruction(ids, mask), mask), dim=-1)


def test_minilm_is_found_offline_and_embeds_by_meaning(minilm):
    assert resolve_encoder("all-MiniLM-L6-v2") != "sentence-transformers/all-MiniLM-L6-v2"  # the local copy
    e = embed(minilm, ["Translate the sentence into French.", "Render this sentence in French.",
                       "Count the vowels in the word."])  # fmt: skip
    assert e.shape == (3, 384)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2  # paraphrases are closer than another task


def test_missing_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(TagiError, match="cannot load the sentence encoder"):
        SentenceEncoder(str(tmp_path))


def test_cache_keeps_each_readers_states_apart(minilm):
    bb = get_backbone(tiny_config("unused"))
    cache = InstructionCache()
    s_base, _ = cache.get(bb, ["Definition: Sort."])
    s_sent, _ = cache.get(minilm, ["Definition: Sort."])
    assert s_base.shape[-1] == bb.hidden_size and s_sent.shape[-1] == 384 and len(cache) == 2


def test_t2l_like_finetuning_trains_and_reloads(tmp_path):
    """The hypernetwork reads MiniLM (input 384 wide), trains with CE, and a reloaded checkpoint generates
    the same adapter."""
    cfg = tiny_config(
        tmp_path / "run", "hyper.encoder=sentence", "finetune.use_pretrained=false", "finetune.loss.kl=0",
        "finetune.loss.align=0", "finetune.train.max_steps=24",
    )  # fmt: skip
    out = run_finetune(cfg)
    done = json.loads((out / "DONE.json").read_text())
    assert done["losses"]["last"]["ce"] < done["losses"]["first"]["ce"]
    model = TagiModel.load(out / "final", get_backbone(cfg))
    assert model.hypernet.input_dim == 384 and model.reader[0] is not model.bb
    again = TagiModel.load(out / "final", get_backbone(cfg))
    with torch.no_grad():
        a, b = (
            model.adapters(["Definition: Sort the words."]),
            again.adapters(["Definition: Sort the words."]),
        )
    for name in a.names:
        assert torch.equal(a.A[name], b.A[name]) and torch.equal(a.B[name], b.B[name])
